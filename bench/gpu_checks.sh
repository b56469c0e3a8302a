#!/usr/bin/env bash
# The GPU figures of the training benchmarks in one run of about 9 minutes on one H100 (JAX backend):
# SEED_BEST_SPACE's train step timed as compiled, with the variants that say where its time goes, in
# bfloat16 and float32, then both spaces through `fit` as a search trains them. JSON files go to OUT_DIR.
#
#     bench/gpu_checks.sh [OUT_DIR]        # default: gpu-checks/
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
h100=(--peak-tflops 989 --bandwidth-tbs 3.35)

# Each command has its own time limit, so that one slow compile does not cost the figures of the others.
step() {
    local limit=$1
    shift
    echo "== $*"
    timeout "$limit" python3 "$@" || echo "== exit $? (limit ${limit} s)"
}

step 240 bench/bench_roofline.py --spaces best --variants as-is,filters-x8,no-dropout,no-bn \
    --precision mixed_bfloat16 "${h100[@]}" --json "$out/roofline_bf16.json"
# At batch 64 one activation (8 MB) fits the H100's 50 MB L2 cache: does the step beat its HBM floor there?
step 90 bench/bench_roofline.py --spaces best --batch-size 64 --precision mixed_bfloat16 "${h100[@]}" \
    --json "$out/roofline_bf16_batch64.json"
step 90 bench/bench_roofline.py --spaces best --precision float32 "${h100[@]}" --json "$out/roofline_float32.json"
step 150 bench/bench_training.py --spaces best,demo --precision mixed_bfloat16 --peak-tflops 989 \
    --steps 20 --windows 3 --skip-memory --json "$out/training_bf16.json"
