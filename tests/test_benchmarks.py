"""The benchmarks measure what they say: the requested precision for every network, 2017 as 2017, XLA's bytes and FLOPs."""

import gzip
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_training.py"
sys.path.insert(0, str(BENCH.parent))  # the benchmarks' own functions, for the tests that call them
QUICK = ["--spaces", "best", "--batch-size", "4", "--steps", "1", "--windows", "1"]


def run_bench(tmp_path, *args, backend: str | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """The benchmark's JSON report and what it printed."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "KERAS_BACKEND": backend} if backend else None
    done = subprocess.run([sys.executable, str(BENCH), *QUICK, *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done


@pytest.mark.slow
def test_every_network_of_a_run_trains_in_the_requested_precision(tmp_path):
    import keras

    from precision import cpu_name

    # Keras's clear_session() between networks resets the dtype policy to float32.
    report, done = run_bench(tmp_path, "--spaces", "tiny", "--variants", "as-is,filters-x8", "--precision",
                             "mixed_bfloat16", "--skip-memory")
    assert [row["variant"] for row in report["rows"]] == ["as-is", "filters-x8"]
    assert [row["dtype_policy"] for row in report["rows"]] == ["mixed_bfloat16", "mixed_bfloat16"]
    assert report["rows"][1]["params"] > report["rows"][0]["params"]  # 56 hidden units instead of 50
    assert all(row["images_per_s"] > 0 for row in report["rows"])
    # The machine and software the figures came from, with them.
    software = (report["keras_version"], report["backend"], report["backend_version"], report["device"])
    assert software == (keras.__version__, "tensorflow", importlib.metadata.version("tensorflow"), f"CPU ({cpu_name()})")
    assert f"Keras {keras.__version__} on tensorflow {software[2]}, XLA auto, CPU ({cpu_name()})\n" in done.stdout


def test_a_search_trials_callbacks_let_keras_on_jax_dispatch_the_next_step_without_waiting():
    # Keras waits for every step's logs when any callback has a per-step hook and is not marked async-safe
    # (TensorFlow's trainer waits anyway). Keras's TerminateOnNaN has one, which a trial no longer uses.
    check = ("import keras, bench_training, pruning, trial_backup; "
             "print(keras.callbacks.CallbackList(pruning.trial_callbacks(3, None, [pruning.MedianStoppingRule([]), "
             "trial_backup.TrialBackup('b.npz', {})]))._async_train, "
             "{kind: keras.callbacks.CallbackList(bench_training.step_callbacks(kind))._async_train "
             "for kind in bench_training.CALLBACK_KINDS})")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.stdout.strip() == "True {'none': True, 'trial': True, 'per-step-nan': False}", done.stderr[-2000:]


@pytest.mark.slow
def test_the_layer_benchmark_times_every_batch_norm_and_dropout_shape_of_the_network_in_its_precision(tmp_path):
    out = tmp_path / "layers.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_layers.py"), "--networks", "best,demo", "--batch-size", "2",
                           "--precision", "mixed_bfloat16", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {row["dtype_policy"] for row in rows} == {"mixed_bfloat16"}  # building a network resets the policy
    assert {row["network"] for row in rows} == {"best", "demo"}
    rows = [row for row in rows if row["network"] == "best"]
    norms = {tuple(row["shape"]): row["count"] for row in rows if row["layer"] == "batch-norm"}
    assert norms == {(2, 32, 32, 63): 4, (2, 16, 16, 126): 4, (2, 8, 8, 252): 4}  # SEED_BEST_SPACE's 12
    assert sum(row["count"] for row in rows if row["layer"] == "dropout") == 13
    assert all(row["keras_ms"] > 0 and row["fast_ms"] > 0 for row in rows)


def test_the_backup_benchmark_times_backups_and_what_a_retrain_writes_and_leaves_a_searchs_own_alone(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / ".trial_backup.npz").write_text("a running search's")
    out = tmp_path / "backup.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_backup.py"), "--networks", "tiny,demo", "--repeats", "1",
                           "--dir", str(results), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["network"] for row in rows] == ["tiny", "demo"]
    for row in rows:  # float32 weights, Adam's two moments and the best epoch's weights: 4 copies of the parameters
        assert 16 * row["params"] < row["backup_bytes"] < 16 * row["params"] + 500_000  # and the arrays' headers
        assert min(row["keep_s"], row["write_s"], row["read_s"]) > 0 and 0 < row["share_of_trial"] < 0.01
        # What a retrain writes: its best model with Adam's variables (12 bytes a parameter), histograms, Keras's backup
        assert 12 * row["params"] < row["model_bytes"]
        assert min(row["model_s"], row["histograms_s"], row["keras_backup_s"]) > 0
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:4] + lines[-2:]] == ["tiny", "demo", "tiny", "demo"]
    assert [p.name for p in results.iterdir()] == [".trial_backup.npz"]
    assert (results / ".trial_backup.npz").read_text() == "a running search's"


@pytest.mark.slow
def test_side_by_side_the_2017_recipe_trains_in_float32_one_step_per_call_in_alternating_rounds(tmp_path):
    report, done = run_bench(tmp_path, "--spaces", "tiny", "--recipe", "project,2017", "--rounds", "2",
                                "--precision", "mixed_bfloat16", "--skip-memory")
    rows = [(row["recipe"], row["round"], row["dtype_policy"], row["steps_per_execution"]) for row in report["rows"]]
    assert rows == [("project", 1, "mixed_bfloat16", 8), ("2017", 1, "float32", 1),
                    ("2017", 2, "float32", 1), ("project", 2, "mixed_bfloat16", 8)]
    assert len({row["params"] for row in report["rows"]}) == 1  # the same network
    assert "tiny as-is (none callbacks): project " in done.stdout and "x (mean of 2 rounds)" in done.stdout
    # Each network's figure as it is measured, on stderr: a run of several takes many minutes on a CPU.
    progress = [line.split(":")[0] for line in done.stderr.splitlines() if line.endswith(" images/s")]
    assert progress == [f"tiny as-is (none callbacks), {recipe} recipe, round {n} of 2"
                        for recipe, n in (("project", 1), ("2017", 1), ("2017", 2), ("project", 2))]
    assert {row["xla_compile_s"] for row in report["rows"]} == {None}  # JAX's compile events: none on TensorFlow


@pytest.mark.slow
def test_on_jax_a_row_splits_its_compile_into_tracing_lowering_and_xla(tmp_path):
    report, _ = run_bench(tmp_path, "--spaces", "tiny", "--skip-memory", backend="jax")
    row = report["rows"][0]
    assert row["trace_s"] > 0 and row["lower_s"] > 0 and row["xla_compile_s"] > 0 and row["build_s"] > 0
    assert row["trace_s"] + row["lower_s"] + row["xla_compile_s"] <= row["first_epoch_s"] + 0.05  # inside the first epoch


def test_a_compile_phase_nested_in_another_counts_once():
    from bench_training import covered

    # JAX before 0.10 reported a jitted function traced inside another as an event of its own.
    assert covered([(0.0, 4.0), (1.0, 2.0), (3.0, 5.0), (7.0, 8.0)]) == pytest.approx(6.0)
    assert covered([]) == 0.0


@pytest.mark.slow
def test_data_memory_counts_the_dataset_itself(monkeypatch):
    import argparse

    import bench_training

    # Large enough that compiling and feeding could not account for it: only the array itself can.
    monkeypatch.setattr(bench_training, "CIFAR_IMAGES", 210_000)
    memory = bench_training.data_memory(argparse.Namespace(precision="float32", steps_per_execution=1))
    assert memory["dataset_images"] == 210_000 and memory["dataset_mb"] == pytest.approx(645.1, abs=0.1)
    assert memory["process_mb_above_baseline"] >= memory["dataset_mb"]


@pytest.mark.slow
def test_the_op_profile_credits_every_convolution_kernel_to_its_layer(tmp_path):
    out = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_tf_ops.py"), "--space", "tiny", "--steps", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    convs = report["convolutions"]
    assert len(convs) == 10  # the first conv, then per block its conv and a residual unit's 1x1 shortcut and 2x2 branch
    assert [c["kernel"] for c in convs[1:4]] == ["3x3", "1x1", "2x2"]
    # The images need no gradient, so the first convolution has no input-gradient kernel; every other has all three.
    assert convs[0]["input gradient"]["ms"] == 0 and convs[0]["forward"]["ms"] > 0
    assert all(c[kernel]["ms"] > 0 for c in convs[1:] for kernel in ("forward", "input gradient", "filter gradient"))
    # Every convolution op in the trace was credited to a layer.
    conv_ops = sum(ms for op, ms in report["op_types"].items() if "Conv2D" in op)
    credited = sum(c[kernel]["ms"] for c in convs for kernel in ("forward", "input gradient", "filter gradient"))
    assert credited == pytest.approx(conv_ops, rel=0.01)
    assert sum(report["op_types"].values()) == pytest.approx(report["op_ms_per_step"], rel=0.01)


def test_the_2017_recipe_refuses_bfloat16():
    done = subprocess.run([sys.executable, str(BENCH), "--recipe", "2017", "--precision", "mixed_bfloat16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "float32" in done.stderr.splitlines()[-1]


@pytest.mark.slow
def test_the_gpu_checks_fit_one_device_call_and_ask_only_for_options_the_benchmarks_have(tmp_path):
    # A GPU machine comes to one session in ten, for one call: a mistyped option or an overlong run there loses it.
    fake = tmp_path / "bin"
    fake.mkdir()
    calls, limits = tmp_path / "calls.txt", tmp_path / "limits.txt"
    (fake / "python3").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    (fake / "nvidia-smi").write_text("#!/bin/bash\necho 'NVIDIA H200'\n")
    # Each command's limit and when it ran, to tell the commands that run side by side.
    (fake / "timeout").write_text(f'#!/bin/bash\nstart=$(date +%s.%N); sleep 0.3\necho "$1 $start $(date +%s.%N)" >> {limits}\n'
                                  'shift; exec "$@"\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    done = subprocess.run(["bash", str(BENCH.parent / "gpu_checks.sh"), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=BENCH.parent.parent, env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    commands = [line.split() for line in calls.read_text().splitlines() if line.startswith("bench/")]
    assert {command[0] for command in commands} == {"bench/bench_training.py", "bench/bench_roofline.py"}
    for path in {command[0] for command in commands}:
        usage = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=300,
                               cwd=BENCH.parent.parent).stdout
        asked = {token for command in commands if command[0] == path for token in command if token.startswith("--")}
        assert {option for option in asked if f"{option} " not in usage and f"{option}\n" not in usage} == set()
    assert all("--bandwidth-tbs 4.8" in " ".join(c) for c in commands if c[0] == "bench/bench_roofline.py")  # an H200
    # The limits add up to less than the call's 600 s; of the commands that ran side by side, the longest counts.
    runs = sorted((float(start), float(end), int(limit)) for limit, start, end in map(str.split, limits.read_text().splitlines()))
    total, group_end, group_limit = 0, -1.0, 0
    for start, end, limit in runs:
        if start >= group_end:
            total, group_limit = total + group_limit, 0
        group_end, group_limit = max(group_end, end), max(group_limit, limit)
    assert len(runs) == len(commands) and total + group_limit <= 570
    outputs = {c[c.index("--json") + 1] for c in commands if "--json" in c}
    assert len(outputs) + 2 * sum("--hlo-dir" in c for c in commands) + 1 <= 8  # the JSONs, the HLO and trace, the log


ROOFLINE = BENCH.parent / "bench_roofline.py"
# The tiny space's train step (batch 320, mixed_bfloat16) as XLA compiled it on an H100, and JAX's profile of 5
# of its steps there (host events' arguments dropped), from the fifth session's device run of bench/gpu_checks.sh:
# bench_roofline.py --spaces tiny --precision mixed_bfloat16 --profile-steps 5 --hlo-dir DIR, JAX 0.11.2.
H100_HLO = Path(__file__).resolve().parent / "data" / "h100_train_step_tiny_bf16.hlo.txt.gz"
H100_TRACE = Path(__file__).resolve().parent / "data" / "h100_train_step_tiny_bf16.trace.json.gz"
H100_STEP_US = 3365  # that run's measured step, in microseconds
# A compiled step as XLA prints it, cut down: a cast, a named cuDNN convolution with its scratch
# space, an unnamed gradient convolution, a dropout kernel inside a GPU command buffer, an update.
HLO = """HloModule jit_train_step

%fused_conv (p0: bf16[4,8], p1: bf16[8,8]) -> bf16[4,8] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[8,8]{1,0} parameter(1)
  ROOT %convolution.1 = bf16[4,8]{1,0} convolution(%p0, %p1), dim_labels=bf_io->bf
}

