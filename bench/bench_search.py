"""The cost of pruning: the same TPE search (same seed) with median pruning and without.

    python3 bench/bench_search.py --trials 20 --epochs 15

Runs hyperopt_optimize.py's search on synthetic data in two fresh folders and prints, for each,
the total epochs trained, the wall time and the best validation fine accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hyperopt_optimize  # noqa: E402
from utils import iter_results  # noqa: E402


def run_search(prune: str, args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
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
            "precision": ok[0]["precision"] if ok else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--space", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], default="auto")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    rows = [run_search("none", args), run_search("median", args)]
    print(f"precision {rows[0]['precision']}, space {args.space}, seed {args.seed}")
    print(f"{'prune':7} {'trials':>6} {'epochs':>6} {'pruned':>6} {'wall s':>7} {'best acc':>8}")
    for r in rows:
        print(f"{r['prune']:7} {r['trials']:>6} {r['epochs']:>6} {r['pruned_trials']:>6} {r['wall_s']:>7} "
              f"{r['best_val_fine_accuracy']:>8.4f}")
    saved = 1 - rows[1]["epochs"] / rows[0]["epochs"]
    print(f"median pruning: {100 * saved:.0f}% fewer epochs, best accuracy "
          f"{100 * (rows[1]['best_val_fine_accuracy'] - rows[0]['best_val_fine_accuracy']):+.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
