"""Retrain the best network of the search (or a given result) with TensorBoard logs and a checkpoint.

Logs go to TensorBoard/<model_name>/, the best epoch's full model to weights/<model_name>.keras and
the retrain's result JSON beside it; a later retrain of the same model to <model_name>-2, -3...
An interrupted retrain resumes where it stopped when the same command runs again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from precision import PRECISION_HELP, PRECISIONS, tensorflow_defaults, use_one_gpu

if TYPE_CHECKING:
    from pruning import Progress
    from utils import RunLock

tensorflow_defaults()

from cli import SEED, ArgumentParser, SignalGuard, at_least, run, unsupported_backend  # noqa: E402

TENSORBOARD_DIR = "TensorBoard"
WEIGHTS_DIR = "weights"
SETTINGS_FILE, HISTORY_LOG, SECONDS_LOG, RANDOM_STATES = "settings.json", "history.csv", "seconds.json", "random.npz"


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--result", default=None, help="result JSON to retrain (default: the best in --results-dir by its loss)")
    parser.add_argument("--results-dir", default="results", help="folder of result JSON files")
    parser.add_argument("--epochs", type=at_least(1), default=100, help="epochs to train")
    parser.add_argument("--dataset", default=None, help="cifar100 | cifar10 | synthetic | FILE.npz (default: the result's own)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the official cifar-100-python.tar.gz (cifar10: cifar-10-python.tar.gz)")
    parser.add_argument("--select-on", choices=("validation", "test"), default=None,
                        help="what selects the best epoch: a validation split, or the test set as in 2017 "
                             "(default: the result's own; test for 2017 files)")
    parser.add_argument("--train-subset", type=at_least(1), default=None,
                        help="train on this many images (stratified) (default: all, whatever the search trained on)")
    parser.add_argument("--histogram-freq", type=at_least(0), default=1, help="weight histograms every N epochs (0: none)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    parser.add_argument("--seed", type=SEED, default=None,
                        help="random seed of the data split and, with the network, of the weights, as in the search "
                             "(default: the result's search's, so that the retrain repeats its trial; else 0)")
    parser.add_argument("--weights-seed", type=SEED, default=None,
                        help="seed of the initial weights and the batch order alone (default: the trial's own, drawn from "
                             "--seed and the network); retrains of a few others show how much of the accuracy the draw decides")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2, help="Keras: 0 silent, 1 progress bar, 2 one line per epoch")
    return parser.parse_args(argv)


def pick_result(args) -> tuple[Path, dict] | None:
    """The result named by --result, or the best one in the results folder."""
    from utils import load_best_result, load_json_result

    if args.result:
        return Path(args.result), load_json_result(args.result)
    return load_best_result(args.results_dir)


def backup_folder(run: str) -> Path:
    """Where a retrain keeps what resuming it needs, until it ends: Keras's backup, the history log, its settings."""
    return Path(WEIGHTS_DIR) / f"{run}.backup"


def claim_run(name: str, settings: dict) -> tuple[str, RunLock, bool]:
    """This retrain's run, locked, and whether it resumes an interrupted retrain of the same model and settings.

    The run is the model's name, or <name>-2, -3... An earlier retrain's best model can be hours of
    training: a new one must neither overwrite it with its own first, worse, epoch nor write its
    logs into the earlier run's. Making the run's log folder claims the name, and the lock on its
    backup folder tells a running retrain from an interrupted one.
    """
    from utils import SETTINGS, RunLock, atomic_write, warn

    for number in itertools.count(1):
        run = name if number == 1 else f"{name}-{number}"
        backup, lock = backup_folder(run), RunLock(backup_folder(run))
        if backup.is_dir():
            if not lock.acquire():
                continue  # a retrain running now
            if (recorded := read_settings(backup)) == settings:
                return run, lock, True
            if recorded is not None:
                lock.release()
                options = " ".join(f"{SETTINGS.get(key, '--' + key.replace('_', '-'))} {value}"
                                   for key, value in recorded.items() if key != "space" and settings.get(key) != value)
                warn(f"{backup}/ is an interrupted retrain of other settings: {options or 'another network'}; "
                     "rerun with those to resume it")
                continue
            # Without settings it was stopped before it trained (or is being claimed now): take it over.
        else:
            if any((Path(WEIGHTS_DIR) / file).exists() for file in (f"{run}.keras", f"{run}.retrain.txt.json")):
                continue
            try:
                (Path(TENSORBOARD_DIR) / run).mkdir(parents=True)
            except FileExistsError:
                continue
            if not lock.acquire():
                continue
        atomic_write(backup / SETTINGS_FILE, json.dumps(settings).encode())
        return run, lock, False


