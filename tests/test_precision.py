"""What --precision auto picks on each kind of hardware, and the kernels TensorFlow loads."""

import os
import platform
import subprocess
import sys

import pytest

import precision
from conftest import FOUR_GPUS, REPO, fake_nvidia_smi


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(path)


def test_cpu_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
    assert precision.cpu_has_native_bfloat16(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert precision.cpu_has_native_bfloat16(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not precision.cpu_has_native_bfloat16(_cpuinfo(tmp_path, "avx512f avx512_vnni"))
    assert not precision.cpu_has_native_bfloat16(str(tmp_path / "missing"))


def test_auto_precision_is_float32_on_a_cpu_that_would_emulate_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "accelerators", lambda: [])
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert precision.resolve_precision("auto") == "float32"
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto") == "mixed_bfloat16"
    assert precision.resolve_precision("float32") == "float32"


@pytest.mark.parametrize("capabilities, expected", [
    ([(9, 0)], "mixed_bfloat16"),  # H100
    ([(8, 6), (8, 0)], "mixed_bfloat16"),  # RTX 3090, A100
    ([(7, 0)], "mixed_float16"),  # V100: float16 tensor cores, no bfloat16
    ([(8, 0), (7, 5)], "mixed_float16"),  # an A100 beside a T4: what both compute natively
    ([(6, 1)], "float32"),  # GTX 1080 Ti
    ([None], "mixed_bfloat16"),  # a TPU
])
def test_auto_precision_on_accelerators_is_what_every_one_computes_natively(monkeypatch, capabilities, expected):
    monkeypatch.setattr(precision, "accelerators", lambda: [("a GPU", c) for c in capabilities])
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert precision.resolve_precision("auto") == expected


def test_compute_capabilities_read_from_tensorflow_and_jax():
    assert precision._capability((7, 5)) == (7, 5)
    assert precision._capability("9.0") == (9, 0)
    assert precision._capability(None) is None


def test_a_machine_without_accelerators_reports_none_and_says_so():
    # The tests hide any GPU (conftest): the backend's own device query runs and finds none.
    assert precision.accelerators() == []
    cpu = precision.cpu_name()
    assert precision.describe_hardware() == f"on the CPU ({cpu}): no GPU is visible to tensorflow"
    assert precision.device_name() == f"CPU ({cpu})"


def test_a_cpu_is_named_by_its_model_and_the_cores_its_trials_may_use(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Platinum 8480+\nflags\t\t: avx2\n" * 2)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert precision.cpu_name(str(cpuinfo)) == f"Intel(R) Xeon(R) Platinum 8480+, {len(os.sched_getaffinity(0))} cores"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # a Spark worker's share of them
    assert precision.cpu_name(str(cpuinfo)) == "Intel(R) Xeon(R) Platinum 8480+, 1 core"
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # whose kernels do not read it
    assert precision.cpu_name(str(cpuinfo)) == f"Intel(R) Xeon(R) Platinum 8480+, {len(os.sched_getaffinity(0))} cores"
    assert precision.cpu_name(str(tmp_path / "none")).startswith(platform.processor() or platform.machine())


def test_a_mac_cpu_is_named_by_its_brand_string(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    sysctl = tmp_path / "bin" / "sysctl"
    sysctl.write_text('#!/bin/sh\n[ "$*" = "-n machdep.cpu.brand_string" ] && echo "Apple M2 Pro"\n')
    sysctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert precision.cpu_name(str(tmp_path / "none")) == f"Apple M2 Pro, {len(os.sched_getaffinity(0))} cores"
    sysctl.unlink()  # no sysctl to ask: what Python knows
    assert precision.cpu_name(str(tmp_path / "none")).startswith(platform.processor() or platform.machine())


def test_the_hardware_line_names_the_gpus(monkeypatch):
    monkeypatch.setattr(precision, "accelerators", lambda: [("NVIDIA H100 80GB HBM3", (9, 0))] * 2)
    assert precision.describe_hardware() == "on 2 accelerators: NVIDIA H100 80GB HBM3"
    assert precision.device_name() == "NVIDIA H100 80GB HBM3"  # what a trial's result records


def test_on_a_machine_of_several_gpus_keras_takes_the_first_alone_and_says_so(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_GPUS)
    assert precision.use_one_gpu() == ("4 GPUs here, and Keras uses one: GPU 0 alone, the others left free "
                                       "(CUDA_VISIBLE_DEVICES=N picks GPU N)")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.parametrize("listing, visible", [
    ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)\n", None),  # nothing else to leave free
    (FOUR_GPUS + "  MIG 3g.40gb     Device  0: (UUID: MIG-a)\n", None),  # MIG instances are named, not numbered
    (FOUR_GPUS, "2,3"),  # the user's choice
])
def test_one_gpu_or_the_users_choice_of_gpus_is_left_as_it_is(tmp_path, monkeypatch, listing, visible):
    fake_nvidia_smi(tmp_path, monkeypatch, listing)
    if visible:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert precision.use_one_gpu() is None
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible


def test_onednn_is_turned_on_for_x86_cpus_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    precision.tensorflow_defaults()
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    precision.tensorflow_defaults()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    precision.tensorflow_defaults()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="oneDNN is turned on for x86 CPUs only")
@pytest.mark.parametrize("script", ["hyperopt_optimize", "retrain_best_with_tensorboard"])
def test_the_training_scripts_run_tensorflow_with_onednn_on_an_x86_cpu(script):
    # TensorFlow itself turns oneDNN on only for CPUs with AVX512-VNNI, AVX512-BF16 or AMX.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = f"import {script}; from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "True"
