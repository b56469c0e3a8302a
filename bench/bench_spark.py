"""Trials in parallel on Spark against one at a time: the same search, run both ways.

    python3 bench/bench_spark.py                                            # 8 trials, local[2] against sequential
    python3 bench/bench_spark.py --master "local[4]" --space full --trials 12 --epochs 3

Runs hyperopt_optimize.py on synthetic data twice, each search its own process in a fresh folder,
start-up included, as a user runs it: one trial at a time, then on Spark's `--master`. Both draw
every trial at random from one seed (`--algo random`) and train it without pruning, so that they
train the same networks for the same epochs whatever order Spark's trials finish in. Prints each
search's wall time, trials an hour and the seconds its trials spent training (a trial on Spark
trains on its share of the cores, and pays its own process's start-up besides), then whether both
trained the same networks and how far their accuracies differ. The searches' own lines go to
stderr as progress; the figures to stdout.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cli import ArgumentParser, SEED, at_least  # noqa: E402
from spark_search import MASTER_URL  # noqa: E402
from utils import iter_results  # noqa: E402


def run_search(master: str | None, args) -> tuple[dict, dict[int, dict]]:
    """One search, sequential (`master` None) or on Spark: its figures, and its results by trial number."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(REPO / "hyperopt_optimize.py"), "--dataset", "synthetic", "--space", args.space,
                   "--algo", "random", "--prune", "none", "--max-evals", str(args.trials), "--epochs", str(args.epochs),
                   "--seed", str(args.seed), "--verbose", "0", "--no-plot", "--results-dir", f"{folder}/results",
                   *(["--train-subset", str(args.train_subset)] if args.train_subset else []),
                   *(["--spark-master", master] if master else [])]
        print(f"The search {'on Spark ' + master if master else 'one trial at a time'}:", file=sys.stderr, flush=True)
        start = time.monotonic()
        code = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr).returncode
        wall = time.monotonic() - start
        results = {r["tid"]: r for _, r in iter_results(f"{folder}/results")}
    ok = [r for r in results.values() if r["status"] == "ok"]
    seconds = [r["train_seconds"] for r in ok]
    return {"mode": master or "sequential", "exit_code": code, "trials": len(results), "failed": len(results) - len(ok),
            "wall_s": round(wall, 1), "trials_per_hour": round(3600 * len(results) / wall, 1),
            "train_s_sum": round(sum(seconds), 1), "train_s_median": round(statistics.median(seconds), 1) if ok else None,
            "device": ok[0]["device"] if ok else None,
            "best_val_fine_accuracy": max(-r["loss"] for r in ok) if ok else None}, results


def compare(one: dict[int, dict], other: dict[int, dict]) -> dict:
    """Whether two searches trained the same network as each trial, and how far their accuracies differ."""
    tids = sorted(one.keys() & other.keys())
    same = all(one[t]["space"] == other[t]["space"] for t in tids) and one.keys() == other.keys()
    gaps = [abs(one[t]["loss"] - other[t]["loss"]) for t in tids
            if one[t]["status"] == other[t]["status"] == "ok"]
    return {"same_networks": same, "trials_compared": len(gaps),
            "max_accuracy_gap": round(max(gaps), 4) if gaps else None,
            "median_accuracy_gap": round(statistics.median(gaps), 4) if gaps else None}


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--master", default="local[2]", help="the Spark master of the parallel search (default: local[2])")
    parser.add_argument("--trials", type=at_least(1), default=8, help="trials of each search")
    parser.add_argument("--epochs", type=at_least(1), default=3, help="most epochs per trial")
    parser.add_argument("--space", choices=["tiny", "full"], default="tiny", help="the search space, as hyperopt_optimize.py's --space")
    parser.add_argument("--train-subset", type=at_least(1), default=None, help="train on this many synthetic images (default: all 2,700)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed of the data and of both searches")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if not MASTER_URL.fullmatch(args.master):
        parser.error(f"--master {args.master}: not a Spark master; local[P] (P at least 1), spark://HOST:PORT, k8s://... or yarn")

    rows, results = [], []
    for master in (None, args.master):
        row, trials = run_search(master, args)
        if row["exit_code"]:
            sys.exit(f"bench_spark.py: error: the search {row['mode']} exited with {row['exit_code']}; its lines above say why")
        rows.append(row)
        results.append(trials)
    sequential, parallel = rows
    print(f"space {args.space}, {args.trials} trials of up to {args.epochs} epochs, seed {args.seed}")
    print(f"{'mode':12} {'trials':>6} {'failed':>6} {'wall s':>7} {'trials/h':>8} {'train s':>8} {'median':>7} "
          f"{'best acc':>8}  device")
    for r in rows:
        best = "-" if r["best_val_fine_accuracy"] is None else f"{r['best_val_fine_accuracy']:.4f}"
        median = "-" if r["train_s_median"] is None else r["train_s_median"]
        print(f"{r['mode']:12} {r['trials']:>6} {r['failed']:>6} {r['wall_s']:>7} {r['trials_per_hour']:>8} "
              f"{r['train_s_sum']:>8} {median:>7} {best:>8}  {r['device']}")
    same = compare(*results)
    print(f"{args.master}: {sequential['wall_s'] / parallel['wall_s']:.2f}x the sequential search's trials an hour; "
          + ("the same networks" if same["same_networks"] else "NOT the same networks")
          + (f", validation fine accuracies {same['median_accuracy_gap']:.4f} apart (median; at most "
             f"{same['max_accuracy_gap']:.4f})" if same["trials_compared"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"searches": rows, "comparison": same}, indent=2))


if __name__ == "__main__":
    main()
