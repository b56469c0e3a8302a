"""When a trial stops, and what it keeps: the NaN stop, early stopping that keeps the best epoch (across
a resumed training too), and the median stopping rule (Golovin et al., Google Vizier, 2017), as Keras callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

import keras
import numpy as np

from trial import report
from utils import best_epoch

MONITOR = "val_fine_outputs_accuracy"  # what selects epochs and trials
MIN_EPOCH = 5
MIN_TRIALS = 3


def should_prune(
    curve: Sequence[float],
    finished_curves: Sequence[Sequence[float]],
    *,
    min_epoch: int = MIN_EPOCH,
    min_trials: int = MIN_TRIALS,
) -> bool:
    """True when the best-so-far of `curve` is below the median best-so-far of finished trials.

    `curve` holds one validation accuracy per epoch so far. Every finished trial counts with its
    best up to the same epoch; one that stopped sooner (pruned, or early-stopped) with the best it
    reached, as Vizier counts stopped trials. Counting only the trials that ran as long would
    raise the bar epoch by epoch as the weak ones are pruned, and stop late bloomers.
    """
    bar = median_bar(len(curve), finished_curves, min_epoch=min_epoch, min_trials=min_trials)
    return bar is not None and max(curve) < bar


def median_bar(
    epoch: int,
    finished_curves: Sequence[Sequence[float]],
    *,
    min_epoch: int = MIN_EPOCH,
    min_trials: int = MIN_TRIALS,
) -> float | None:
    """The median of the finished trials' best-so-far at `epoch` (1-based), or None before the rule applies."""
    if epoch < min_epoch or len(finished_curves) < min_trials:
        return None
    return statistics.median(max(c[:epoch]) for c in finished_curves)


class MedianStoppingRule(keras.callbacks.Callback):
    """Stop a trial whose best validation accuracy trails the median of finished trials."""

    def __init__(self, finished_curves: Sequence[Sequence[float]], monitor: str = MONITOR,
                 min_epoch: int = MIN_EPOCH, min_trials: int = MIN_TRIALS, earlier: Sequence[float] = ()):
        super().__init__()
        self.finished_curves = [list(c) for c in finished_curves]
        self.earlier = list(earlier)  # the curve of the training that this one resumes
        self.monitor = monitor
        self.min_epoch = min_epoch
        self.min_trials = min_trials
        self.curve: list[float] = []
        self.pruned = False

    def on_train_begin(self, logs=None):
        self.curve = list(self.earlier)
        self.pruned = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.curve.append(float(value))
        if should_prune(self.curve, self.finished_curves, min_epoch=self.min_epoch, min_trials=self.min_trials):
            bar = median_bar(len(self.curve), self.finished_curves, min_epoch=self.min_epoch, min_trials=self.min_trials)
            self.pruned = True
            self.model.stop_training = True
            report(f"Pruned at epoch {epoch + 1}: best {max(self.curve):.4f} is below {bar:.4f}, the median of "
                   f"{len(self.finished_curves)} finished trials' best by epoch {epoch + 1}")


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the end of an epoch whose loss is NaN or infinite.

    Keras's TerminateOnNaN checks every step, so on JAX `fit` waits for each step's loss before it
    dispatches the next (on an H200, with a per-step progress logger too: 30,562 against 54,934
    images/s; bench/README.md). A diverged network trains to its epoch's end and stops there.
    """

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            self.model.stop_training = True


@dataclasses.dataclass
class Progress:
    """What an interrupted training had done: its epochs' history, its best epoch's weights, the seconds it took, and when
    it started (seconds since the epoch; None where not recorded)."""

    history: dict[str, list[float]]
    best_weights: list[np.ndarray]
    seconds: float = 0.0
    started: float | None = None


class BestEpochKeeper(keras.callbacks.EarlyStopping):
    """Early stopping that restores the best epoch's weights, counting the epochs of a resumed training too."""

    def __init__(self, patience: int, before: Progress | None = None):
        super().__init__(monitor=MONITOR, mode="max", patience=patience, restore_best_weights=True)
        self.before = before

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.before and (curve := self.before.history.get(MONITOR)):
            self.best_epoch = best_epoch(curve) - 1  # Keras counts from 0
            self.best, self.best_weights = curve[self.best_epoch], self.before.best_weights
            self.wait = len(curve) - 1 - self.best_epoch


def trial_callbacks(epochs: int, patience: int | None, callbacks=(), before: Progress | None = None) -> list:
    """A trial's callbacks: the NaN stop, early stopping that keeps the best epoch's weights, and the caller's; one of
    theirs that backs the best epoch's weights up (trial_backup.TrialBackup) is given the early stopping that keeps them."""
    keeper = BestEpochKeeper(patience or epochs, before)
    for callback in callbacks:
        if hasattr(callback, "keeper"):
            callback.keeper = keeper
    return [StopOnNaN(), keeper, *callbacks]
