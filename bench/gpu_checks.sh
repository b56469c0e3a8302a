#!/usr/bin/env bash
# The GPU figures of the training benchmarks in one run of at most 9.5 minutes (550 s of limits) on
# one H100 or H200 (JAX backend). SEED_BEST_SPACE, widths in multiples of 8, bfloat16, through
# `fit` in epochs of 140 steps (a CIFAR-100 epoch at batch 320):
# - with a search trial's callbacks, with Keras's per-step NaN check (which the twelfth session
#   found cost 44%, with a per-step logger) and with none, in that order (that session ran none
#   first, and found the two callbacks as slow when marked async-safe);
# - the first epoch, mostly the compile (17-49 s on the H200, as much as 10-60 epochs): cold, then
#   from JAX's persistent compilation cache (which keeps XLA's kernel autotuning too), and with the
#   autotuning off or without its correctness checks, with what each does to the epochs after;
# - two trainings at once on the one GPU, as two trials of `--spark-master local[2]`;
# - the compiled step's profile, then the same step with cuDNN's convolutions in CUDA graphs too
#   (the H100's profile showed 1.3 ms a step between kernels, each convolution launched from the host).
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
    # The first network compiles and autotunes cold and fills JAX's persistent compilation cache; the
    # next two in that process, and the same network in a new process after, find it on disk.
    (export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
     step 110 "${fit[@]}" --spaces best --variants filters-x8 --callbacks trial,per-step-nan,none \
         --precision mixed_bfloat16 --steps 140 --json "$out/training_bf16_140.json"
     echo "== warm compilation cache, a new process"
     step 60 "${fit[@]}" --spaces best --variants filters-x8 --precision mixed_bfloat16 --steps 40 --windows 1)
    # Autotuning levels (XLA's --xla_gpu_autotune_level, default 4): 0 off, 1 without correctness checks.
    for level in 0 1; do
        (export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=$level"
         step 60 "${fit[@]}" --spaces best --variants filters-x8 --precision mixed_bfloat16 --steps 140 \
             --json "$out/training_bf16_140_autotune_$level.json")
    done
    # Two trainings at once on the one GPU, as `--spark-master local[2]` runs two trials: is there room
    # for a second (the H100's step left 1.3 ms between kernels; a trial's compile leaves the GPU idle)?
    # Both find the network compiled in the cache of the first rows, so that their epochs overlap.
    echo "== two at once"
    for i in 1 2; do
        XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache \
            timeout 80 python3 "${fit[@]}" --spaces best --variants filters-x8 \
            --precision mixed_bfloat16 --steps 140 --windows 10 > "/tmp/pair_$i.txt" 2>&1 &
    done
    wait
    cat /tmp/pair_1.txt /tmp/pair_2.txt
    step 90 bench/bench_roofline.py --spaces best --variants filters-x8 --precision mixed_bfloat16 "${gpu[@]}" \
        --profile-steps 5 --hlo-dir "$out/hlo" --json "$out/roofline_bf16_filters-x8.json"
    # XLA leaves convolutions out of its CUDA graphs unless asked (openxla/xla#34572).
    (export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=+CONVOLUTION"
     step 90 bench/bench_roofline.py --spaces best --variants filters-x8 --precision mixed_bfloat16 "${gpu[@]}" \
        --profile-steps 5 --json "$out/roofline_bf16_filters-x8_conv_graphs.json")
} 2>&1 | tee "$out/log.txt"
