"""Every script's --help: it runs, explains every option and states each default once."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SMALL_SPACE

SCRIPTS = ["hyperopt_optimize.py", "analyze_results.py", "retrain_best_with_tensorboard.py",
           "conv_filters_visualization.py"]
BENCHMARKS = ["bench/bench_training.py", "bench/bench_layers.py", "bench/bench_roofline.py",
              "bench/bench_search.py", "bench/bench_trial_memory.py", "bench/bench_tf_ops.py"]


def option_helps(help_text: str) -> dict[str, str]:
    """Each option of argparse's --help output and its help text, continuation lines joined."""
    options, current = {}, None
    for line in help_text.split("options:", 1)[1].splitlines():
        if match := re.match(r"  (-\S+(?: [A-Z_{][^ ]*)?(?:, -\S+(?: [A-Z_{][^ ]*)?)*)(?:\s{2,}(.*))?$", line):
            names = [word.rstrip(",") for word in match.group(1).split() if word.startswith("-")]
            current = names[-1]
            options[current] = match.group(2) or ""
        elif current and line.startswith(" " * 6):
            options[current] = f"{options[current]} {line.strip()}".strip()
    return options


@pytest.mark.parametrize("script", SCRIPTS + [pytest.param(b, marks=pytest.mark.slow) for b in BENCHMARKS])
def test_help_explains_every_option_and_states_each_default_once(script):
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    options = option_helps(done.stdout)
    assert "--help" in options and len(options) > 3
    for option, text in options.items():
        assert text, f"{script} {option} has no help"
        assert text.count("default") <= 1, f"{script} {option}: {text}"
        assert "(default: None)" not in text and "(default: False)" not in text, f"{script} {option}: {text}"
    # A default that argparse knows is shown: --epochs of the search says 100.
    if script == "hyperopt_optimize.py":
        assert options["--epochs"].endswith("(default: 100)")


@pytest.mark.parametrize("script, args, message", [
    ("hyperopt_optimize.py", ["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    ("hyperopt_optimize.py", ["--max-evals", "1.5"], "argument --max-evals: invalid int value: '1.5'"),
    ("hyperopt_optimize.py", ["--spark-master", "localhost:7077"], "--spark-master localhost:7077: not a Spark master"),
    ("hyperopt_optimize.py", ["--spark-master", "local[0]"], "--spark-master local[0]: not a Spark master"),
    ("hyperopt_optimize.py", ["--parallelism", "4"], "--parallelism runs trials at once on Spark: give --spark-master too"),
    ("hyperopt_optimize.py", ["--seed", "-1"], "argument --seed: must be between 0 and 4294967295, got -1"),
    ("retrain_best_with_tensorboard.py", ["--seed", str(2**32)], "argument --seed: must be between 0 and 4294967295"),
    ("conv_filters_visualization.py", ["--seed", "-3"], "argument --seed: must be between 0 and 4294967295, got -3"),
    ("retrain_best_with_tensorboard.py", ["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    ("retrain_best_with_tensorboard.py", ["--histogram-freq", "-1"], "argument --histogram-freq: must be at least 0"),
    ("analyze_results.py", ["--top", "0"], "argument --top: must be at least 1, got 0"),
    ("conv_filters_visualization.py", ["--max-filters", "0"], "argument --max-filters: must be at least 1, got 0"),
    ("conv_filters_visualization.py", ["--zoom", "1000"], "argument --zoom: must be between 1 and 64, got 1000"),
    ("conv_filters_visualization.py", ["--step-size", "-0.1"], "argument --step-size: must be a positive number, got -0.1"),
    ("hyperopt_optimize.py", ["--max-hours", "nan"], "argument --max-hours: must be a positive number, got nan"),
    ("hyperopt_optimize.py", ["--max-hours", "2h"], "argument --max-hours: invalid float value: '2h'"),
    ("conv_filters_visualization.py", ["--layers", "conv("], "--layers is not a regular expression"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_numbers_and_patterns_are_one_line_usage_errors(script, args, message, tmp_path):
    done = subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    # The one line alone: argparse would put its usage, a dozen lines of every option, above it.
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith(f"{script}: error: ") and message in line
    assert line.endswith("(--help lists the options)")


def test_ctrl_c_while_the_retrain_starts_is_one_line_and_exit_130(tmp_path):
    from utils import save_json_result

    save_json_result({"loss": -0.5, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    proc = subprocess.Popen([sys.executable, str(REPO / "retrain_best_with_tensorboard.py")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once TensorFlow's library is mapped, main is loading TensorFlow, then the data, then training: seconds.
    maps = Path(f"/proc/{proc.pid}/maps")
    while proc.poll() is None and "tensorflow" not in maps.read_text():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("Interrupted") and "Traceback" not in err


@pytest.mark.parametrize("script", ["hyperopt_optimize.py", "retrain_best_with_tensorboard.py"])
def test_a_keras_backend_other_than_tensorflow_or_jax_is_a_one_line_error(script, tmp_path):
    # A PyTorch user's shell or keras.json: without this, an ImportError traceback (no torch) or failing trials.
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    settings = [({"KERAS_BACKEND": "torch"}, "KERAS_BACKEND"), ({"KERAS_HOME": str(tmp_path)}, tmp_path / "keras.json")]
    for setting, named in settings:
        done = subprocess.run([sys.executable, str(REPO / script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**env, **setting})
        assert done.returncode == 2 and done.stderr.startswith(f"error: Keras is set to its torch backend ({named})")
        assert len(done.stderr.splitlines()) == 1


def test_a_crash_in_native_code_prints_where_each_thread_was(tmp_path):
    # A segfault in a kernel, days into a search, must leave more in the log than "Segmentation fault".
    crash = "import ctypes, cli\ndef main():\n    return ctypes.string_at(0)\ncli.run(main)\n"
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in done.stderr and 'line 3 in main' in done.stderr


def test_a_signal_that_comes_while_python_runs_code_that_cannot_raise_stops_the_run_without_a_traceback():
    # Keras imports JAX, whose garbage-collection callback runs often: a Ctrl-C there printed "Exception ignored in
    # ..." and a traceback into the search's log.
    code = """
import gc, os, signal
import cli
guard = cli.SignalGuard()
def collecting(phase, info):
    if phase == "start":
        gc.callbacks.remove(collecting)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # Python runs the handler here, inside the callback, whose exceptions it ignores
            pass
gc.callbacks.append(collecting)
gc.collect()
try:
    guard.stop_if_signalled()
except KeyboardInterrupt:
    print("stopped")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\n", "")


def test_a_training_stopped_mid_epoch_leaves_no_data_pipeline_for_python_to_tear_down(tmp_path):
    # Left to the interpreter's teardown, TensorFlow finalizes a tf.data iterator by calling back into a Python that is
    # going away, which may kill the process: a Ctrl-C'd search could end in a segfault instead of its summary.
    code = f"""
import atexit, gc
gc.disable()  # as if no collection came between the Ctrl-C and the exit
import keras, tensorflow as tf
import cli
from datasets import load_dataset
from neural_net import build_and_train

class CtrlC(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise KeyboardInterrupt

def main():
    try:
        build_and_train({SMALL_SPACE!r}, load_dataset("synthetic", train_subset=600), epochs=2,
                        callbacks=[CtrlC()])
    except KeyboardInterrupt:
        return 130

atexit.register(lambda: print("iterators left:", sum(isinstance(o, tf.data.Iterator) for o in gc.get_objects())))
cli.run(main)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 130, done.stderr[-3000:]
    assert "iterators left: 0" in done.stdout, done.stdout
