"""What a retrain writes as it trains: its TensorBoard logs, without per-step hooks and marked where each run starts, and
its backup (trial_backup), which writes its best model too."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import keras
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from cli import SignalGuard
from trial_backup import Backup, TrialBackup
from utils import replacing, warn


def retrain_callbacks(log_dir: Path, histogram_freq: int, backup: RetrainBackup, guard: SignalGuard) -> list:
    """The retrain's logs and its `backup`, which writes its best model too.

    None of them waits for a step: Keras on JAX dispatches the next one before the last ends.
    """
    return [
        EpochTensorBoard(log_dir=str(log_dir), histogram_freq=histogram_freq, write_graph=True),
        backup,
        # After the epoch's backup: a signal whose KeyboardInterrupt C code swallowed mid-epoch stops the retrain here.
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: guard.stop_if_signalled()),
    ]


class RetrainBackup(TrialBackup):
    """The retrain's backup (trial_backup.TrialBackup, from `restore` on if it resumes), which writes the best epoch's
    full model to `checkpoint` with each backup, when the retrain ends, and when it stops (`save_best`); and removes its
    folder when the retrain ends.

    Keras's ModelCheckpoint writes the .keras file in place: a kill or Ctrl-C while it saves would leave a torn file
    where the best model of hours of training was. Here the previous best stays whole until the new one is on disk. And
    it saved each better epoch's model, 0.4 s for the 2017 best network: on a GPU, whose epoch of it takes about a
    second, a third of a retrain's time. The checkpoint and the backup are of the same moment: a resume after a kill
    repeats the epochs after it as the unbroken retrain trained them (trial_backup).
    """

    def __init__(self, path: Path, identity: dict, restore: Backup | None, checkpoint: Path):
        super().__init__(path, identity, restore)
        self.checkpoint = checkpoint
        self.saved_best: int | None = None  # the best epoch whose model the checkpoint holds
        self.unwritable = False  # a best model that could not be written is warned about once

    def save(self) -> None:
        super().save()
        try:
            self.save_best()
        except OSError as err:  # a full disk: it trains on, and writes the model when it can
            if not self.unwritable:
                warn(f"cannot write the best model so far to {self.checkpoint} ({err}): the retrain goes on, and "
                     "writes it at its next backup or when it ends")
            self.unwritable = True

    def on_train_end(self, logs=None):
        self.save_best()
        shutil.rmtree(self.path.parent, ignore_errors=True)  # ended: nothing to resume

    def save_best(self) -> None:
        """Write the best epoch's full model, where the checkpoint holds an earlier one."""
        keeper, model = self.keeper, self.model
        if keeper is None or keeper.best_weights is None or keeper.best_epoch == self.saved_best:
            return
        now = model.get_weights()
        model.set_weights(keeper.best_weights)
        try:
            with replacing(self.checkpoint, suffix=".tmp.keras") as tmp:  # Keras saves only to names ending in .keras
                model.save(tmp)
        finally:
            model.set_weights(now)
        self.saved_best = keeper.best_epoch


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback without its per-step hooks, so that Keras on JAX need not wait for every step.

    Keras dispatches the next training step before the last one ends unless a callback has
    per-step hooks. TensorBoard's, with update_freq="epoch" and no profiling, only count steps and
    look for a training graph to write, which Keras 3.15 finds on neither backend: the logs are the
    same without them. A small network's retrain on JAX on a CPU took 9.5 s instead of 10.5; on an
    H200 such hooks cost a trial 44% of its speed (bench/README.md).
    """

    # Keras's own no-op hooks, which its CallbackList recognises as none.
    on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end


def tensorboard_restart(log_dir: Path, epoch: int) -> None:
    """Mark in the retrain's TensorBoard logs that it starts at `epoch` (from 0, as Keras logs epochs): TensorBoard then
    drops the epochs from there that a run before logged (its purge of a restarted session's orphaned events), so that a
    resume, which trains again the epochs after its backup, or a retrain started anew, shows each epoch once."""
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
              event_pb2.Event(wall_time=now, step=epoch, session_log=start)]
    for folder in (log_dir / "train", log_dir / "validation"):  # Keras's two writers'
        folder.mkdir(parents=True, exist_ok=True)
        # Read before the files that TensorFlow's writers open in the same second, whose names go on from this one.
        with open(folder / name, "wb") as file:
            writer = RecordWriter(file)
            for event in events:
                writer.write(event.SerializeToString())