%fused_cast (p0.1: f32[4,8]) -> bf16[4,8] {
  %p0.1 = f32[4,8]{1,0} parameter(0)
  ROOT %convert.1 = bf16[4,8]{1,0} convert(%p0.1)
}

%command_buffer (q0: bf16[4,8], q1: bf16[8,8]) -> bf16[4,8] {
  %q0 = bf16[4,8]{1,0} parameter(0)
  %q1 = bf16[8,8]{1,0} parameter(1)
  ROOT %mask = bf16[4,8]{1,0} fusion(%q0, %q1), kind=kLoop, calls=%fused_conv, metadata={op_name="jit(train_step)/transpose(jvp(dropout_12))/select"}
}

ENTRY %main (x: f32[4,8], w: bf16[8,8]) -> bf16[4,8] {
  %x = f32[4,8]{1,0} parameter(0), metadata={op_name="x"}
  %w = bf16[8,8]{1,0} parameter(1), metadata={op_name="w"}
  %cast = bf16[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_cast
  %conv = (bf16[4,8]{1,0}, u8[1000]{0}) custom-call(%cast, %w), custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(conv2d_3)/conv_general_dilated"}
  %y = bf16[4,8]{1,0} get-tuple-element(%conv), index=0
  %grad = bf16[4,8]{1,0} fusion(%y, %w), kind=kCustom, calls=%fused_conv
  %dropped = bf16[4,8]{1,0} call(%grad, %w), to_apply=%command_buffer
  ROOT %update = bf16[4,8]{1,0} add(%dropped, %y), metadata={op_name="jit(train_step)/nadam/add"}
}
"""


def test_roofline_credits_each_kernels_bytes_to_the_layer_it_comes_from():
    from bench_roofline import bytes_by_layer_kind, kernel_traffic

    activation, weights = 4 * 8 * 2, 8 * 8 * 2  # bf16 bytes
    assert [(kind, moved) for kind, moved, _ in kernel_traffic(HLO)] == [
        ("casts and transposes", 4 * 8 * 4 + activation),
        ("conv2d", activation + weights + activation),  # the 1000-byte scratch space is not traffic
        ("conv2d", activation + weights + activation),  # unnamed, but a convolution
        ("dropout", activation + weights + activation),  # followed into the command buffer
        ("other", 3 * activation),  # the optimizer's update
    ]
    assert list(bytes_by_layer_kind(kernel_traffic(HLO)).items())[0] == ("conv2d", 2 * (2 * activation + weights))


def test_roofline_credits_every_kernel_of_a_real_h100_compile():
    from bench_roofline import bytes_by_layer_kind, kernel_traffic

    hlo = gzip.decompress(H100_HLO.read_bytes()).decode()
    kernels = kernel_traffic(hlo)
    entry = hlo[hlo.index("\nENTRY"):]
    assert len(kernels) >= entry.count(" fusion(") + entry.count(" custom-call(") > 100
    # cuDNN's convolutions, forward with bias and activation, and the gradients XLA leaves unnamed.
    convolutions = [kind for kind, _, line in kernels if "__cudnn$conv" in line]
    assert convolutions == ["conv2d"] * 29
    by_kind = bytes_by_layer_kind(kernels)
    shares = {kind: moved / sum(by_kind.values()) for kind, moved in by_kind.items()}
    assert list(shares)[:2] == ["conv2d", "batch_normalization"] and "dropout" in shares
    assert shares["other"] < 0.15  # what no layer owns: the optimizer and the loss
    assert shares.get("casts and transposes", 0) < 0.01  # on a GPU the step stays in bf16 and one layout


def test_profile_times_each_h100_kernel_once_and_credits_it_to_its_layer():
    from bench_roofline import device_kernel_times, kernel_traffic, time_by_layer_kind

    events = json.loads(gzip.decompress(H100_TRACE.read_bytes()))["traceEvents"]
    times = device_kernel_times(events, steps=5)
    launches = sum(1 for e in events if e.get("ph") == "X" and e["pid"] == 1)  # pid 1: /device:GPU:0
    assert 250 < launches / 5 < 300  # about one launch per kernel of the compiled step (262)
    busy = sum(us for _, _, us in times)
    # The host's events are left out, and no kernel is counted twice: the GPU was busy for part of each step.
    assert 0.2 * H100_STEP_US < busy < H100_STEP_US
    profiled = time_by_layer_kind(times, kernel_traffic(gzip.decompress(H100_HLO.read_bytes()).decode()))
    by_kind = {}
    for k in profiled:
        by_kind[k["kind"]] = by_kind.get(k["kind"], 0) + k["us"]
    assert max(by_kind, key=by_kind.get) == "conv2d"
    # Fusions are found by name (inside GPU command buffers too), cuDNN's kernels by their HLO instruction.
    unknown = sum(us for kind, us in by_kind.items() if kind in ("unattributed", "conv2d or dense (library kernel)"))
    assert unknown < 0.01 * busy
    assert all(k["mb"] is not None for k in profiled if k["kind"] == "conv2d")


def _has_jax_cuda_plugin() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(_has_jax_cuda_plugin(), reason="JAX's CUDA plugin is installed")
def test_roofline_asks_for_jaxs_cuda_plugin_to_compile_for_a_gpu():
    done = subprocess.run([sys.executable, str(ROOFLINE), "--target-config", str(BENCH.parent / "h100_sxm.txtpb"),
                           "--precision", "mixed_bfloat16"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 1 and 'pip install "jax[cuda12]"' in done.stderr.splitlines()[-1]


@pytest.mark.slow
def test_roofline_flops_agree_with_the_layer_by_layer_count(tmp_path):
    out = tmp_path / "roofline.json"
    done = subprocess.run(
        [sys.executable, str(ROOFLINE), "--spaces", "tiny", "--batch-size", "8", "--steps", "1", "--precision", "float32",
         "--peak-tflops", "1", "--bandwidth-tbs", "0.05", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    from bench_training import SPACES, forward_flops

    from neural_net import build_model

    # XLA's count of the compiled step against forward convolutions and dense layers x 3.
    assert row["gflop_per_image"] == pytest.approx(3 * forward_flops(build_model(SPACES["tiny"])) / 1e9, rel=0.1)
    assert row["dtype_policy"] == "float32" and row["images_per_s"] > 0
    assert row["memory_floor_ms"] == pytest.approx(row["mb_per_image"] * 1e6 * 8 / 0.05e12 * 1e3, rel=0.02)  # 8 images at 0.05 TB/s
    assert 0.8 < row["traffic_counted_of_xla"] < 1.2
    # The step's device memory holds at least its float32 weights in and out.
    assert row["n_params"] == build_model(SPACES["tiny"]).count_params() and row["step_gib"] * 2**30 >= 2 * 4 * row["n_params"]
    assert sum(row["traffic_share"].values()) == pytest.approx(1, abs=0.01)
    assert {"conv2d", "batch_normalization", "dropout"} <= set(row["traffic_share"])
    # Beside it, what a search counts the network's step to need: its activations at this batch, in float32's 4 bytes.
    from neural_net import activations_per_image

    assert row["activations_gib"] * 2**30 == pytest.approx(activations_per_image(build_model(SPACES["tiny"])) * 8 * 4, rel=1e-3)


def test_the_roofline_draws_networks_from_the_full_space_as_a_search_first_does_and_the_same_ones_again():
    import hyperspace
    from bench_roofline import drawn

    first = drawn(3, seed=0)
    assert [name for name, _ in first] == ["draw0", "draw1", "draw2"]
    assert first == drawn(3, seed=0) and first != drawn(3, seed=1)
    assert len({point["batch_size"] for _, point in first}) == 3
    for _, point in first:
        hyperspace.encode(point, hyperspace.space)  # a point the space draws, else NotInSpace


def test_the_largest_network_of_the_benchmarks_is_one_the_full_space_draws():
    from bench_training import SPACES

    import hyperspace

    # Every hyperparameter at a value the search can sample: encode refuses any other.
    assert hyperspace.encode(SPACES["largest"], hyperspace.space)["batch_size"] == [700.0]


def test_roofline_refuses_a_backend_other_than_jax():
    done = subprocess.run([sys.executable, str(ROOFLINE)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 2 and "KERAS_BACKEND=jax" in done.stderr.splitlines()[-1]


LATE_BLOOMER = [0.05, 0.05, 0.05, 0.05, 0.05, 0.9]  # below everyone's median at epoch 5, the best at 6
STEADY = [[0.3] * 6, [0.4] * 6, [0.5] * 6]


def test_the_search_benchmark_replays_the_rule_in_random_orders():
    import bench_search

    report = bench_search.replay([*STEADY, LATE_BLOOMER], orders=200)
    # Last of the four (1 order in 4) the late bloomer is pruned at epoch 5: 1 of 24 epochs saved, the best lost.
    assert report["epochs_saved_min"] == 0 and report["epochs_saved_max"] == pytest.approx(1 / 24, abs=1e-3)
    assert 0.15 < 1 - report["best_within_2_points"] < 0.35
    assert report["both_targets"] == 0  # never 40% fewer epochs


def test_the_search_benchmark_replays_a_results_folder_without_training(tmp_path):
    from utils import save_json_result

    for tid, curve in enumerate([*STEADY, LATE_BLOOMER]):
        save_json_result({"status": "ok", "space": {}, "loss": -max(curve), "tid": tid, "model_name": f"m{tid}",
                          "history": {"val_fine_outputs_accuracy": curve}}, tmp_path)
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_search.py"), "--replay", str(tmp_path),
                           "--orders", "40", "--json", str(tmp_path / "replay.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replayed in 40 random orders (4 trials" in done.stdout
    assert json.loads((tmp_path / "replay.json").read_text())["orders"] == 40


@pytest.mark.slow
def test_the_search_benchmark_runs_both_searches_showing_their_trials_as_they_go(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_search.py"), "--trials", "1", "--epochs", "1",
                           "--train-subset", "300", "--precision", "float32", "--orders", "10",
                           "--json", str(tmp_path / "search.json")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    searches = json.loads((tmp_path / "search.json").read_text())["searches"]
    assert [(s["prune"], s["exit_code"], s["trials"], s["epochs"]) for s in searches] == [("none", 0, 1, 1),
                                                                                        ("median", 0, 1, 1)]
    # Progress on stderr, where a terminal shows it; the figures alone on stdout.
    assert done.stderr.count(", up to 1 epoch: ") == 2 and "The search with --prune median:" in done.stderr
    assert done.stdout.startswith("precision float32, space tiny, seed 0\n") and "Trial " not in done.stdout


def test_the_importance_benchmark_runs_tpe_searches_as_the_analysis_sees_them(tmp_path):
    import bench_importance

    rows = bench_importance.search_rows(0, trials=25, noise=0.01)
    assert [r["suggested_by"] for r in rows] == ["random"] * 20 + ["tpe"] * 5
    assert all(0 <= r["lr_rate_mult"] <= 1 and r["batch_size"] != 1.0 for r in rows)  # drawn, not the constant
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_importance.py"), "--searches", "2", "--trials", "25",
                           "--json", str(tmp_path / "figures.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())["figures"]
    assert set(figures) == {"across the whole search", "among trials drawn alike"}
    assert all(0 <= f["unrelated_significant"] <= 1 and 0 <= f["learning_rate_found"] <= 1 for f in figures.values())
    assert "among trials drawn alike" in done.stdout
