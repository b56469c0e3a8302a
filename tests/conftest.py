"""Shared fixtures: the repo on sys.path, quiet TensorFlow, small datasets and spaces."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference-results"
sys.path.insert(0, str(REPO))

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # TensorFlow as the scripts load it
# CPU only, as the tests expect (float32 on the CPU), also on a GPU machine whose shell picks a GPU; the
# scripts that the tests start inherit it.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# XLA's CPU compiles, which every JAX test and subprocess waits for, without LLVM's optimisations:
# 2.5 s instead of 18.6 s for the 22 programs that build a network. The HLO that the tests read
# (FLOPs, bytes, kernels, compile counts) is the same; only the machine code is slower to run.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # noqa: E402

import hyperspace  # noqa: E402

# A small network that learns the synthetic data within 2 epochs on a CPU.
SMALL_SPACE = {
    **hyperspace.SEED_BEST_SPACE,
    "conv_hiddn_units_mult": 0.4,
    "fc_units_1_mult": 0.1,
    "residual": None,
    "first_conv": None,
    "nb_conv_pool_layers": 2,
    "pooling_type": "max",
    "use_BN": False,
    "batch_size": 32,
    "lr_rate_mult": 3.0,
    "optimizer": "Adam",
    "conv_dropout_drop_proba": 0.0,
    "fc_dropout_drop_proba": 0.0,
    "activation": "relu",
}


def pytest_collection_modifyitems(items):
    """Slow tests first: the two workers then end on short tests, not one of them alone on a long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def environment_as_it_was():
    """The environment each test started with, after it: a script's main run in-process sets variables for its own
    process (a Spark search's memory settings), which would reach the later tests of this worker."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="session")
def synthetic():
    from datasets import load_dataset

    return load_dataset("synthetic", synthetic_size=2000)


@pytest.fixture
def reference_dir():
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference-results is absent")
    return REFERENCE


def swallow_a_signal_in(monkeypatch, owner, name: str, signum: int = signal.SIGINT) -> None:
    """Make `owner.name` send this process `signum` and swallow its KeyboardInterrupt before it runs.

    As a finalizer that runs while TensorFlow works, or C code that calls back into Python, can.
    """
    real = getattr(owner, name)

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except KeyboardInterrupt:
            return real(*args, **kwargs)
        raise AssertionError(f"{signal.Signals(signum).name} was not turned into KeyboardInterrupt")

    monkeypatch.setattr(owner, name, swallowing)


def swallow_a_signal_while_the_data_loads(monkeypatch, signum: int = signal.SIGINT) -> None:
    """Make loading a dataset send this process `signum` and swallow its KeyboardInterrupt."""
    import datasets

    swallow_a_signal_in(monkeypatch, datasets, "load_dataset", signum)


def can_become(uid: int) -> bool:
    """Whether a process of ours may switch to that user (root, with the capability a container may drop)."""
    become = f"import os; os.setgid({uid}); os.setuid({uid})"
    return os.geteuid() == 0 and subprocess.run([sys.executable, "-c", become], capture_output=True).returncode == 0


FOUR_GPUS = "".join(f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i})\n" for i in range(4))


def fake_nvidia_smi(tmp_path, monkeypatch, listing: str) -> None:
    """This machine as one whose `nvidia-smi -L` lists `listing`, with CUDA_VISIBLE_DEVICES unset."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
