"""The hardware that trains here, and what is fastest on it: the precision, and oneDNN's kernels on x86 CPUs."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRECISION_HELP = ("Keras dtype policy of training. auto: mixed_bfloat16 on a GPU of compute capability 8.0+ "
                  "(Ampere on), a TPU, or a CPU with bfloat16 instructions (AVX512-BF16, AMX); mixed_float16, "
                  "with loss scaling, on a 7.x GPU (Volta, Turing); else float32")


def tensorflow_defaults() -> None:
    """Before TensorFlow loads: only its warnings and errors, and oneDNN's kernels on every x86 CPU.

    TensorFlow turns oneDNN on by itself only where a CPU has AVX512-VNNI, AVX512-BF16 or AMX; on
    an AVX2-only CPU its own kernels trained SEED_BEST_SPACE (float32) at 29-31 images/s, oneDNN's
    at 55-66 (bench/README.md). A value the user set stays; elsewhere than x86 nothing changes.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def nvidia_gpu_count() -> int:
    """The NVIDIA GPUs that nvidia-smi lists, whatever CUDA_VISIBLE_DEVICES says; 0 without nvidia-smi, or where MIG
    splits a GPU (CUDA_VISIBLE_DEVICES then names MIG instances, not GPU numbers)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    lines = listing.splitlines()
    return 0 if any("MIG " in line for line in lines) else sum(line.startswith("GPU ") for line in lines)


def use_one_gpu() -> str | None:
    """Before a backend loads, in a process that runs one model at a time: where CUDA_VISIBLE_DEVICES is unset and
    several GPUs are here, show the backend the first alone; the line that says so, else None.

    Keras runs a model on one GPU, but both backends take most of the memory of every GPU they
    see: a second search given GPU 1 would have found it full.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ or (gpus := nvidia_gpu_count()) < 2:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    return f"{gpus} GPUs here, and Keras uses one: GPU 0 alone, the others left free (CUDA_VISIBLE_DEVICES=N picks GPU N)"


def resolve_precision(precision: str = "auto") -> str:
    """`auto` is the mixed precision that the hardware computes natively, else float32."""
    if precision != "auto":
        return precision
    found = accelerators()
    if found:
        return precision_for_accelerators([capability for _, capability in found])
    return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"


def precision_for_accelerators(capabilities: list[tuple[int, int] | None]) -> str:
    """The mixed precision that every one of these accelerators computes natively (None: not an NVIDIA GPU).

    bfloat16 needs an NVIDIA GPU of compute capability 8.0 (Ampere); Volta and Turing (7.x) have
    float16 tensor cores only, and older GPUs neither. TPUs and other accelerators take bfloat16.
    """
    lowest = min((c for c in capabilities if c is not None), default=None)
    if lowest is None or lowest >= (8, 0):
        return "mixed_bfloat16"
    return "mixed_float16" if lowest >= (7, 0) else "float32"


def accelerators() -> list[tuple[str, tuple[int, int] | None]]:
    """Each accelerator that Keras's backend sees: its name and CUDA compute capability (None where it has none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.default_backend() == "cpu":
            return []
        return [(device.device_kind, _capability(getattr(device, "compute_capability", None))) for device in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
        return [(d.get("device_name", "GPU"), _capability(d.get("compute_capability"))) for d in details]
    return []


def training_line(precision: str) -> str:
    """The line a script prints before training: Keras, its backend, the precision and the hardware."""
    import keras

    return (f"Training with Keras {keras.__version__} on {keras.backend.backend()} {backend_version()}, "
            f"precision {resolve_precision(precision)}, {describe_hardware()}")


def backend_version() -> str:
    """The version of Keras's backend, TensorFlow's or JAX's: what a trial's numbers and seconds also depend on."""
    import importlib

    import keras

    return importlib.import_module(keras.backend.backend()).__version__


def describe_hardware() -> str:
    """Where training runs, for the first lines a script prints: a search on the CPU by mistake costs days."""
    import keras

    found = accelerators()
    if not found:
        return f"on the CPU ({cpu_name()}): no GPU is visible to {keras.backend.backend()}"
    return f"on {len(found)} {'accelerator' if len(found) == 1 else 'accelerators'}: {device_name(found)}"


def device_name(found: list[tuple[str, tuple[int, int] | None]] | None = None) -> str:
    """What a trial trains on, for its result (its train_seconds mean little without it): the accelerators' names, or
    the CPU's, "CPU (AMD EPYC 7B13, 8 cores)"."""
    return ", ".join(sorted({name for name, _ in (accelerators() if found is None else found)})) or f"CPU ({cpu_name()})"


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model and the cores that the backend's kernels may use here, "AMD EPYC 7B13, 8 cores": those this
    process may run on, or on TensorFlow a Spark worker's share of them (its TF_NUM_INTRAOP_THREADS)."""
    from cli import keras_backend

    try:
        with open(cpuinfo) as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    model = " ".join((model or mac_brand_string()).split()) or platform.processor() or platform.machine() or "unknown model"
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "") if keras_backend()[0] == "tensorflow" else ""
    if threads.isdigit() and int(threads) > 0:
        cores = int(threads)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"{model}, {cores} {'core' if cores == 1 else 'cores'}"


def mac_brand_string() -> str:
    """The CPU's model on macOS, which has no /proc/cpuinfo ("Apple M2 Pro"; platform.processor() says "arm"); elsewhere ""."""
    if platform.system() != "Darwin":
        return ""
    try:
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _capability(value) -> tuple[int, int] | None:
    """A compute capability as (major, minor), from TensorFlow's tuple or JAX's "8.0"."""
    if isinstance(value, str):
        value = tuple(int(part) for part in value.split(".")[:2])
    return tuple(value) if value else None


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where mixed precision is faster.

    Elsewhere bfloat16 is emulated on CPUs and slower than float32.
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
