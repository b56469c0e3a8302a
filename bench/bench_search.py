"""The cost of pruning: the same TPE search (same seed) with median pruning and without.

    python3 bench/bench_search.py --trials 20 --epochs 30
    python3 bench/bench_search.py --replay ../shared/reference-results    # 2017's CIFAR-100 curves, no training

Runs hyperopt_optimize.py's search on synthetic data in two fresh folders and prints, for each,
the total epochs trained, the wall time and the best validation fine accuracy. One search says
little on its own: whether the rule stops the trial that would have won depends on the order
the trials come in. So the unpruned search's learning curves are then replayed under the rule
(`pruning.should_prune`) in many random orders, each trial stopping where the rule would have
stopped it: the epochs saved and how often the best accuracy stays within 2 points. The searches'
own lines (each trial's start and end) go to stderr as progress; the figures to stdout.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hyperopt_optimize  # noqa: E402  (sets TensorFlow's defaults before TensorFlow loads)
from pruning import should_prune  # noqa: E402
from cli import ArgumentParser, SEED, at_least  # noqa: E402
from precision import PRECISIONS  # noqa: E402
from utils import finished_curves, iter_results  # noqa: E402

WITHIN = 0.02  # the target: the best accuracy within 2 points, with at least 40% fewer epochs
FEWER = 0.40


def replay(curves: list[list[float]], orders: int, seed: int = 0) -> dict:
    """Run `curves` through the median rule in random orders: epochs saved and the best accuracy kept."""
    total, best = sum(map(len, curves)), max(map(max, curves))
    rng = random.Random(seed)
    saved, lost = [], []
    for _ in range(orders):
        finished = []
        for curve in rng.sample(curves, len(curves)):
            stop = next((e for e in range(1, len(curve) + 1) if should_prune(curve[:e], finished)), len(curve))
            finished.append(curve[:stop])
        saved.append(1 - sum(map(len, finished)) / total)
        lost.append(best - max(map(max, finished)))
    return {"trials": len(curves), "orders": orders, "epochs_saved_mean": round(statistics.fmean(saved), 3),
            "epochs_saved_min": round(min(saved), 3), "epochs_saved_max": round(max(saved), 3),
            "best_within_2_points": round(sum(x <= WITHIN for x in lost) / orders, 3),
            "both_targets": round(sum(x <= WITHIN and s >= FEWER for s, x in zip(saved, lost)) / orders, 3)}


def print_replay(r: dict, what: str) -> None:
    print(f"replayed in {r['orders']} random orders ({r['trials']} trials of {what}): "
          f"{100 * r['epochs_saved_mean']:.0f}% fewer epochs on average ({100 * r['epochs_saved_min']:.0f}-"
          f"{100 * r['epochs_saved_max']:.0f}%), best within 2 points in {100 * r['best_within_2_points']:.0f}% "
          f"of orders, both targets in {100 * r['both_targets']:.0f}%")


def run_search(prune: str, args) -> tuple[dict, list[list[float]]]:
    with tempfile.TemporaryDirectory() as folder:
        print(f"The search with --prune {prune}:", file=sys.stderr, flush=True)
        start = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            code = hyperopt_optimize.main([
                "--dataset", "synthetic", "--space", args.space, "--max-evals", str(args.trials),
                "--epochs", str(args.epochs), "--prune", prune, "--seed", str(args.seed), "--verbose", "0",
                "--precision", args.precision, "--no-plot",
                "--results-dir", f"{folder}/results", "--trials-file", f"{folder}/results.pkl",
                *(["--train-subset", str(args.train_subset)] if args.train_subset else []),
            ])
        wall = time.time() - start
        results = [r for _, r in iter_results(f"{folder}/results")]
    ok = [r for r in results if r["status"] == "ok"]
    return {"prune": prune, "exit_code": code, "trials": len(results),
            "epochs": sum(r["epochs_trained"] for r in ok), "pruned_trials": sum(r["pruned"] for r in ok),
            "wall_s": round(wall, 1), "best_val_fine_accuracy": max(-r["loss"] for r in ok) if ok else None,
            "precision": ok[0]["precision"] if ok else None}, finished_curves(results)


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--trials", type=at_least(1), default=20, help="trials of each search")
    parser.add_argument("--epochs", type=at_least(1), default=30, help="most epochs per trial (patience stays 15)")
    parser.add_argument("--space", choices=["tiny", "full"], default="tiny", help="the search space, as hyperopt_optimize.py's --space")
    parser.add_argument("--train-subset", type=at_least(1), default=None, help="train on this many synthetic images (default: all 2,700)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed of the data and of both searches")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="as hyperopt_optimize.py's")
    parser.add_argument("--orders", type=at_least(1), default=200, help="random trial orders to replay the unpruned search in")
    parser.add_argument("--replay", default=None, metavar="RESULTS_DIR",
                        help="only replay the finished trials of this results folder (no training)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    if args.replay:
        curves = finished_curves(r for _, r in iter_results(args.replay))
        if len(curves) < 2:
            parser.error(f"{args.replay}: fewer than 2 finished trials with validation curves")
        report = replay(curves, args.orders, args.seed)
        print_replay(report, args.replay)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return

    (unpruned, curves), (pruned, _) = run_search("none", args), run_search("median", args)
    rows = [unpruned, pruned]
    print(f"precision {rows[0]['precision']}, space {args.space}, seed {args.seed}")
    print(f"{'prune':7} {'trials':>6} {'epochs':>6} {'pruned':>6} {'wall s':>7} {'best acc':>8}")
    for r in rows:
        print(f"{r['prune']:7} {r['trials']:>6} {r['epochs']:>6} {r['pruned_trials']:>6} {r['wall_s']:>7} "
              f"{r['best_val_fine_accuracy']:>8.4f}")
    saved = 1 - rows[1]["epochs"] / rows[0]["epochs"]
    print(f"median pruning: {100 * saved:.0f}% fewer epochs, best accuracy "
          f"{100 * (rows[1]['best_val_fine_accuracy'] - rows[0]['best_val_fine_accuracy']):+.2f} points")
    orders = replay(curves, args.orders, args.seed)
    print_replay(orders, "the unpruned search")
    if args.json:
        Path(args.json).write_text(json.dumps({"searches": rows, "replay": orders}, indent=2))


if __name__ == "__main__":
    main()
