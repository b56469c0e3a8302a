"""What backing a training up costs: the seconds to write and read a trial's backup (trial_backup) on a disk, and their
share of a trial's time at one backup every BACKUP_EVERY_S seconds; and what else a retrain writes at an epoch's end.

    python3 bench/bench_backup.py                        # in results/, where a search writes its backups
    python3 bench/bench_backup.py --dir /mnt/nfs/results  # a results folder on another disk (a network share, say)

Builds each network with Adam's variables and a best epoch's weights, as a trial's backup holds them after an epoch, and
times `TrialBackup.take` (the state kept in memory between backups), `TrialBackup.save` (written, fsynced, renamed)
and `read_backup`; then what a retrain writes: its best epoch's
full model (.keras, written and renamed), one epoch's TensorBoard weight histograms, and Keras's BackupAndRestore (the
retrain's backup after every epoch until this one replaced it). The median of --repeats each; the files are removed
after.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402

import retrain_callbacks  # noqa: E402
import trial_backup  # noqa: E402
from bench_training import SPACES  # noqa: E402
from cli import ArgumentParser, at_least  # noqa: E402
from neural_net import build_model  # noqa: E402
from precision import device_name  # noqa: E402


def median_seconds(repeats: int, call) -> float:
    """The median seconds of `repeats` calls of `call(i)`, after one untimed (TensorBoard's first makes its writers)."""
    call(-1)
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - start)
    return round(statistics.median(seconds), 3)


def backup_row(name: str, space: dict, folder: Path, repeats: int) -> dict:
    """The size of a backup of the network of `space`, the median seconds to write and to read it in `folder`, and those
    of what a retrain writes at an epoch's end."""
    model = build_model(space)
    model.optimizer.build(model.trainable_variables)
    keeper = types.SimpleNamespace(best_weights=model.get_weights(), best_epoch=0)  # a best epoch's, as a trial keeps
    backup = retrain_callbacks.RetrainBackup(trial_backup.backup_file(folder), {
        "tid": 0, "space": space, "suggested_by": None, "precision": "float32", "code_version": None}, None,
        folder / name / "best.keras")
    backup.set_model(model)
    backup.keeper, backup.history = keeper, {trial_backup.MONITOR: [0.0]}
    histograms = retrain_callbacks.EpochTensorBoard(log_dir=str(folder / name / "logs"), histogram_freq=1)
    keras_backup = keras.callbacks.BackupAndRestore(folder / name / "keras", double_checkpoint=True)
    for callback in (histograms, keras_backup):
        callback.set_model(model)
        callback.on_train_begin()
    try:
        keep = median_seconds(repeats, lambda i: backup.take())
        write = median_seconds(repeats, lambda i: trial_backup.TrialBackup.save(backup))
        read = median_seconds(repeats, lambda i: trial_backup.read_backup(folder, set()))
        size = backup.path.stat().st_size

        def better_epoch(i):
            keeper.best_epoch = i
            backup.save_best()

        figures = {"model_s": median_seconds(repeats, better_epoch),
                   "histograms_s": median_seconds(repeats, lambda i: histograms.on_epoch_end(i + 1, {})),
                   "keras_backup_s": median_seconds(repeats, lambda i: keras_backup.on_epoch_end(i + 1, {}))}
        model_bytes = (folder / name / "best.keras").stat().st_size
    finally:
        histograms.on_train_end()
        keras.backend.clear_session()
    every = {"backup": trial_backup.BACKUP_EVERY_S, "keep": trial_backup.SNAPSHOT_EVERY_S}
    return {"network": name, "params": model.count_params(), "backup_bytes": size, "keep_s": keep, "write_s": write,
            "read_s": read,
            "share_of_trial": round(write / (every["backup"] + write) + keep / (every["keep"] + keep), 5),
            "model_bytes": model_bytes, **figures}


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--dir", default="results", help="the folder to write the backups in (made if missing)")
    parser.add_argument("--networks", default="demo,best", help=f"comma-separated: {', '.join(SPACES)}")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="writes and reads of each backup")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    names = args.networks.split(",")
    if unknown := [name for name in names if name not in SPACES]:
        parser.error(f"--networks: unknown {', '.join(unknown)}; choose from {', '.join(SPACES)}")
    Path(args.dir).mkdir(parents=True, exist_ok=True)

    # In a folder of its own inside --dir, so that a search's own backup there is never touched.
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench_backup_") as folder:
        rows = [backup_row(name, SPACES[name], Path(folder), args.repeats) for name in names]
    print(f"Backups in {Path(args.dir).resolve()}, one every {trial_backup.BACKUP_EVERY_S:.0f} s, kept in memory every "
          f"{trial_backup.SNAPSHOT_EVERY_S:.0f} s; {device_name()}")
    print(f"{'network':<10} {'params':>10} {'MB':>7} {'keep s':>7} {'write s':>8} {'read s':>7} "
          f"{'share of a trial':>17}")
    for row in rows:
        print(f"{row['network']:<10} {row['params']:>10,} {row['backup_bytes'] / 1e6:>7.1f} {row['keep_s']:>7.3f} "
              f"{row['write_s']:>8.3f} {row['read_s']:>7.3f} {row['share_of_trial']:>16.3%}")
    print("\nWhat a retrain writes at an epoch's end, in seconds: its best model (with a backup), weight histograms "
          "(every --histogram-freq epochs), and Keras's BackupAndRestore, which it wrote after every epoch before")
    print(f"{'network':<10} {'model MB':>9} {'model s':>8} {'histograms s':>13} {'Keras backup s':>15}")
    for row in rows:
        print(f"{row['network']:<10} {row['model_bytes'] / 1e6:>9.1f} {row['model_s']:>8.3f} "
              f"{row['histograms_s']:>13.3f} {row['keras_backup_s']:>15.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dir": str(Path(args.dir).resolve()), "device": device_name(),
                                               "every_s": trial_backup.BACKUP_EVERY_S, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
