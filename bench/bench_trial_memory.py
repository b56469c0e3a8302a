"""What a long search costs in memory: the process's size after each of many trials in one process.

    python3 bench/bench_trial_memory.py --trials 30

Trains networks sampled from the tiny space on synthetic data, one epoch each, through
`build_and_train` as a search does (model deleted and Keras session cleared after each), and
prints the resident memory after every trial and its growth per trial after a warm-up.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from hyperopt.pyll import stochastic  # noqa: E402

import hyperspace  # noqa: E402
from datasets import load_dataset  # noqa: E402
from bench_training import rss_mb  # noqa: E402
from neural_net import build_and_train  # noqa: E402
from cli import ArgumentParser, at_least  # noqa: E402


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--trials", type=at_least(1), default=30, help="trials to train, one after another in this process")
    parser.add_argument("--warm-up", type=at_least(0), default=5, help="trials before growth is counted")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.trials <= args.warm_up:
        parser.error("--trials must be larger than --warm-up")

    data = load_dataset("synthetic", synthetic_size=600)
    rng = np.random.default_rng(0)
    sizes = []
    for trial in range(args.trials):
        model, result = build_and_train(stochastic.sample(hyperspace.TINY_SPACE, rng), data, epochs=1)
        del model
        keras.backend.clear_session()
        gc.collect()
        sizes.append(round(rss_mb(), 1))
        print(f"trial {trial}: {result['status']}, process {sizes[-1]:.0f} MB", flush=True)
    growth = (sizes[-1] - sizes[args.warm_up - 1]) / (args.trials - args.warm_up)
    # The size jumps up and down from trial to trial: a line through every point says more than its two ends.
    slope = float(np.polyfit(np.arange(args.warm_up - 1, args.trials), sizes[args.warm_up - 1:], 1)[0])
    print(f"after {args.warm_up} warm-up trials the process grew by {growth:.1f} MB per trial "
          f"(a line fitted through those trials: {slope:.1f} MB per trial)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rss_mb_after_each_trial": sizes, "growth_mb_per_trial": growth, "fitted_mb_per_trial": slope}, indent=2))


if __name__ == "__main__":
    main()
