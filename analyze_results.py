"""What the search found: a leaderboard, trials.csv, hyperparameter importance and plots.

Reads every result JSON in --results-dir (this project's and the 2017 project's files).
"""

from __future__ import annotations

import argparse
import collections
import csv
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from analysis_notes import (MIXED, best_first, budget_note, failures_note, mixed_note, retrains_table, size_note,
                            standard_errors, suggestions_note, within_one_standard_error)
from cli import ArgumentParser, at_least, plural, run
from significance import beyond_chance, correlation_ratio, exchangeable, pearson_r, shuffled_p
from leaderboard import PARAMS_HEADER, leaderboard_header, leaderboard_row, leaderboard_title, params_cell
from utils import (RESULTS_DIR, SETTINGS, RunLock, best_epoch, check_writable, is_ok, iter_results, setting,
                   trials_file_for, validation_curve, warn)

NUMERIC = ["lr_rate_mult", "l2_weight_reg_mult", "batch_size", "coarse_labels_weight", "conv_dropout_drop_proba",
           "fc_dropout_drop_proba", "conv_hiddn_units_mult", "conv_pool_res_start_idx", "conv_kernel_size",
           "res_conv_kernel_size", "fc_units_1_mult", "residual", "one_more_fc"]
CATEGORICAL = ["optimizer", "use_BN", "first_conv", "nb_conv_pool_layers", "pooling_type", "activation"]
HYPERPARAMETERS = NUMERIC + CATEGORICAL
# The residual units' own hyperparameters, which shape a network only where it has them (as_built): the trials each is
# scored over.
RESIDUAL_ONLY = {"conv_pool_res_start_idx": "that chose residual units", "res_conv_kernel_size": "with residual units"}
LOG_UNIFORM = ["lr_rate_mult", "l2_weight_reg_mult", "conv_hiddn_units_mult", "fc_units_1_mult"]  # log-uniform in the space: log axes
COST_COLUMNS = ["n_params", "activations_per_image", "train_seconds", "started", "keras_backend", "keras_version",
                "backend_version", "precision", "device"]
LEAN_P = 0.05  # below it, the importance table says which way the better trials lean as a finding


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--results-dir", default=RESULTS_DIR, help="folder of result JSON files")
    parser.add_argument("--out", default=None,
                        help="folder for trials.csv, importance.csv and the PNGs (default: analysis/ for results/, "
                             "analysis/NAME/ for another results folder NAME, so that two searches' analyses never mix)")
    parser.add_argument("--trials-file", default=None,
                        help="trials pickle that gives the trial order where it holds these results (default: the search's, "
                             "results.pkl for results/; else results-dir/results.pkl, as the 2017 files have it; else file times)")
    parser.add_argument("--top", type=at_least(1), default=10, help="trials in the leaderboard and the per-epoch plot")
    parser.add_argument("--weights-dir", default=None,
                        help="where retrain_best_with_tensorboard.py wrote its results, to sum up the retrains of these "
                             "trials (default: weights, where there is one)")
    args = parser.parse_args(argv)
    args.out = args.out or analysis_dir_for(args.results_dir)
    if args.weights_dir is not None and not Path(args.weights_dir).is_dir():
        parser.error(f"--weights-dir {args.weights_dir}: no such folder")
    args.weights_dir = args.weights_dir or "weights"
    return args


def analysis_dir_for(results_dir: str) -> str:
    """The default output folder of a results folder's analysis: analysis/ for results/, analysis/NAME/ for another."""
    if os.path.normpath(results_dir) == RESULTS_DIR:
        return "analysis"
    return os.path.join("analysis", os.path.basename(os.path.abspath(results_dir)))


def trial_ids(trials_files, model_names) -> dict[str, int]:
    """model_name -> trial id from the first readable trials pickle that holds any of these results (2017 files carry no tid)."""
    from utils import TrialsFileError, load_trials

    for path in trials_files:
        try:
            trials = load_trials(path)
        except FileNotFoundError:
            continue
        except (OSError, TrialsFileError) as err:
            warn(f"{err} (the trial order comes from another pickle, or the file times)")
            continue
        tids = {t["result"].get("model_name"): t["tid"] for t in trials.trials if t["result"].get("model_name")}
        if tids.keys() & set(model_names):  # another search's pickle says nothing
            return tids
    return {}


