"""The median stopping rule (Golovin et al., Google Vizier, 2017) as a Keras callback."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import keras
from tqdm import tqdm

from neural_net import MONITOR

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
    epoch = len(curve)
    if epoch < min_epoch or len(finished_curves) < min_trials:
        return False
    return max(curve) < statistics.median(max(c[:epoch]) for c in finished_curves)


class MedianStoppingRule(keras.callbacks.Callback):
    """Stop a trial whose best validation accuracy trails the median of finished trials."""

    def __init__(self, finished_curves: Sequence[Sequence[float]], monitor: str = MONITOR,
                 min_epoch: int = MIN_EPOCH, min_trials: int = MIN_TRIALS):
        super().__init__()
        self.finished_curves = [list(c) for c in finished_curves]
        self.monitor = monitor
        self.min_epoch = min_epoch
        self.min_trials = min_trials
        self.curve: list[float] = []
        self.pruned = False

    def on_train_begin(self, logs=None):
        self.curve = []
        self.pruned = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self.curve.append(float(value))
        if should_prune(self.curve, self.finished_curves, min_epoch=self.min_epoch, min_trials=self.min_trials):
            self.pruned = True
            self.model.stop_training = True
            # tqdm.write: a plain print would tear the search's progress bar.
            tqdm.write(f"Pruned at epoch {epoch + 1}: best {max(self.curve):.4f} is below the median of finished trials")
