"""Retrain the best network of the search (or a given result) with TensorBoard logs and a checkpoint.

Logs go to TensorBoard/<model_name>/, the best epoch's full model to weights/<model_name>.keras and
the retrain's result JSON beside it; a later retrain of the same model to <model_name>-2, -3...
An interrupted retrain resumes where it stopped when the same command runs again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from precision import PRECISION_HELP, PRECISIONS, tensorflow_defaults, use_one_gpu

if TYPE_CHECKING:
    from utils import RunLock

tensorflow_defaults()

from cli import SEED, ArgumentParser, SignalGuard, at_least, run, unsupported_backend  # noqa: E402

TENSORBOARD_DIR = "TensorBoard"
WEIGHTS_DIR = "weights"
SETTINGS_FILE = "settings.json"


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
    # Histograms of every weight take TensorFlow 0.8 s for the 2017 best network, about an epoch of it on a GPU.
    parser.add_argument("--histogram-freq", type=at_least(0), default=10,
                        help="weight histograms every N epochs, from the first (0: none)")
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
    """Where a retrain keeps what resuming it needs, until it ends: its settings and its backup (trial_backup)."""
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


def train_run(args, run: str, resuming: bool, path: Path, result: dict, data, seed: int, weights: int,
              guard: SignalGuard) -> int:
    """Train the claimed run (its weights and batch order drawn from `weights`), from where it stopped if it resumes, and
    save its result; the exit status."""
    from neural_net import build_and_train
    from precision import resolve_precision, training_line
    from pruning import MONITOR
    from retrains import figures, over_draws, same_but_the_draw, trained_otherwise
    from retrain_callbacks import RetrainBackup, retrain_callbacks, tensorboard_restart
    from trial import code_version, local_time
    from trial_backup import BACKUP_EVERY_S, UNREADABLE, backed_up, backup_file, load_backup
    from utils import is_ok, print_json, save_json_result

    log_dir, checkpoint, folder = Path(TENSORBOARD_DIR) / run, Path(WEIGHTS_DIR) / f"{run}.keras", backup_folder(run)
    every = f"one every {BACKUP_EVERY_S / 60:g} minutes"
    try:
        restore = load_backup(backup_file(folder)) if resuming else None
    except FileNotFoundError:
        restore = None
        if (folder / "training_metadata.json").exists():  # Keras's BackupAndRestore, which retrains used before
            print("The interrupted retrain was backed up by an earlier version of this code, whose backup this one "
                  "does not read: it starts anew")
        else:
            print(f"The interrupted retrain stopped before its first backup ({every}): it starts anew")
    except (OSError, *UNREADABLE) as err:
        print(f"error: cannot resume {run} from {folder}/ ({err}); delete that folder to retrain it anew", file=sys.stderr)
        return 2
    if restore:
        curve = restore.progress.history[MONITOR]
        left = "" if len(curve) < args.epochs else f"; --epochs {args.epochs} leaves none to train"
        print(f"Resuming the interrupted retrain after epoch {len(curve)} (best {data.selects_on} fine accuracy "
              f"{max(curve):.4f}; its backup of {restore.saved}){left}")
    print(training_line(args.precision))
    print(f"TensorBoard logs: {log_dir}/   best model: {checkpoint}")
    identity = {"tid": None, "space": result["space"], "suggested_by": None,
                "precision": resolve_precision(args.precision), "code_version": code_version()}
    backup = RetrainBackup(backup_file(folder), identity, restore, checkpoint)
    try:
        while True:
            tensorboard_restart(log_dir, restore.epochs if restore else 0)
            model, retrained = build_and_train(result["space"], data, epochs=args.epochs, verbose=args.verbose,
                                               callbacks=retrain_callbacks(log_dir, args.histogram_freq, backup, guard),
                                               precision=args.precision, seed=weights,
                                               before=restore.progress if restore else None)
            if not backup.discarded_unfit():  # the code changed since, and builds the network otherwise
                break
            restore, backup = None, RetrainBackup(backup_file(folder), identity, None, checkpoint)
        guard.stop_if_signalled()  # C code may have made its KeyboardInterrupt an error: not a failed retrain
    except KeyboardInterrupt:
        guard.stopping()
        signame = signal.Signals(guard.signum or signal.SIGINT).name
        try:
            backup.flush()  # its last epoch's end that its backup does not hold
            backup.save_best()
            kept = f"the best model so far is {checkpoint}" if checkpoint.exists() else "no epoch had finished"
        except OSError as err:
            kept = f"cannot save the best model so far ({err})"
        state = backed_up(folder)
        goes_on = (f"a resume goes on after epoch {state['epochs']} (its backup of {state['saved']})" if state else
                   f"nothing backed up yet ({every}): a resume starts anew")
        print(f"\n{signame}: stopped; {kept}; logs in {log_dir}/; {goes_on}", file=sys.stderr)
        print(f"Resume with: {shlex.join(['python3', *sys.argv])}", file=sys.stderr)
        return 128 + (guard.signum or signal.SIGINT)
    if retrained["status"] != "ok":
        resumable = "; rerun the same command to resume it" if folder.is_dir() else ""
        print(f"error: retraining failed: {retrained['error']}{resumable}", file=sys.stderr)
        return 1
    retrained.update(model_name=f"{run}.retrain", retrained_from=str(path), checkpoint=str(checkpoint), seed=seed,
                     weights_seed=weights, code_version=identity["code_version"], started=local_time(backup.started))
    if restore:
        retrained["resumed_after_epoch"] = restore.epochs
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