def read_settings(backup: Path) -> dict | None:
    """The settings an interrupted retrain trained with, or None where they cannot be read."""
    try:
        return json.loads((backup / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None


def progress_of(run: str, checkpoint: Path) -> Progress | None:
    """The epochs an interrupted retrain finished (by its backup), their history (its log), its best model's weights, and
    the seconds it took since it first started (its seconds log)."""
    import csv

    import keras

    from pruning import Progress

    backup = backup_folder(run)
    try:
        done = json.loads((backup / "training_metadata.json").read_text())["epoch"]
    except FileNotFoundError:
        return None  # stopped before its first epoch ended
    rows = {}
    with open(backup / HISTORY_LOG, newline="") as log:
        for row in csv.DictReader(log):  # a resumed epoch's row comes after the row it replaces
            if None not in row.values():  # a row cut short by a kill
                rows[int(row.pop("epoch"))] = {key: float(value) for key, value in row.items()}
    history = {key: [rows[epoch][key] for epoch in range(done)] for key in rows[0]}
    try:
        times = json.loads((backup / SECONDS_LOG).read_text())
    except FileNotFoundError:  # a backup of a version that did not count them
        times = {}
    return Progress(history, keras.saving.load_model(checkpoint).get_weights(), times.get("train_seconds", 0.0),
                    times.get("started"))


def best_model_checkpoint(path: Path, monitor: str, best: float = -math.inf):
    """A callback that saves the full model at every new best of `monitor` (above `best`), atomically.

    Keras's ModelCheckpoint writes the .keras file in place: a kill or Ctrl-C while it saves would
    leave a torn file where the best model of hours of training was. Here the previous best stays
    whole until the new one is on disk.
    """
    import keras

    from utils import replacing

    class BestModelCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            nonlocal best
            value = (logs or {}).get(monitor)
            if value is None or not value > best:
                return
            best = value
            with replacing(path, suffix=".tmp.keras") as tmp:  # Keras saves only to names ending in .keras
                self.model.save(tmp)

    return BestModelCheckpoint()


def seconds_log(path: Path, before: float, started: float):
    """A callback that writes, after each epoch, the seconds the retrain has taken so far, earlier runs' included, and
    when its first run `started`."""
    import keras

    from utils import atomic_write

    start = time.time()  # when build_and_train starts, whose own count this matches

    class SecondsLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            atomic_write(path, json.dumps({"train_seconds": before + time.time() - start, "started": started}).encode())

    return SecondsLog()


def epoch_tensorboard(log_dir: Path, histogram_freq: int):
    """Keras's TensorBoard callback without its per-step hooks, so that Keras on JAX need not wait for every step.

    Keras dispatches the next training step before the last one ends unless a callback has
    per-step hooks. TensorBoard's, with update_freq="epoch" and no profiling, only count steps and
    look for a training graph to write, which Keras 3.15 finds on neither backend: the logs are the
    same without them. A small network's retrain on JAX on a CPU took 9.5 s instead of 10.5; on an
    H200 such hooks cost a trial 44% of its speed (bench/README.md).
    """
    import keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        # Keras's own no-op hooks, which its CallbackList recognises as none.
        on_train_batch_begin = keras.callbacks.Callback.on_train_batch_begin
        on_train_batch_end = keras.callbacks.Callback.on_train_batch_end

    return EpochTensorBoard(log_dir=str(log_dir), histogram_freq=histogram_freq, write_graph=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if problem := unsupported_backend():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not args.result and Path(args.results_dir).is_file():
        print(f"error: --results-dir {args.results_dir} is a file: to retrain that result, pass it with --result",
              file=sys.stderr)
        return 2
    if args.result and Path(args.result).is_dir():
        print(f"error: --result {args.result} is a folder: to retrain its best trial, pass it with --results-dir",
              file=sys.stderr)
        return 2
    try:
        picked = pick_result(args)
    except OSError as err:
        print(f"error: cannot read {args.result}: {err.strerror}", file=sys.stderr)
        return 2
    except ValueError as err:  # a pickle, a README: what --result names must be a result JSON file
        print(f"error: {args.result} is not a result file of the search: not JSON ({err})", file=sys.stderr)
        return 2
    if picked is None:
        # A search whose every trial failed (out of memory, say) has run: it is not to be run "first".
        if failed := len(list(Path(args.results_dir).glob("model_failed_*.json"))):
            print(f"error: no finished trial to retrain in {args.results_dir}/: its {failed} failed (their result files "
                  "say why); pass --result FILE to retrain one of them anyway", file=sys.stderr)
        else:
            print(f"error: no result to retrain in {args.results_dir}/; run hyperopt_optimize.py first or pass --result FILE",
                  file=sys.stderr)
        return 2
    path, result = picked
    if not isinstance(result, dict) or not isinstance(result.get("space"), dict):
        print(f"error: {path} has no 'space' to rebuild the network from", file=sys.stderr)
        return 2
    from hyperspace import SEED_BEST_SPACE

    # Every point of the spaces has the 2017 best's hyperparameters: one without them (a file edited by hand)
    # would fail to build after its run's folders were made, and be called resumable.
    if missing := sorted(set(SEED_BEST_SPACE) - set(result["space"])):
        print(f"error: {path}'s space lacks {', '.join(missing)}: not a network of the search", file=sys.stderr)
        return 2
    if result.get("status", "ok") != "ok":  # named by --result: the best is always a finished trial
        from utils import warn

        warn(f"{path} is a trial that failed in the search ({result.get('error') or 'no error recorded'}): retraining it "
             "as asked")
    name = result.get("model_name") or path.name.removesuffix(".json").removesuffix(".txt")
    if gpu_line := use_one_gpu():
        print(gpu_line)
    # Ctrl-C and a scheduler's SIGTERM, from before TensorFlow and the data load: a signal is remembered, so
    # that one whose KeyboardInterrupt a library swallowed (rarely, and the retrain then went on) still stops it.
    guard = SignalGuard()
    try:
        return retrain(args, path, result, name, guard)
    except KeyboardInterrupt:
        guard.stopping()
        print("\nInterrupted.", file=sys.stderr)  # before training, or after it, while its result was saved
        return 128 + (guard.signum or signal.SIGINT)
    finally:
        guard.restore()


def retrain(args, path: Path, result: dict, name: str, guard: SignalGuard) -> int:
    """Load the data, claim the run (a new one, or the interrupted one to resume), train it; the exit status."""
    from datasets import DatasetError, load_dataset
    from precision import resolve_precision
    from utils import make_folder, setting, warn, weights_seed

    dataset = args.dataset or result.get("dataset_file") or setting(result, "dataset") or "cifar100"
    select_on = args.select_on or setting(result, "selected_on") or "validation"
    seed = result.get("seed", 0) if args.seed is None else args.seed
    try:
        data = load_dataset(dataset, train_subset=args.train_subset, seed=seed, data_dir=args.data_dir,
                            select_on=select_on)
    except DatasetError as err:
        moved = not args.dataset and dataset.endswith(".npz") and not Path(dataset).is_file()
        hint = f" (the dataset {path} was trained on: give its path with --dataset)" if moved else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    if data.digest and result.get("dataset_digest") not in (None, data.digest):
        warn(f"the images or labels of {data.name} differ from those {path} trained on (dataset_digest {data.digest}; "
             f"the trial's: {result['dataset_digest']}): its figures and the retrain's will not compare")
    # What a resumed retrain must share with the interrupted one: the network, the search's settings, the precision.
    settings = {"space": result["space"], "dataset": dataset, "selected_on": select_on, "seed": seed,
                "train_images": len(data.x_train), "precision": resolve_precision(args.precision)}
    if args.weights_seed is not None:  # left out otherwise, so that retrains interrupted before it existed still resume
        settings["weights_seed"] = args.weights_seed
    weights = weights_seed(seed, result["space"]) if args.weights_seed is None else args.weights_seed
    guard.stop_if_signalled()  # one came while loading, and a library swallowed its KeyboardInterrupt
    try:
        make_folder(WEIGHTS_DIR)
        run, lock, resuming = claim_run(name, settings)
    except OSError as err:
        print(f"error: cannot write the logs and the model: {err}", file=sys.stderr)
        return 2
    again = "" if run == name else f" as {run}, beside the earlier retrains"
    print(f"Retraining {name} (from {path}){again} on {data.summary()}")
    try:
        return train_run(args, run, resuming, path, result, data, seed, weights, guard)
    finally:
        lock.release()


def retrain_callbacks(log_dir: Path, checkpoint: Path, backup: Path, histogram_freq: int, best_before: float,
                      seconds_before: float, started: float, guard: SignalGuard) -> list:
    """The retrain's logs, best model and backup, from `best_before` and `seconds_before` when it resumes a retrain that
    `started` earlier.

    None of them waits for a step: Keras on JAX dispatches the next one before the last ends.
    """
    import keras

    from pruning import MONITOR
    from trial_backup import RandomStates

    # Its previous state kept too, for a kill in the middle of saving; the folder goes when training ends. It saves at
    # an epoch's end only (save_freq "epoch"), so its per-step hook, which would make Keras wait, does nothing.
    restore = keras.callbacks.BackupAndRestore(backup, double_checkpoint=True)
    restore.async_safe = True
    return [
        epoch_tensorboard(log_dir, histogram_freq),
        best_model_checkpoint(checkpoint, MONITOR, best_before),
        # Each epoch's row of the history, the time so far and the random layers' states (which Keras's backup leaves
        # out), then the state to resume from: a kill between the two loses nothing.
        keras.callbacks.CSVLogger(backup / HISTORY_LOG, append=True),
        seconds_log(backup / SECONDS_LOG, seconds_before, started),
        RandomStates(backup / RANDOM_STATES),
        restore,
        # After the epoch's backup: a signal whose KeyboardInterrupt C code swallowed mid-epoch stops the retrain here.
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: guard.stop_if_signalled()),
    ]


def train_run(args, run: str, resuming: bool, path: Path, result: dict, data, seed: int, weights: int,
              guard: SignalGuard) -> int:
    """Train the claimed run (its weights and batch order drawn from `weights`), from where it stopped if it resumes, and
    save its result; the exit status."""
    from neural_net import build_and_train
    from precision import training_line
    from pruning import MONITOR
    from retrains import figures, over_draws, same_but_the_draw, trained_otherwise
    from trial import code_version, local_time
    from utils import is_ok, print_json, save_json_result

    log_dir, checkpoint, backup = Path(TENSORBOARD_DIR) / run, Path(WEIGHTS_DIR) / f"{run}.keras", backup_folder(run)
    try:
        before = progress_of(run, checkpoint) if resuming else None
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot resume {run} from {backup}/ ({err}); delete that folder to retrain it anew", file=sys.stderr)
        return 2
    done, best_before = (len(before.history[MONITOR]), max(before.history[MONITOR])) if before else (0, -math.inf)
    if before:
        left = "" if done < args.epochs else f"; --epochs {args.epochs} leaves none to train"
        print(f"Resuming the interrupted retrain after epoch {done} (best {data.selects_on} fine accuracy {best_before:.4f}){left}")
    print(training_line(args.precision))
    print(f"TensorBoard logs: {log_dir}/   best model: {checkpoint}")
    # When the first run began: a backup of a version that did not log it, or of a run stopped in its first epoch, says now.
    started = before.started if before and before.started is not None else time.time()
    callbacks = retrain_callbacks(log_dir, checkpoint, backup, args.histogram_freq, best_before,
                                  before.seconds if before else 0.0, started, guard)
    try:
        model, retrained = build_and_train(result["space"], data, epochs=args.epochs, callbacks=callbacks,
                                           verbose=args.verbose, precision=args.precision,
                                           seed=weights, before=before)
        guard.stop_if_signalled()  # C code may have made its KeyboardInterrupt an error: not a failed retrain
    except KeyboardInterrupt:
        guard.stopping()
        kept = f"the best model so far is {checkpoint}" if checkpoint.exists() else "no epoch had finished"
        print(f"\n{signal.Signals(guard.signum or signal.SIGINT).name}: stopped; {kept}; logs in {log_dir}/",
              file=sys.stderr)
        print(f"Resume with: {shlex.join(['python3', *sys.argv])}", file=sys.stderr)
        return 128 + (guard.signum or signal.SIGINT)
    if retrained["status"] != "ok":
        resumable = "; rerun the same command to resume it" if backup.is_dir() else ""
        print(f"error: retraining failed: {retrained['error']}{resumable}", file=sys.stderr)
        return 1
    retrained.update(model_name=f"{run}.retrain", retrained_from=str(path), checkpoint=str(checkpoint), seed=seed,
                     weights_seed=weights, code_version=code_version(), started=local_time(started))
    if before:
        retrained["resumed_after_epoch"] = done
    try:
        saved = save_json_result(retrained, WEIGHTS_DIR)
    except OSError as err:
        print(f"error: cannot save the retrain's result ({err}); the best model is {checkpoint}", file=sys.stderr)
        return 1
    print_json({k: v for k, v in retrained.items() if k not in ("history", "space")})
    print(f"Retrained:     {figures(retrained)}; result in {saved}")
    # What it may repeat: the same figures, where it trained on the trial's images with the trial's weights seed.
    if is_ok(result) and isinstance(result.get("fine_best_accuracy"), (int, float)):
        print(f"In the search: {figures(result)}")
        if otherwise := trained_otherwise(result, retrained):
            print(otherwise)
    if spread := over_draws(same_but_the_draw(retrained, WEIGHTS_DIR)):
        print(spread)
    print("See the logs with: tensorboard --logdir=TensorBoard/")
    return 0


if __name__ == "__main__":
    run(main)
