#!/usr/bin/env bash
# The GPU figures of the training benchmarks in one run of at most 9.5 minutes (570 s of limits)
# on one H100 or H200 (JAX backend): SEED_BEST_SPACE through `fit` with 2017's widths and with
# widths in multiples of 8, in epochs of 40 steps (as the fifth and twelfth sessions measured) and
# of 140 (a CIFAR-100 epoch at batch 320); the latter in float32 too, and with a search trial's
# callbacks, with Keras's per-step NaN check (which the twelfth session found cost 44%, with a
# per-step logger) and with none, in that order (that session ran none first, and found the two
# callbacks as slow when marked async-safe); a network's first epoch (mostly its compile) without
# and with JAX's persistent compilation cache, which also keeps XLA's kernel autotuning; the
# compiled step's profile, then the same step with cuDNN's convolutions in CUDA graphs too (the
# H100's profile showed 1.3 ms a step between kernels, and each convolution launched from the host).
# Files go to OUT_DIR (eight at most, as the device tool returns): log.txt, one JSON per
# benchmark, and hlo/ with the compiled step and its profiler trace.
#
#     bench/gpu_checks.sh [OUT_DIR]        # default: gpu-checks/
set -u
out=${1:-gpu-checks}
mkdir -p "$out/hlo"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# Both chips' dense bf16 peak is 989 TFLOP/s; the H200's memory moves 4.8 TB/s, the H100's 3.35.
bandwidth=3.35
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && bandwidth=4.8
gpu=(--peak-tflops 989 --bandwidth-tbs "$bandwidth")
fit=(bench/bench_training.py --peak-tflops 989 --windows 4 --skip-memory)

# One command per figure, each with its own time limit: one slow compile costs only its own.
step() {
    local limit=$1
    shift
    echo "== $*"
    timeout "$limit" python3 "$@" || echo "== exit $? (limit ${limit} s)"
}

{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
    python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
    step 100 "${fit[@]}" --spaces best --variants as-is,filters-x8 --precision mixed_bfloat16 --steps 40 \
        --json "$out/training_bf16_40.json"
    step 110 "${fit[@]}" --spaces best --variants filters-x8 --callbacks trial,per-step-nan,none \
        --precision mixed_bfloat16 --steps 140 --json "$out/training_bf16_140.json"
    step 60 "${fit[@]}" --spaces best --variants filters-x8 --precision float32 --steps 140 \
        --json "$out/training_f32_140.json"
    # The same network in two processes: the second finds the first's compile and autotuning on disk.
    (export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
     for run in cold warm; do
         echo "== $run compilation cache"
         step 60 "${fit[@]}" --spaces best --variants filters-x8 --precision mixed_bfloat16 --steps 40 --windows 1
     done)
    step 90 bench/bench_roofline.py --spaces best --variants filters-x8 --precision mixed_bfloat16 "${gpu[@]}" \
        --profile-steps 5 --hlo-dir "$out/hlo" --json "$out/roofline_bf16_filters-x8.json"
    # XLA leaves convolutions out of its CUDA graphs unless asked (openxla/xla#34572).
    (export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=+CONVOLUTION"
     step 90 bench/bench_roofline.py --spaces best --variants filters-x8 --precision mixed_bfloat16 "${gpu[@]}" \
        --profile-steps 5 --json "$out/roofline_bf16_filters-x8_conv_graphs.json")
} 2>&1 | tee "$out/log.txt"
