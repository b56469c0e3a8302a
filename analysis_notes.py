"""What to make of a search's best trials: how closely their accuracies are measured, which others are as good, which
networks no smaller one beats, whether their epoch budget was short, how many of them TPE suggested, which versions of
the code, of Keras and its backend, devices and precisions trained them, how they fared when retrained; and why trials
failed."""

from __future__ import annotations

import math
import os
from operator import itemgetter

from cli import parameters, plural
from utils import failure_cause


def best_first(rows: list[dict]) -> list[dict]:
    """The finished trials, the highest fine accuracy first (the earlier trial first among equals)."""
    return sorted((r for r in rows if r["fine_accuracy"] is not None), key=lambda r: -r["fine_accuracy"])


def standard_errors(rows: list[dict]) -> str | None:
    """How closely the best trial's fine accuracies are measured: one binomial standard error each, where known."""
    if not (ok := best_first(rows)):
        return None
    best = ok[0]
    if not best["val_images"]:
        return None  # a result of a version that did not record its image counts

    def measured(split: str, accuracy: float, n: int) -> str:
        return f"{split} {accuracy:.4f} of {n:,} images ±{math.sqrt(accuracy * (1 - accuracy) / n):.4f}"

    parts = [measured(best["selected_on"], best["fine_accuracy"], best["val_images"])]
    if best["selected_on"] != "test" and best["test_fine_accuracy"] is not None and best["test_images"]:
        parts.append(measured("test", best["test_fine_accuracy"], best["test_images"]))
    fair = "; the test figure, measured once, does not" if len(parts) == 2 else ""
    return (f"Trial {best['trial']}'s fine accuracy, one standard error: {', '.join(parts)}. The {best['selected_on']} figure, "
            f"the highest of many epochs and trials on those images, reads high{fair}.")


def within_one_standard_error(rows: list[dict], results_dir: str) -> str | None:
    """The other trials whose fine accuracy is within one standard error of the best's, and the smallest network among
    them all, which the one-standard-error rule (Breiman et al., 1984) would choose: on these images they do not differ."""
    ok = best_first(rows)
    if not ok or not ok[0]["val_images"]:
        return None
    best = ok[0]
    low = best["fine_accuracy"] - math.sqrt(best["fine_accuracy"] * (1 - best["fine_accuracy"]) / best["val_images"])
    close = [r for r in ok[1:] if r["fine_accuracy"] >= low]
    if not close:
        return f"No other trial is within one standard error of it ({low:.4f} and up)."
    listed = ", ".join(f"{r['trial']} ({r['fine_accuracy']:.4f})" for r in close[:5])
    which = "is trial" if len(close) == 1 else "are trials" if len(close) <= 5 else f"are {len(close)} trials, the best of them"
    note = f"Within one standard error of it ({low:.4f} and up) {which} {listed}."
    if any(not r["n_params"] for r in (best, *close)):
        return note
    smallest = min((best, *close), key=lambda r: r["n_params"])
    if smallest is best:
        return f"{note} Trial {best['trial']} is also the smallest network of them."
    return (f"{note} The one-standard-error rule takes the smallest network of them: trial {smallest['trial']}, "
            f"{smallest['n_params']:,} parameters against {best['n_params']:,} (retrain it with --result "
            f"{os.path.join(results_dir, smallest['file'])}).")


FRONT_SHOWN = 8  # the most accurate networks of the front named in the analysis's output; the plot has them all


def cheapest_for_accuracy(rows: list[dict], cost: str) -> list[dict]:
    """The trials that ran their course which no other beats at no more `cost` (trials.csv's n_params or train_seconds),
    the cheapest first; none where one of them did not record it.

    A pruned trial is left out: its accuracy is where it stopped, not what its network reaches."""
    ran = [r for r in rows if r["fine_accuracy"] is not None and not r["pruned"]]
    if not ran or any(not r[cost] for r in ran):
        return []
    front, best = [], -math.inf
    for r in sorted(ran, key=lambda r: (r[cost], -r["fine_accuracy"], r["trial"])):
        if r["fine_accuracy"] > best:
            front.append(r)
            best = r["fine_accuracy"]
    return front


