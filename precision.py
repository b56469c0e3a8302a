"""The precision that trains fastest on this machine's hardware: mixed bfloat16, mixed float16 or float32."""

from __future__ import annotations

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRECISION_HELP = ("Keras dtype policy of training. auto: mixed_bfloat16 on a GPU of compute capability 8.0+ "
                  "(Ampere on), a TPU, or a CPU with bfloat16 instructions (AVX512-BF16, AMX); mixed_float16, "
                  "with loss scaling, on a 7.x GPU (Volta, Turing); else float32")


def resolve_precision(precision: str = "auto") -> str:
    """`auto` is the mixed precision that the hardware computes natively, else float32."""
    if precision != "auto":
        return precision
    accelerators = _accelerator_capabilities()
    if accelerators:
        return precision_for_accelerators(accelerators)
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


def _accelerator_capabilities() -> list[tuple[int, int] | None]:
    """The CUDA compute capability of each accelerator the backend sees (None where it has none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.default_backend() == "cpu":
            return []
        return [_capability(getattr(device, "compute_capability", None)) for device in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        return [_capability(tf.config.experimental.get_device_details(gpu).get("compute_capability"))
                for gpu in tf.config.list_physical_devices("GPU")]
    return []


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
