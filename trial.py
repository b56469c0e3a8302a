"""One trial of the search: train the network of a sampled point, marked while it trains (and backed up: trial_backup);
its line in the log once saved, and when failures in a row stop the search.

`Objective` is what hyperopt calls with each point, in the search's process or, under Spark, on a worker.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path

from cli import duration, memory, plural
from utils import failure_cause, to_json, validation_curve, weights_seed


def report(line: str) -> None:
    """Print a line without tearing hyperopt's progress bar, in one write.

    tqdm.write writes a line and its end apart; Spark's workers write unbuffered to one stream, where two trials starting
    at once then merged their lines.
    """
    from tqdm import tqdm

    tqdm.write(line + "\n", end="")


class Objective:
    """Train one sampled network; hyperopt minimises the returned `loss`.

    Picklable, so that Spark can ship it to a worker when a trial starts: `finished_curves` is
    then a snapshot of the finished trials known at that moment (for median pruning), and `data`
    Spark's broadcast of the dataset, which each executor fetches once.
    """

    def __init__(self, data, args: argparse.Namespace, parallelism: int | None = None):
        from trial_backup import backup_file

        self.data = data
        self.settings = {k: getattr(args, k) for k in ("epochs", "patience", "prune", "verbose", "precision", "seed", "space")}
        # A .npz is recorded by its name (what a resume compares) and here by its path, which the retrain opens.
        self.dataset_file = os.path.abspath(args.dataset) if args.dataset.endswith(".npz") else None
        self.parallelism = parallelism
        self.finished_curves: list[list[float]] = []
        self.next_tid = 0
        self.enqueued: list[tuple[dict, str]] = []  # (point, --enqueue's name for it), to label its trial
        self.code_version: str | None = None  # the search's: a Spark worker gets the modules alone, no repository
        # One trial at a time in this process: the file that marks the trial training (running_trial_file), and the
        # trial that the last run was training when its process died (cut_short).
        self.running_file: Path | None = None if parallelism else running_trial_file(args.results_dir)
        self.cut_short: dict | None = None
        # And the file that backs the trial training up (trial_backup), the backup of the trial that the last run
        # stopped in (to resume, once), and how the trial about to train was suggested, which a backup records.
        self.backup_file: Path | None = None if parallelism else backup_file(args.results_dir)
        self.resumable = None
        self.suggested_by: str | None = None
        self.running_backup = None  # the trial's backup (trial_backup.TrialBackup) while it trains, which a stop writes

    def __call__(self, space: dict) -> dict:
        data = self.data
        if self.parallelism:
            from spark_search import prepare_worker

            prepare_worker(self.parallelism)
            data = self.data.value
        from precision import resolve_precision

        s = self.settings
        started = time.time()
        # What a backup records of the trial, and what one must match to be resumed.
        point, precision = json.loads(to_json(space)), resolve_precision(s["precision"])
        restore = self.restorable(point, precision)
        # Marked before its line is written, which a kill may follow at once.
        result = self.mark_running(space, started, data, restore.epochs if restore else 0) if self.running_file else None
        report(self.first_line(None if self.parallelism else self.next_tid, space, started, data.has_coarse, restore))
        if result is None:
            result, restore = self.train(space, data, point, precision, restore)
            if restore:
                result["resumed_after_epoch"] = restore.epochs
                started = restore.progress.started
        result["search_space"], result["patience"] = s["space"], s["patience"]
        result["seed"] = s["seed"]  # of the validation split, which every trial is compared on
        result["code_version"] = self.code_version
        result["started"] = local_time(started)
        if self.dataset_file:
            result["dataset_file"] = self.dataset_file
        return result

    def train(self, space: dict, data, point: dict, precision: str, restore=None) -> tuple[dict, object]:
        """Train the network of `space` (`point`, as results record it), from its backup `restore` on if given: its
        result, and the backup it went on from; a backup that does not fit the network as this code builds it (code
        changed outside a git checkout) is warned about and removed, and the trial trains anew."""
        import keras

        from neural_net import build_and_train
        from pruning import MONITOR, MedianStoppingRule

        s = self.settings
        earlier = restore.progress.history.get(MONITOR, []) if restore else []
        callbacks = [MedianStoppingRule(self.finished_curves, earlier=earlier)] if s["prune"] == "median" else []
        backup = self.running_backup = self.backup(point, precision, restore) if self.backup_file else None
        model, result = build_and_train(
            space, data, epochs=s["epochs"], callbacks=callbacks + ([backup] if backup else []), patience=s["patience"],
            verbose=s["verbose"], precision=s["precision"],
            seed=weights_seed(s["seed"], space), before=restore.progress if restore else None,
        )
        self.running_backup = None
        del model
        keras.backend.clear_session()
        if backup and backup.discarded_unfit():
            return self.train(space, data, point, precision)
        return result, restore

    def restorable(self, point: dict, precision: str):
        """The backup of the trial that the last run stopped in (trial_backup.Backup), if it trains the network of
        `point` (as results record it) in this run's `precision` and code: to resume once; else None."""
        backup, self.resumable = self.resumable, None
        if backup is None or backup.space != point:
            return None
        now = {"precision": precision, "code version": self.code_version}
        if changed := [f"{what} {backup_value} (now {now[what]})" for what, backup_value in
                       (("precision", backup.precision), ("code version", backup.code_version)) if backup_value != now[what]]:
            from utils import warn

            warn(f"trial {backup.tid}'s backup after epoch {backup.epochs} trained with {', '.join(changed)}: it starts anew")
            return None
        return backup

    def backup(self, point: dict, precision: str, restore):
        """The callback that backs this trial of `point` up as it trains (trial_backup.TrialBackup), from `restore` on if
        it resumes."""
        from trial_backup import TrialBackup

        # How it was suggested: a resumed trial, as in the run that it stopped in (suggestions.suggesting_first).
        identity = {"tid": self.next_tid, "space": point, "suggested_by": self.suggested_by, "precision": precision,
                    "code_version": self.code_version}
        return TrialBackup(self.backup_file, identity, restore)

    def mark_running(self, space: dict, started: float, data, from_epoch: int = 0) -> dict | None:
        """Mark this trial as training (from its backup's epoch `from_epoch`), with the runs before whose process died
        training the same network since its last backup; where DEATHS_TO_FAIL did, its failure instead: a network that
        kills the process in a run's first trial, or in a trial that a resume goes on with, would come back at every
        resume. A run that died after it backed the trial up made progress, which a preempted machine's does."""
        from neural_net import failure
        from utils import atomic_write, warn

        point = json.loads(to_json(space))
        cut_short = self.cut_short if self.cut_short and self.cut_short.get("space") == point else None
        died = cut_short["started"] if cut_short and from_epoch <= cut_short.get("from_epoch", 0) else []
        if len(died) >= DEATHS_TO_FAIL:
            err = ProcessDied(f"the search's process died while this network trained, in {len(died)} runs (started "
                              f"{', '.join(died)}): killed, out of the host's memory, or crashed in native code; "
                              "recorded as failed, not trained again")
            return failure(space, data, err) | {"max_epochs": self.settings["epochs"]}
        marked = {"tid": self.next_tid, "space": point, "started": [*died, local_time(started)], "from_epoch": from_epoch}
        try:
            atomic_write(self.running_file, to_json(marked).encode())
        except OSError as err:  # a full disk: the trial trains, and its save says so if it cannot be written either
            warn(f"cannot mark trial {self.next_tid} as training ({err}): were it to kill the process, a resume could not "
                 "tell")
        return None

    def first_line(self, tid: int | None, space: dict, started: float, coarse_head: bool, restore=None) -> str:
        """A trial's first line: when it started (in a log of days, what its seconds alone do not tell), which trial it
        is (None on a Spark worker, which cannot know), from which epoch it resumes (`restore`) and what it trains."""
        from hyperspace import describe

        label = "A trial" if tid is None else f"Trial {tid}"
        if name := next((name for point, name in self.enqueued if point == space), None):
            label += f" (--enqueue {name})"
        if restore:
            label += f", resumed after epoch {restore.epochs} (its backup of {restore.saved})"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        return f"{when} {label}, up to {plural(self.settings['epochs'], 'epoch')}: {describe(space, coarse_head=coarse_head)}"


