#!/usr/bin/env bash
# The GPU figures of the training benchmarks in one run of at most 9.5 minutes on one H100 (JAX
# backend): SEED_BEST_SPACE's train step timed as compiled, with the variants that say where its
# time goes, then both spaces through `fit` as a search trains them. JSON files go to OUT_DIR.
#
#     bench/gpu_checks.sh [OUT_DIR]        # default: gpu-checks/
set -u
out=${1:-gpu-checks}
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
h100=(--peak-tflops 989 --bandwidth-tbs 3.35)

# One command per figure, each with its own time limit and file: one slow compile costs only its own.
step() {
    local limit=$1
    shift
    echo "== $*"
    timeout "$limit" python3 "$@" || echo "== exit $? (limit ${limit} s)"
}

# Dropout is left out: on a GPU its masks are fused, and the step without it moves only 4% fewer bytes.
for variant in as-is filters-x8 no-bn; do
    step 110 bench/bench_roofline.py --spaces best --variants "$variant" --precision mixed_bfloat16 "${h100[@]}" \
        --json "$out/roofline_bf16_$variant.json"
done
# At batch 64 one activation (8 MB) fits the H100's 50 MB L2 cache: does the step beat its memory floor there?
step 80 bench/bench_roofline.py --spaces best --batch-size 64 --precision mixed_bfloat16 "${h100[@]}" \
    --json "$out/roofline_bf16_batch64.json"
step 150 bench/bench_training.py --spaces best,demo --precision mixed_bfloat16 --peak-tflops 989 \
    --steps 20 --windows 3 --skip-memory --json "$out/training_bf16.json"