def as_built(row: dict) -> None:
    """Set a row's residual hyperparameters to what its network has: neural_net adds `residual` units to each block from
    `conv_pool_res_start_idx` on, so none where that is past the last block; and None (shaped nothing) for those of
    units it lacks, which the space draws all the same."""
    start, blocks = row["conv_pool_res_start_idx"], row["nb_conv_pool_layers"]
    if row["residual"] == "":
        row["conv_pool_res_start_idx"] = row["res_conv_kernel_size"] = None
    elif isinstance(start, (int, float)) and isinstance(blocks, (int, float)) and int(start) >= int(blocks):
        row["residual"], row["res_conv_kernel_size"] = "", None


def load_trials_table(results_dir, trials_files=()) -> list[dict]:
    """One row per result file: order, status, metrics and flattened hyperparameters."""
    from hyperspace import width_multiple

    results = list(iter_results(results_dir))
    known_tids = trial_ids(trials_files, [result.get("model_name") for _, result in results])
    rows = []
    for path, result in results:
        space = result.get("space") or {}
        if wrong := [name for name in NUMERIC if not isinstance(space.get(name), (int, float, type(None)))]:
            warn(f"skipping {path}: not a result file (its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} "
                 "no number)")
            continue
        curve = validation_curve(result, "fine")
        ok = is_ok(result)
        row = {
            "file": path.name,
            "tid": result.get("tid", known_tids.get(result.get("model_name"))),
            "mtime": path.stat().st_mtime,
            "status": result.get("status"),
            "error": result.get("error") if not ok else None,  # why a failed trial failed, in one line
            "pruned": bool(result.get("pruned", False)),
            "suggested_by": result.get("suggested_by"),  # enqueue, random or tpe; unknown for 2017's trials
            "fine_accuracy": result.get("fine_best_accuracy", -result["loss"]) if ok else None,
            "coarse_accuracy": result.get("coarse_best_accuracy") if ok else None,
            "test_fine_accuracy": result.get("test_fine_accuracy"),
            **{key: setting(result, key) for key in SETTINGS},
            # What the fine and coarse accuracies were measured on.
            "selected_on": setting(result, "selected_on") if ok else None,
            "val_images": setting(result, "val_images") if ok else None,
            "test_images": result.get("test_images"),
            "epochs": result.get("epochs_trained") or len(curve) or None,
            "best_epoch": result.get("best_epoch") or best_epoch(curve),
            # Where a stopped search went on with it from its backup: its epochs before and after ran in two processes.
            "resumed_after_epoch": result.get("resumed_after_epoch"),
            # What a resume may change with a warning: the budget, early stopping's patience, the widths' rounding.
            "max_epochs": setting(result, "max_epochs"),
            "patience": result.get("patience"),
            "width_multiple": width_multiple(space) if space else None,
            # What a trial cost, when, and on what: the seconds of one machine do not compare with another's.
            **{key: result.get(key) for key in COST_COLUMNS},
            "code_version": result.get("code_version"),  # the git commit that trained it: a search may outlive a version
            "fine_curve": curve,
            "coarse_curve": validation_curve(result, "coarse"),
        }
        for name in HYPERPARAMETERS:
            value = space.get(name)
            row[name] = "" if value is None else value  # nested choices: a value or empty
        as_built(row)
        rows.append(row)
    # Trial order: the recorded trial id, else when the file was written.
    rows.sort(key=lambda r: (r["tid"] is None, r["tid"] if r["tid"] is not None else r["mtime"], r["file"]))
    for number, row in enumerate(rows):
        row["trial"] = number
    return rows


def shaping(rows: list[dict]) -> list[str]:
    """The hyperparameters that shaped these trials: all, but the coarse head's weight where no trial had that head."""
    coarse = any(r["coarse_accuracy"] is not None for r in rows)
    return [name for name in HYPERPARAMETERS if coarse or name != "coarse_labels_weight"]


