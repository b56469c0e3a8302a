"""How often the importance ranking calls a hyperparameter that does not matter significant, in TPE searches.

    python3 bench/bench_importance.py                       # 100 searches of 100 trials
    python3 bench/bench_importance.py --noise 0.05 --json importance.json

Runs hyperopt's TPE on an objective that costs nothing to evaluate: 8 hyperparameters drawn uniformly,
of which only the learning rate matters (accuracy 0.6 - 0.3 (lr - 0.3)^2, plus noise), the first 20
trials random draws, as in a search of this project. Over each search's trials, as
analyze_results.py sees them, it takes each hyperparameter's importance p-value two ways: shuffling
the accuracies across the whole search, and as the project does, among the trials drawn alike (the
random draws among themselves, TPE's among a few neighbours). Prints, for each way, the share of
the 7 unrelated hyperparameters with p < 0.05 (5% where p-values hold) and of searches that found
the learning rate.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from hyperopt import Trials, fmin, hp, tpe  # noqa: E402

import analyze_results  # noqa: E402
import significance  # noqa: E402
from cli import ArgumentParser, SEED, at_least, positive  # noqa: E402

STARTUP = 20  # hyperopt's n_startup_jobs: random draws before TPE models the trials
NAMES = analyze_results.NUMERIC[:8]  # their names; lr_rate_mult is the one that matters
WAYS = {"across the whole search": lambda trials: np.zeros(len(trials), dtype=int),
        "among trials drawn alike": significance.exchangeable}


def search_rows(seed: int, trials: int, noise: float) -> list[dict]:
    """The trials of one TPE search of the objective, as analyze_results.load_trials_table gives them."""
    rng = np.random.default_rng(seed)

    def loss(point: dict) -> float:
        return -(0.6 - 0.3 * (point["lr_rate_mult"] - 0.3) ** 2 + rng.normal(0, noise))

    found = Trials()
    fmin(loss, {name: hp.uniform(name, 0, 1) for name in NAMES}, algo=functools.partial(tpe.suggest, n_startup_jobs=STARTUP),
         max_evals=trials, trials=found, rstate=np.random.default_rng(seed), show_progressbar=False)
    constant = {name: 1.0 for name in analyze_results.NUMERIC} | {name: "a" for name in analyze_results.CATEGORICAL}
    return [constant | {name: trial["misc"]["vals"][name][0] for name in NAMES}
            | {"fine_accuracy": -trial["result"]["loss"], "coarse_accuracy": 0.1,
               "suggested_by": "random" if trial["tid"] < STARTUP else "tpe"} for trial in found.trials]


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--searches", type=at_least(1), default=100, help="TPE searches to run")
    parser.add_argument("--trials", type=at_least(3), default=100, help="trials in each search")
    parser.add_argument("--noise", type=positive, default=0.01, help="standard deviation of the accuracies' noise")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the first search (the next ones count up)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    significance.PERMUTATIONS = 999  # enough to tell p < 0.05 apart, ten times as fast
    unrelated, found = {way: 0 for way in WAYS}, {way: 0 for way in WAYS}
    for seed in range(args.seed, args.seed + args.searches):
        rows = search_rows(seed, args.trials, args.noise)
        for way, blocks in WAYS.items():
            p = {i.hyperparameter: i.p_value for i in analyze_results.importance(rows, blocks_of=blocks)}
            unrelated[way] += sum(p[name] < 0.05 for name in NAMES if name != "lr_rate_mult")
            found[way] += p["lr_rate_mult"] < 0.05
        print(f"search {seed}: " + "; ".join(f"{way} {unrelated[way]} unrelated, {found[way]} found" for way in WAYS),
              file=sys.stderr, flush=True)
    figures = {way: {"unrelated_significant": unrelated[way] / (args.searches * (len(NAMES) - 1)),
                     "learning_rate_found": found[way] / args.searches} for way in WAYS}
    print(f"{args.searches} TPE searches of {args.trials} trials ({STARTUP} random first), noise {args.noise}:")
    print(f"{'p-values shuffling':26} {'unrelated with p < 0.05':>24} {'searches that found lr':>23}")
    for way, figure in figures.items():
        print(f"{way:26} {figure['unrelated_significant']:>24.1%} {figure['learning_rate_found']:>23.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "figures": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
