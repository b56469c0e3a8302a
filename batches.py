"""How a trial's images reach the model: batches gathered from the uint8 arrays on the fly, and their labels."""

from __future__ import annotations

import contextlib
import gc
import math

import keras
import numpy as np

from datasets import Dataset


class Batches(keras.utils.PyDataset):
    """Batches gathered from the uint8 arrays on the fly, reshuffled every epoch.

    Unlike passing arrays to `fit`, this never copies the whole dataset into the backend.
    Shuffled (training) batches are all full: a smaller last batch would make JAX, and XLA on a
    GPU, compile the training step a second time in every trial (SEED_BEST_SPACE on JAX: 5.6 s
    on a CPU). The few images left out of an epoch differ from epoch to epoch. Each epoch's order
    is drawn from the seed and the epoch's number, so that a training resumed at `first_epoch`
    (0-based) goes on in the order an unbroken one would have.
    """

    def __init__(self, x: np.ndarray, y: dict, batch_size: int, *, shuffle: bool, seed: int | None = None,
                 first_epoch: int = 0):
        # On JAX, gathered in the training loop (0.2 ms for 320 images) while Keras sends the last
        # batch to the device: its background workers take 0.1 s to stop after every pass,
        # training's and validation's, where an H100 trains SEED_BEST_SPACE's epoch in 1.3 s. On
        # TensorFlow two workers: without them tf.data's own prefetching slowed a CPU's step by up to 40%.
        if keras.backend.backend() == "tensorflow":
            super().__init__(workers=2, max_queue_size=8)
        else:
            super().__init__(workers=1)
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.epoch = seed, first_epoch
        self.order = self.epoch_order() if shuffle else None

    def __len__(self) -> int:
        if self.shuffle:
            return max(1, len(self.x) // self.batch_size)
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        if self.order is None:
            rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        else:
            rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        return self.x[rows], {name: labels[rows] for name, labels in self.y.items()}

    def epoch_order(self) -> np.ndarray:
        """This epoch's order of the images: drawn from the seed and the epoch's number, or anew without a seed."""
        return np.random.default_rng(None if self.seed is None else [self.seed, self.epoch]).permutation(len(self.x))

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.epoch += 1
            self.order = self.epoch_order()


def batches(data: Dataset, split: str, batch_size: int, seed: int | None = None, first_epoch: int = 0) -> Batches:
    """The batches of one split (`train` shuffled, from epoch `first_epoch` on; `val` and `test` in order)."""
    return Batches(getattr(data, f"x_{split}"), targets(data, split), batch_size, shuffle=split == "train", seed=seed,
                   first_epoch=first_epoch)


def stop_feeding(*feeds: Batches | None) -> None:
    """Stop the threads that fed these batches to a training that failed, and drop the batches they queued.

    Keras stops them at the end of each pass; a pass that an error ends leaves them running, with
    up to `max_queue_size` batches each, for the rest of the search: six threads a failed trial on
    TensorFlow. Keras keeps them where only a scan of Python's objects finds them.
    """
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetEnqueuer
    except ImportError:  # private to Keras: where it moved, a failed trial keeps its threads
        return
    for obj in gc.get_objects():
        if issubclass(type(obj), PyDatasetEnqueuer) and any(obj.py_dataset is feed for feed in feeds if feed is not None):
            # Stopping waits for the batches being gathered; the error of one (out of memory, say) must not take the
            # place of the trial's own.
            with contextlib.suppress(Exception):
                obj.stop()


def evaluation_batch_size(batch_size: int, *split_sizes: int) -> int:
    """The largest batch, up to `batch_size`, that divides every split evenly, if at least half as big; else `batch_size`.

    JAX, and XLA on a GPU, compile the evaluation step for each batch shape it meets: with
    CIFAR's 5,000 validation and 10,000 test images at batch 320 (remainders of 200 and 80),
    three times a trial; at 250, once.
    """
    common = math.gcd(*split_sizes)
    largest = max(d for d in range(1, min(common, batch_size) + 1) if common % d == 0)
    return largest if 2 * largest >= batch_size else batch_size


def targets(data: Dataset, split: str) -> dict:
    """Integer labels of one split, keyed by the model's output names."""
    labels = {"fine_outputs": getattr(data, f"y_{split}_fine")}
    if data.has_coarse:
        labels["coarse_outputs"] = getattr(data, f"y_{split}_coarse")
    return labels
