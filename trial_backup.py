"""A training backed up as it trains: a trial of a one-at-a-time search, or a retrain. Stopped in the middle (Ctrl-C,
the SIGTERM that ends a cluster's time slot, a kill), it goes on from its last backup when it resumes, as the unbroken
training would have (the same batches, flips and dropout masks): the search trains that trial first, the retrain's
same command goes on with it.

The backup is one file, written atomically at the end of an epoch once BACKUP_EVERY_S seconds have gone by since the
training started or was last backed up, and as it stops (Ctrl-C, SIGTERM), from the epoch's end it keeps in memory every
SNAPSHOT_EVERY_S: the model's and its optimizer's variables, its random layers' states, the best epoch's weights, the
epochs' history, and which trial of which network it is. A retrain's best model is written with it.
The search removes the backup once its trial is saved, the retrain once it ends.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from pruning import MONITOR, Progress
from trial import local_time
from utils import replacing, warn

BACKUP_FILE = ".trial_backup.npz"
# A backup of the 2017 best network (7.1 M parameters: its weights, Adam's two moments and the best epoch's weights,
# 113 MB) took 0.17 s to write on a 2-core CPU, and the space's largest network's (353 MB) 0.6 s (bench/bench_backup.py):
# every 5 minutes, it costs a trial at most 0.2% of its time, and a stop loses at most 5 minutes and an epoch of training.
# Backed up after every epoch (0.35 s with Keras's BackupAndRestore), with each better epoch's model written (0.4 s), a
# retrain of that network on a GPU, whose epoch takes about a second, spent most of its time writing.
BACKUP_EVERY_S = 300.0
# And it keeps the state of an epoch's end in memory every minute, which a stop that Python sees (Ctrl-C, SIGTERM)
# writes as it stops (`flush`): such a stop loses at most a minute and an epoch, a kill what the last backup leaves.
# Keeping it (a copy of the variables) took 0.06 s for the 2017 best network on a 2-core CPU and 0.12 s for the space's
# largest: 0.1-0.2% of a trial's time.
SNAPSHOT_EVERY_S = 60.0
UNREADABLE = (ValueError, KeyError, TypeError, zipfile.BadZipFile)  # what a torn or foreign backup file raises


@dataclasses.dataclass
class Backup:
    """A training as its last backup holds it."""

    tid: int | None  # the trial's; None for a retrain
    space: dict  # the network, as results record it
    suggested_by: str | None
    precision: str
    code_version: str | None
    saved: str  # when, in local time
    progress: Progress  # its epochs' history, its best epoch's weights, its seconds, when it first started
    weights: list[np.ndarray]  # the model's variables after its last backed-up epoch
    optimizer: list[np.ndarray]  # its optimizer's
    seeds: list[np.ndarray]  # its random layers' (dropout, flip): their next masks are those an unbroken training draws

    @property
    def epochs(self) -> int:
        return len(self.progress.history[MONITOR])


def backup_file(results_dir: str | Path) -> Path:
    """The file that backs up the trial that a one-at-a-time search trains."""
    return Path(results_dir) / BACKUP_FILE


def backed_up(results_dir: str | Path) -> dict | None:
    """What the backup in a results folder says of its trial (tid, epochs, saved...), without reading its variables;
    None where there is none or it cannot be read."""
    try:
        with np.load(backup_file(results_dir)) as stored:
            state = json.loads(str(stored["state"]))
        return state | {"epochs": len(state["history"][MONITOR])}
    except (OSError, *UNREADABLE):
        return None


def load_backup(path: str | Path) -> Backup:
    """The training that a backup file holds; OSError where there is none, ValueError (and the like) where it cannot be
    read."""
    with np.load(path) as stored:
        state = json.loads(str(stored["state"]))
        weights, optimizer, best, seeds = ([stored[f"{kind}{i}"] for i in range(state["counts"][kind])]
                                           for kind in ("weights", "optimizer", "best", "seeds"))
    progress = Progress(state["history"], best or None, state["seconds"], state["started"])
    return Backup(state["tid"], state["space"], state["suggested_by"], state["precision"], state["code_version"],
                  state["saved"], progress, weights, optimizer, seeds)


def read_backup(results_dir: str | Path, saved_tids: set[int]) -> Backup | None:
    """The backup of the trial that the search's last run stopped in; None where there is none, or its trial was saved
    since; a backup that cannot be read is warned about and None."""
    path = backup_file(results_dir)
    try:
        backup = load_backup(path)
    except FileNotFoundError:
        return None
    except (OSError, *UNREADABLE) as err:
        warn(f"cannot read {path} ({type(err).__name__}: {err}): the trial it backs up, if trained again, starts anew")
        return None
    return None if backup.tid in saved_tids else backup


def seed_states(model: keras.Model) -> list:
    """The variables of a model that are not its weights: its random layers' seed generators' states."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def remove_backup(results_dir: str | Path) -> None:
    """Remove the backup of a trial, saved now or not to be resumed."""
    backup_file(results_dir).unlink(missing_ok=True)