class Importance(NamedTuple):
    """How much a hyperparameter explains the accuracies, how likely by chance, and which way the best trials lean."""

    hyperparameter: str
    method: str  # "spearman" for numbers, "kruskal" (Kruskal-Wallis) for categories
    score: float  # beyond_chance of the correlation: at most 1, about 0 for a hyperparameter that does not matter
    p_value: float
    q_value: float
    tendency: str  # "higher did better", "lower did better", "Nadam did best, median 0.623 of 24"; in parentheses if p >= 0.05
    correlation: float  # unadjusted: |Spearman rho|, or the correlation ratio eta of the accuracies' ranks


def importance(rows: list[dict], blocks_of=exchangeable) -> list[Importance]:
    """Each hyperparameter's `Importance`, highest score first: how much of the trials' ranking it explains beyond chance.

    Both kinds are scored on the accuracies' ranks, so that a network that never learned counts as the worst and no
    more: a number by Spearman's rho, a category by the correlation ratio eta of the ranks (Kruskal-Wallis's effect
    size). A two-level category then scores exactly as a number that splits the trials alike. A category of k levels
    fits k means, so it correlates by chance alone more than a number, which fits a line: each is scored by its R² less
    what its fit explains by chance (`beyond_chance`), so that both score about 0 on average where they do not matter.

    The p-value is how often a hyperparameter unrelated to accuracy would correlate as much: the share of 9,999
    shufflings of the accuracies (all of them, for a few trials) that do, each trial's accuracy shuffled only among
    the trials drawn as it was (`blocks_of`: by default `exchangeable`). TPE's trials are not: their accuracy rises as
    TPE learns, and a hyperparameter that does not matter drifts along with the trials TPE models, so over the whole
    search the two correlate by the drift alone; a shuffle among a few neighbours keeps both drifts. In simulated TPE
    searches (bench/bench_importance.py) an unrelated hyperparameter reached p < 0.05 12.9% of the time shuffled
    across the whole search, 5.9% shuffled so. The q-value is the p-value adjusted for the number of hyperparameters
    tested at once (Benjamini-Hochberg): those with q below 0.05 hold at most 5% false discoveries on average.
    """
    from scipy.stats import false_discovery_control, rankdata

    ok = [r for r in rows if r["fine_accuracy"] is not None]  # in the order of the trials
    acc = np.array([r["fine_accuracy"] for r in ok])
    scores = []
    if len(ok) < 3:
        return scores
    names = shaping(rows)
    for name in (n for n in NUMERIC if n in names):
        shaped = [r for r in ok if r[name] is not None]  # the trials whose networks it shaped (as_built)
        values, their_acc = np.array([_number(r[name]) for r in shaped]), np.array([r["fine_accuracy"] for r in shaped])
        if len(shaped) >= 3 and np.ptp(values) > 0 and np.ptp(their_acc) > 0:
            # Spearman's rho is Pearson's r of the ranks.
            ranks = rankdata(values)
            rho, p = shuffled_p(rankdata(their_acc), blocks_of(shaped), lambda a: pearson_r(ranks, a))
            rho = round(rho, 12)  # rounding's -2e-17 for ranks that do not correlate is no lean
            tendency = "higher did better" if rho > 0 else "lower did better" if rho < 0 else "no trend"
            over = f", over the {len(shaped)} trials {RESIDUAL_ONLY[name]}" if len(shaped) < len(ok) else ""
            scores.append(Importance(name, "spearman", beyond_chance(abs(rho), len(shaped), 2), p, math.nan,
                                     leaning(tendency, p) + over, abs(rho)))
    acc_ranks, blocks = rankdata(acc), blocks_of(ok)  # every category's trials are all of them
    for name in (n for n in CATEGORICAL if n in names):
        categories = [str(r[name]) for r in ok]
        if len(set(categories)) > 1 and np.ptp(acc) > 0:
            groups = sorted(set(categories))
            members = np.array([[c == group for group in groups] for c in categories], dtype=float)
            eta, p = shuffled_p(acc_ranks, blocks, lambda a: correlation_ratio(members, a))
            # The best level by its mean rank, which the score compares, and its median: one network that never
            # learned drags a mean down, as it does not a rank.
            best = max(range(len(groups)), key=lambda i: acc_ranks[members[:, i] == 1].mean())
            theirs = acc[members[:, best] == 1]
            tendency = f"{groups[best] or 'none'} did best, median {np.median(theirs):.3f} of {len(theirs)}"
            scores.append(Importance(name, "kruskal", beyond_chance(eta, len(ok), len(groups)), p, math.nan,
                                     leaning(tendency, p), eta))
    q = false_discovery_control([i.p_value for i in scores], method="bh")
    ranked = [i._replace(q_value=float(q_value)) for i, q_value in zip(scores, q)]
    return sorted(ranked, key=lambda i: (-i.score, i.p_value))