def size_note(rows: list[dict]) -> str | None:
    """The networks that no smaller one beats in fine accuracy, from the most accurate down: what each step in accuracy
    cost in parameters."""
    front = cheapest_for_accuracy(rows, "n_params")
    if len(front) < 2:
        return None  # no parameter count recorded (2017's results), or the most accurate network is the smallest too
    ran = sum(r["fine_accuracy"] is not None and not r["pruned"] for r in rows)
    shown = front[::-1][:FRONT_SHOWN]
    listed = ", ".join(f"trial {r['trial']} {r['fine_accuracy']:.4f} with {parameters(r['n_params'])}" for r in shown)
    if rest := front[:-FRONT_SHOWN]:
        listed += f", and {len(rest)} smaller, of {rest[-1]['fine_accuracy']:.4f} or less"
    return (f"The networks that no smaller one beats, of the {plural(ran, 'trial')} that ran their course (parameters; "
            f"cost_vs_accuracy.png): {listed}.")


def budget_note(rows: list[dict], top: int) -> str | None:
    """Whether the best trials were still improving when their --epochs ran out, which a larger budget may raise."""
    leaders = best_first(rows)[:top]

    def last_epochs(r: dict) -> int:  # those where a peak means it was still improving: early stopping's, else a tenth
        return r["patience"] if r["patience"] and r["patience"] < r["max_epochs"] else max(1, r["max_epochs"] // 10)

    improving = [r for r in leaders if not r["pruned"] and r["max_epochs"] and r["best_epoch"]
                 and r["epochs"] == r["max_epochs"] and r["best_epoch"] > r["max_epochs"] - last_epochs(r)]
    if not improving:
        return None
    budgets = {(last_epochs(r), r["max_epochs"]) for r in improving}
    if len(budgets) == 1:
        window, budget = next(iter(budgets))
        where = f"in the last {'epoch' if window == 1 else f'{window} epochs'} of {budget}"
    else:  # a resume changed --epochs or --patience
        where = "in their last --patience epochs of --epochs (the last tenth where early stopping could not end them)"
    return (f"Their budget may have been short: {len(improving)} of the {len(leaders)} best trials peaked {where}; "
            "a larger --epochs may raise them.")


def suggestions_note(rows: list[dict], top: int) -> str | None:
    """How many of the best trials TPE suggested, and how many were random draws or enqueued, against the whole search's."""
    ok = best_first(rows)
    if not any(r["suggested_by"] == "tpe" for r in ok):
        return None  # all random draws (--algo random, a short search), or not recorded (2017's)
    leaders = ok[:top]
    kinds = [("tpe", "TPE suggestions"), ("random", "random draws"), ("enqueue", "enqueued points"), (None, "unmarked trials")]
    parts = []
    for by, what in kinds:
        if of := sum(r["suggested_by"] == by for r in ok):
            whose = "its" if parts else "the search's"
            parts.append(f"{sum(r['suggested_by'] == by for r in leaders)} of {whose} {of} {what}")
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"The {len(leaders)} best trials hold {listed}."


def software(row: dict) -> str | None:
    """The Keras and backend that trained a trial, as one value: `Keras 3.15.1 on tensorflow 2.21.0`."""
    if not row["keras_version"]:
        return None  # 2017's results record none
    return " ".join(filter(None, (f"Keras {row['keras_version']} on", row["keras_backend"], row["backend_version"])))


# That a resume may change, which may weigh on the trials' figures: what it is, trials.csv's columns, a trial's value.
MIXED = {"code_version": ("versions of the code", "code_version", itemgetter("code_version")),
         "software": ("versions of Keras and its backend", "keras_version, keras_backend, backend_version", software),
         "device": ("devices", "device", itemgetter("device")),
         "precision": ("precisions", "precision", itemgetter("precision"))}


def mixed_note(rows: list[dict], name: str) -> str | None:
    """Which values of a MIXED `name` (the code's commit, Keras and its backend, the device, the precision) the trials
    ran on, where more than one: a resume on another machine or with newer software."""
    what, columns, value_of = MIXED[name]
    trials_of: dict[str, list[int]] = {}
    for r in rows:
        if value := value_of(r):
            trials_of.setdefault(value, []).append(r["trial"])
    if len(trials_of) < 2:
        return None
    values = [f"{value} from trial {trials[0]} ({plural(len(trials), 'trial')})" for value, trials in trials_of.items()]
    text = f"The trials ran on {len(trials_of)} {what} (trials.csv's {columns}): {', '.join(values)}"
    if unrecorded := sum(not value_of(r) for r in rows):
        text += f", and {unrecorded} that {'records' if unrecorded == 1 else 'record'} none"
    if ok := best_first(rows):
        text += f"; the best, trial {ok[0]['trial']}, on {value_of(ok[0]) or 'an unrecorded one'}"
    return text + "."


def retrains_table(rows: list[dict], results_dir: str, weights_dir: str) -> list[str]:
    """The retrains in `weights_dir` of this search's trials: per trial and training, the draws of its weights, and their
    best fine accuracies (mean ± standard deviation over the draws); no lines where none was retrained."""
    from pathlib import Path

    from retrains import draws_of_one_training, mean_and_spread

    trial_of = {(Path(results_dir) / r["file"]).resolve(): r["trial"] for r in rows}
    found = []
    for draws in draws_of_one_training(weights_dir).values():
        trials = {trial_of.get(Path(d["retrained_from"]).resolve()) for d in draws} - {None}
        if trials:  # two trials of one network and settings are one training
            found.append((min(trials), draws))
    if not found:
        return []

    def spread(draws: list[dict], key: str) -> str:
        return mean_and_spread([d[key] for d in draws])

    lines = [f"Retrained in {weights_dir}/ (best fine accuracy; over several draws of the weights, mean ± standard deviation):",
             f"{'trial':>5} {'draws':>5} {'images':>7} {'epochs':>6}  {'validation':16}  test"]
    for trial, draws in sorted(found, key=lambda f: (f[0], f[1][0]["train_images"] or 0, f[1][0]["max_epochs"] or 0)):
        first = draws[0]
        validation = spread(draws, "fine_best_accuracy") if first["selected_on"] == "validation" else "-"
        lines.append(f"{trial:>5} {len(draws):>5} {first['train_images'] or 0:>7,} {first['max_epochs'] or '-':>6}  "
                     f"{validation:16}  {spread(draws, 'test_fine_accuracy')}")
    return lines


FAILURE_CAUSES_SHOWN = 10  # the commonest; trials.csv has every trial's error


def failures_note(rows: list[dict]) -> str | None:
    """Why trials failed: each cause (its numbers aside), an error of it, how many trials and which."""
    trials_of: dict[str, list[tuple[int, str]]] = {}  # cause: (trial, error) of each trial it failed
    for r in rows:
        if r["status"] != "ok":
            error = r["error"] or "no error recorded"
            trials_of.setdefault(failure_cause(error), []).append((r["trial"], error))
    if not trials_of:
        return None
    lines = [f"Why {plural(sum(map(len, trials_of.values())), 'trial')} failed (their result files hold each traceback):"]
    causes = sorted(trials_of.values(), key=len, reverse=True)
    for failed in causes[:FAILURE_CAUSES_SHOWN]:
        error = failed[-1][1]
        numbers = ", ".join(str(trial) for trial, _ in failed[:8]) + (", ..." if len(failed) > 8 else "")
        lines.append(f"  {len(failed):4}  {error if len(error) <= 160 else error[:157] + '...'}  "
                     f"({'trial' if len(failed) == 1 else 'trials'} {numbers})")
    if rest := causes[FAILURE_CAUSES_SHOWN:]:
        lines.append(f"  {sum(map(len, rest)):4}  more, of {plural(len(rest), 'other cause')} (trials.csv's error column)")
    return "\n".join(lines)