class TrialBackup(keras.callbacks.Callback):
    """Backs a training up into `path` at the end of an epoch, every BACKUP_EVERY_S seconds; first, with `restore`, puts
    back the state of an earlier backup of it, to train on from its epoch.

    `identity` is what the backup records of the training (tid, space, suggested_by, precision, code_version), and
    `keeper` its early stopping, whose best epoch's weights a backup holds (pruning.trial_callbacks links it). Between
    backups it keeps an epoch's end in memory every SNAPSHOT_EVERY_S seconds, which `flush` writes as training stops.
    It waits for no step: Keras on JAX dispatches the next one before the last ends.
    """

    async_safe = True

    def __init__(self, path: str | Path, identity: dict, restore: Backup | None = None):
        super().__init__()
        self.path, self.identity, self.restore = Path(path), identity, restore
        self.keeper = None
        before = restore.progress if restore else None
        self.history = {key: list(values) for key, values in before.history.items()} if before else {}
        self.seconds_before = before.seconds if before else 0.0
        self.started = before.started if before and before.started is not None else time.time()
        self.began = self.last = self.taken = time.monotonic()
        self.snapshot: tuple[dict, str, int] | None = None  # an epoch's end that the backup on disk does not hold yet
        self.failed = False  # a backup that could not be written is warned about once
        self.saved_epochs = restore.epochs if restore else None  # those of the backup on disk
        self.unfit: str | None = None  # why `restore` does not fit the network, which its training then fails with

    def on_train_begin(self, logs=None):
        if not self.restore:
            return
        model, optimizer = self.model, self.model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        restore, seeds = self.restore, seed_states(model)
        shapes = [tuple(w.shape) for w in restore.weights + restore.optimizer + restore.seeds]
        if shapes != [tuple(v.shape) for v in model.weights + optimizer.variables + seeds]:
            self.unfit = (f"the backup of {self.training} after epoch {restore.epochs} does not fit its network as "
                          "this code builds it")
            raise ValueError(self.unfit)
        model.set_weights(restore.weights)
        for variable, value in zip(optimizer.variables + seeds, restore.optimizer + restore.seeds):
            variable.assign(value)
        model._initial_epoch = self.restore.epochs  # as Keras's BackupAndRestore resumes fit

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        # Not after the last epoch: the training ends, and its result is saved.
        if self.model.stop_training or epoch + 1 >= self.params["epochs"]:
            return
        if time.monotonic() - self.last >= BACKUP_EVERY_S:
            self.save()
            self.last = time.monotonic()
        elif time.monotonic() - self.taken >= SNAPSHOT_EVERY_S:
            self.snapshot = self.take()

    def take(self) -> tuple[dict, str, int]:
        """The training's state now, at an epoch's end: its variables, the best epoch's weights and what the backup
        records (the history so far, as JSON), and its epochs."""
        self.taken = time.monotonic()
        best = self.keeper.best_weights if self.keeper is not None and self.keeper.best_weights is not None else []
        variables = {"weights": self.model.get_weights(),
                     "optimizer": [keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables], "best": best,
                     "seeds": [keras.ops.convert_to_numpy(v) for v in seed_states(self.model)]}
        state = self.identity | {"history": self.history, "seconds": self.seconds_before + self.taken - self.began,
                                 "started": self.started, "saved": local_time(time.time()),
                                 "counts": {kind: len(arrays) for kind, arrays in variables.items()}}
        arrays = {f"{kind}{i}": array for kind, listed in variables.items() for i, array in enumerate(listed)}
        return arrays, json.dumps(state), len(self.history.get(MONITOR, []))

    def save(self) -> None:
        """Write the backup of the training as it is now."""
        self.snapshot = self.take()
        self.flush()

    def flush(self) -> None:
        """Write the last epoch's end that the backup on disk does not hold yet (kept every SNAPSHOT_EVERY_S), as a stop
        that Python sees (Ctrl-C, SIGTERM) ends the training; atomically. One that cannot be written (a full disk) is
        warned about once, and kept for the next try."""
        if self.snapshot is None:
            return
        arrays, state, epochs = self.snapshot
        try:
            with replacing(self.path, suffix=".tmp.npz") as tmp, open(tmp, "wb") as file:
                np.savez(file, state=np.array(state), **arrays)
        except OSError as err:  # it trains on, unprotected
            if not self.failed:
                kept = "start anew" if self.saved_epochs is None else f"go on after epoch {self.saved_epochs}"
                warn(f"cannot back {self.training} up ({err}): were it stopped, its resume would {kept}")
            self.failed = True
            return
        self.snapshot, self.saved_epochs = None, epochs

    def discarded_unfit(self) -> bool:
        """Whether the backup it was to restore did not fit the network (`unfit`): then warned about and removed, for
        the training to start anew."""
        if self.unfit:
            warn(f"{self.unfit}: it starts anew")
            self.path.unlink(missing_ok=True)
        return bool(self.unfit)

    @property
    def training(self) -> str:
        """What it backs up, in words."""
        return "the retrain" if self.identity["tid"] is None else f"trial {self.identity['tid']}"