def leaning(tendency: str, p: float) -> str:
    """Which way the better trials lean, in parentheses where chance would often give it (rho 0.002, say)."""
    return tendency if p < LEAN_P else f"({tendency})"


def mixed_settings(rows: list[dict]) -> list[str]:
    """Each setting in which the finished trials differ, with its values and their counts: such accuracies do not compare."""
    mixed = []
    for key in SETTINGS:
        counts = collections.Counter(r[key] for r in rows if r["fine_accuracy"] is not None and r[key] is not None)
        if len(counts) > 1:
            mixed.append(f"{key} " + ", ".join(f"{value} ({n})" for value, n in sorted(counts.items(), key=str)))
    return mixed


def selection_set(rows: list[dict]) -> str:
    """What the finished trials were selected on: "validation", "test" (2017's, --select-on test), or both."""
    return " or ".join(sorted({r["selected_on"] for r in rows if r["fine_accuracy"] is not None})) or "validation"


def print_leaderboard(rows: list[dict], top: int) -> None:
    ok = best_first(rows)[:top]
    failed = sum(r["status"] != "ok" for r in rows)
    if not ok:
        print(f"No trial finished: {plural(len(rows), 'trial')}, {failed} failed.")
        return
    # The hyperparameters that vary most among the leaders, relative to their spread in the whole search.
    spread = []
    for name in shaping(rows):
        if name in CATEGORICAL:
            everyone, leaders = category_spread([r[name] for r in rows]), category_spread([r[name] for r in ok])
        else:
            everyone = np.std([_number(r[name]) for r in rows if r[name] is not None])
            numbers = [_number(r[name]) for r in ok if r[name] is not None]
            leaders = np.std(numbers) if numbers else 0.0
        spread.append((leaders / everyone if everyone > 0 else 0.0, name))
    varying = [name for ratio, name in sorted(spread, reverse=True)[:4] if ratio > 0]
    print(leaderboard_title(len(ok), rows))

    def short(v):  # "-": of residual units that the network lacks
        return f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v if v != "" else "none")

    sized = any(r["n_params"] for r in ok)  # each network's size, where the results counted it (not 2017's)
    print(leaderboard_header("  ".join([PARAMS_HEADER] * sized + varying)))
    for rank, r in enumerate(ok, 1):
        print(leaderboard_row(rank, r["trial"], r["fine_accuracy"], r["coarse_accuracy"], r["test_fine_accuracy"], r["epochs"],
                              r["pruned"], "  ".join([params_cell(r["n_params"])] * sized
                                                     + [f"{short(r[n]):>{len(n)}}" for n in varying])))