RUNNING_FILE = ".running_trial"  # in the results folder, while a trial of a one-at-a-time search trains
DEATHS_TO_FAIL = 2  # runs that died training one network, after which it is recorded as failed


class ProcessDied(Exception):
    """The search's process died while a trial trained: a SIGKILL, the host's out-of-memory killer, a crash in C."""


def running_trial_file(results_dir: str) -> Path:
    """The file that marks the trial training now; a clean stop removes it, so that a run that died leaves it behind."""
    return Path(results_dir) / RUNNING_FILE


def trial_cut_short(results_dir: str, saved_tids: set[int]) -> dict | None:
    """The trial that the search's last run was training when its process died, unsaved: its tid, point (`space`) and
    the times that runs started it (`started`); None where the last run stopped cleanly."""
    try:
        marked = json.loads(running_trial_file(results_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marked, dict) or not isinstance(tid := marked.get("tid"), int) or tid in saved_tids:
        return None  # not such a mark, or its trial was saved before the process died
    started = marked.get("started")
    if not isinstance(started, list) or not started or not all(isinstance(t, str) for t in started):
        return None
    return marked


def cut_short_line(marked: dict, backed_up_epochs: int | None = None) -> str:
    """What a resume says of the trial that the last run's process died training, which its backup (if of that trial)
    holds `backed_up_epochs` of."""
    runs = len(marked["started"])
    said = (f"The last run's process died while trial {marked['tid']} trained (started {marked['started'][-1]}): killed, "
            f"out of the host's memory (`dmesg` names the out-of-memory killer's victims), or crashed in native code (the "
            f"end of its log says where); ")
    if backed_up_epochs is not None and backed_up_epochs > marked.get("from_epoch", 0):
        return said + f"it had backed the trial up after epoch {backed_up_epochs}, which the search goes on from"
    again = "it is recorded as failed, not trained again" if runs >= DEATHS_TO_FAIL else "it trains once more"
    return said + (f"{'it died so ' + plural(runs, 'time') + ' on that network: ' if runs > 1 else ''}if the search "
                   f"suggests its network again, {again}")


def local_time(seconds: float) -> str:
    """A moment (seconds since the epoch) as results record it: local time to the second, with its UTC offset."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def code_version(folder: str | None = None) -> str | None:
    """The git commit of the code in `folder` (by default this project's), with `-dirty` where its tracked files were
    changed since; None outside a git checkout, or without git."""
    import subprocess

    folder = folder or os.path.dirname(os.path.realpath(__file__))
    try:
        # Without the index's lock, which a git command of the user's may hold at that moment.
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=folder,
                                   capture_output=True, text=True, timeout=30, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    if described.returncode != 0:
        return None
    return described.stdout.strip() or None


def trial_line(result: dict, best_loss: float | None, select_on: str) -> str:
    """A saved trial's line in the log: its accuracies (on `select_on`), epochs and time, and the best so far (`best_loss`)."""
    best = "none yet" if best_loss is None else f"{-best_loss:.4f}"
    if result.get("status") != "ok":
        epochs = result.get("epochs_trained")
        curve = validation_curve(result)
        got = f" after {plural(epochs, 'epoch')} (best {max(curve):.4f})" if epochs and curve else ""
        return (f"Trial {result['tid']} FAILED{got}: {result.get('error')} ({result.get('train_seconds', 0):.0f} s); "
                f"best so far {best}")
    coarse = result.get("coarse_best_accuracy")
    coarse_text = "n/a" if coarse is None else f"{coarse:.4f}"
    return (f"Trial {result['tid']}: fine {result['fine_best_accuracy']:.4f} / coarse {coarse_text} {select_on} accuracy, "
            f"{how_it_stopped(result)}, {result['train_seconds']:.0f} s; best so far {best}")


FAILURES_IN_A_ROW = 3
# TensorFlow's, JAX's and Python's out-of-memory errors.
OUT_OF_MEMORY = re.compile(r"\bOOM\b|out of memory|RESOURCE_EXHAUSTED|^MemoryError\b", re.IGNORECASE)


def repeated_failure(results: list[dict]) -> str | None:
    """Why the search stops after these results, in trial order: its last trials failed in a row of one cause, unless
    each ran out of memory with a network that outgrew every one that trained on its device; or None."""
    errors = [result.get("error") or "" for result in results[-FAILURES_IN_A_ROW:]]
    if len(errors) < FAILURES_IN_A_ROW or not all(errors) or len({failure_cause(error) for error in errors}) > 1:
        return None
    reason = f"{FAILURES_IN_A_ROW} trials in a row failed with: {errors[-1]}"
    if OUT_OF_MEMORY.search(errors[-1]):
        if all(outgrew_the_trained(failed, results) for failed in results[-FAILURES_IN_A_ROW:]):
            return None  # networks too large for the device, which TPE learns to avoid: not a device that others hold
        # Python's own MemoryError is the host's, whatever trains the networks.
        on_cpu = errors[-1].startswith("MemoryError") or str(results[-1].get("device", "")).startswith("CPU")
        device = "this machine" if on_cpu else "the GPU"
        reason += f"; does another process hold {device}'s memory ({'free -h' if on_cpu else 'nvidia-smi'})"
        trained = trained_on_its_device(results[-1], results)
        reason += "?" if trained else f", or is {device} too small for these networks (none has trained on it yet)?"
    return reason


def activation_bytes(per_image: int, batch_size: int, precision: str) -> int:
    """The bytes a training step keeps for its backward pass: activations per image times the batch, in bfloat16's or
    float16's 2 bytes under mixed precision, else float32's 4."""
    return per_image * batch_size * (2 if precision.startswith("mixed") else 4)


def step_bytes(result: dict) -> int | None:
    """A trial's activation_bytes; None where its result does not record them (2017's, or a network that failed before
    it was built)."""
    per_image = result.get("activations_per_image")
    if not per_image:
        return None
    return activation_bytes(per_image, int(result["space"]["batch_size"]), str(result.get("precision")))


def trained_on_its_device(failed: dict, results: list[dict]) -> list[dict]:
    """The results of the trials that trained on the device where `failed` failed."""
    return [r for r in results if r.get("status") == "ok" and r.get("device") == failed.get("device")]


def largest_trained(failed: dict, results: list[dict]) -> int | None:
    """The most bytes (step_bytes) that a trial's step needed of those that trained on the failed trial's device."""
    return max(filter(None, map(step_bytes, trained_on_its_device(failed, results))), default=None)


def outgrew_the_trained(failed: dict, results: list[dict]) -> bool:
    """Whether a failed trial's step needed more than that of every trial that trained on its device: then its
    out-of-memory is its own size's, not memory that another process holds (which fails smaller networks too)."""
    needed, most = step_bytes(failed), largest_trained(failed, results)
    return needed is not None and most is not None and needed > most


def outgrown_note(failed: dict, results: list[dict]) -> str | None:
    """What an out-of-memory failure's line adds where its network outgrew every one that trained on its device."""
    if not OUT_OF_MEMORY.search(failed.get("error") or "") or not outgrew_the_trained(failed, results):
        return None
    return (f"its step's activations ({memory(step_bytes(failed))}) outgrow those of every network that trained on this "
            f"device ({memory(largest_trained(failed, results))} at most): failures like it do not stop the search")


def pace(saved: int, max_evals: int | None, done_here: int, seconds_here: float, seconds_left: float | None) -> str | None:
    """Where a search stands against --max-evals and --max-hours, after `done_here` trials of this run took `seconds_here`
    (wall time, so that trials at once on Spark count as they run); `seconds_left` until no trial starts. None without either."""
    hours = None if seconds_left is None else (
        f"no trial starts after {duration(seconds_left)} more (--max-hours)" if seconds_left > 0 else "--max-hours is up")
    if max_evals is None:
        return hours
    text = f"{saved} of {max_evals} trials"
    if saved >= max_evals or not done_here or seconds_here < 1:  # nothing trained yet to pace it by
        return text
    to_go = seconds_here / done_here * (max_evals - saved)
    if seconds_left is not None and seconds_left < to_go:
        return f"{text}; {hours}"
    return f"{text}, about {duration(to_go)} to go at this run's pace"


def how_it_stopped(result: dict) -> str:
    """A finished training's epochs: its best one, and why it ended before its budget (pruned, diverged, early stopping)."""
    trained, diverged = result["epochs_trained"], result.get("diverged_at_epoch")
    text = f"best epoch {result['best_epoch']} of {trained}" if result.get("best_epoch") else plural(trained, "epoch")
    if result.get("pruned"):
        text += ", pruned"
    if diverged:
        text += f", diverged in epoch {diverged}"
    elif not result.get("pruned") and trained < result.get("max_epochs", trained):
        text += ", stopped early"  # --patience epochs without a better one
    return text