def category_spread(values: list) -> float:
    """A category's spread on a number's scale: the square root of the chance that two of its values differ (Gini-Simpson),
    which for two levels is sqrt(2) times the standard deviation of a 0/1 variable; 0 where all share one level."""
    if not values:
        return 0.0
    shares = np.unique([str(v) for v in values], return_counts=True)[1] / len(values)
    return float(np.sqrt(1 - (shares ** 2).sum()))


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["trial", "tid", "file", "status", "error", "pruned", "suggested_by", "fine_accuracy", "coarse_accuracy", "test_fine_accuracy",
               *SETTINGS, "val_images", "test_images", "epochs", "best_epoch", "resumed_after_epoch", "max_epochs", "patience", "width_multiple",
               *COST_COLUMNS, "code_version", *HYPERPARAMETERS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def axis_kinds(rows: list[dict]) -> dict[str, str]:
    """How the plots draw each hyperparameter that shaped these trials: "category", "log" (log-uniform in the space) or "number"."""
    return {name: "category" if name in CATEGORICAL else "log" if name in LOG_UNIFORM else "number" for name in shaping(rows)}


def _number(value) -> float:
    """A numeric hyperparameter's value; none (a nested choice's None) as 0: "no residual units", "no second FC layer".

    Not for None: a hyperparameter that shaped nothing of the trial's network (as_built) has no value."""
    return 0.0 if value == "" else float(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    if Path(args.results_dir).is_file():
        print(f"error: --results-dir {args.results_dir} is a file: give the folder of the search's result files", file=sys.stderr)
        return 2
    if not Path(args.results_dir).is_dir():
        print(f"error: no results folder {args.results_dir}/; run hyperopt_optimize.py first", file=sys.stderr)
        return 2
    if args.trials_file and not Path(args.trials_file).exists():
        print(f"error: no trials pickle {args.trials_file}", file=sys.stderr)
        return 2
    pickles = [args.trials_file or trials_file_for(args.results_dir), Path(args.results_dir) / "results.pkl"]
    rows = load_trials_table(args.results_dir, pickles)
    if not rows:
        print(f"error: no result files in {args.results_dir}/; run hyperopt_optimize.py first", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        check_writable(out)
    except OSError as err:
        print(f"error: cannot write to {out}/: {err}", file=sys.stderr)
        return 2
    if mixed := mixed_settings(rows):
        warn(f"{args.results_dir}/ holds trials of more than one search, whose accuracies do not compare: "
             f"{'; '.join(mixed)}. Keep each search in its own --results-dir")
    from analysis_plots import p_text, plot_all  # matplotlib: after the checks, so that they answer at once

    if holder := RunLock(args.results_dir).holder_now():
        print(f"A search is running on {args.results_dir}/ ({holder}): these are its finished trials so far.\n")
    print_leaderboard(rows, args.top)
    for note in (standard_errors(rows), within_one_standard_error(rows, args.results_dir), size_note(rows),
                 budget_note(rows, args.top), suggestions_note(rows, args.top), *(mixed_note(rows, name) for name in MIXED),
                 failures_note(rows)):
        if note:
            print(note)
    if retrained := retrains_table(rows, args.results_dir, args.weights_dir):
        print("\n" + "\n".join(retrained))
    ranked = importance(rows)
    n_ok = sum(r["fine_accuracy"] is not None for r in rows)
    n_pruned = sum(r["fine_accuracy"] is not None and r["pruned"] for r in rows)
    counted = plural(n_ok, "trial") + (f", {n_pruned} of them pruned at their accuracy when stopped" if n_pruned else "")
    split = selection_set(rows)
    if n_ok < 3:
        print(f"\nWhat explains {split} fine accuracy: too few finished trials to say ({counted}; it takes 3)")
    elif not ranked:  # networks that never learn, say: each at chance, whatever its hyperparameters
        reached = {r["fine_accuracy"] for r in rows if r["fine_accuracy"] is not None}
        why = f"every one reached {reached.pop():.4f}" if len(reached) == 1 else "no hyperparameter varies among them"
        print(f"\nWhat explains {split} fine accuracy over {counted}: nothing to say, {why}")
    else:
        print(f"\nWhat explains {split} fine accuracy over {counted} (score: the share of the trials' ranking it explains "
              "beyond chance, an adjusted R² of Spearman's rho for numbers, of Kruskal-Wallis for categories; p: the chance "
              "of so high a correlation from a hyperparameter that does not matter, among trials drawn alike; q: p adjusted "
              f"for testing {len(ranked)} at once):")
    for name, method, score, p, q, tendency, _ in ranked:
        print(f"  {name:24} {method:8} {score:6.3f}  p {p_text(p):7}  q {p_text(q):7}  {tendency}")
    try:
        with open(out / "importance.csv", "w", newline="") as f:
            csv.writer(f).writerows([Importance._fields, *ranked])
        write_csv(rows, out / "trials.csv")
        written = plot_all(rows, ranked, axis_kinds(rows), out, args.top, split) if n_ok else []
    except OSError as err:  # a full disk, a file's name taken by a folder
        print(f"error: cannot write the analysis: {err}", file=sys.stderr)
        return 1
    if not written:
        print(f"\nWrote {out / 'trials.csv'} and {out / 'importance.csv'}; no plots without a finished trial")
        return 0
    print(f"\nWrote {out / 'trials.csv'}, {out / 'importance.csv'} and {len(written)} plots: "
          + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    run(main)
