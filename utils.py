"""Results on disk: atomic writes, result JSON files and their settings, the best result, the trials pickle, a run lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import sys
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

RESULTS_DIR = "results"
# What a trial's accuracy depends on besides its hyperparameters, and the search option that sets it:
# a search refuses to resume over trials of other settings, and the analysis warns of a folder mixing them.
SETTINGS = {"dataset": "--dataset", "dataset_digest": "--dataset", "selected_on": "--select-on", "train_images": "--train-subset",
            "search_space": "--space", "seed": "--seed"}
# The 2017 project's results record none of them, nor their epoch budget: it trained on all of
# CIFAR-100's 50,000 training images, 100 epochs, in the full space, and selected on the 10,000 test images.
SETTINGS_2017 = {"dataset": "cifar100", "selected_on": "test", "train_images": 50_000, "search_space": "full",
                 "max_epochs": 100, "val_images": 10_000}


def setting(result: dict, key: str):
    """What a result records of a setting (`dataset`, `selected_on`...); for a 2017 result, what its search had.

    A 2017 result is an ok one without `dataset`; a crashed Spark worker's trial, a failure without it, has unknown settings.
    """
    if "dataset" in result:
        return result.get(key)
    return SETTINGS_2017.get(key) if result.get("status") == "ok" else None


def weights_seed(seed: int, space: dict) -> int:
    """The seed of a trial's weights and batch order: its search's `--seed` and its network, so that a retrain repeats it."""
    return (seed * 100003 + zlib.crc32(repr(sorted(space.items())).encode())) % 2**31


def recorded(trials, key: str) -> set:
    """The values of a setting among the finished trials, 2017's included."""
    return {setting(r, key) for r in trials.results} - {None}


def mismatched_setting(trials, trials_file: str, **asked) -> str | None:
    """Why the finished trials cannot share one TPE history with a run of these settings, or None."""
    for key, value in asked.items():
        if (values := recorded(trials, key)) - {value}:
            return (f"{trials_file} holds trials with {key} {', '.join(map(str, sorted(values)))}, this run asks "
                    f"for {value} ({SETTINGS[key]}): their accuracies do not compare; resume with the same setting, "
                    "or start a new search with another --results-dir")
    return None


def trials_file_for(results_dir: str | os.PathLike) -> str:
    """The trials pickle paired with a results folder: results/ -> results.pkl, runs/b/ -> runs/b.pkl."""
    name = os.path.normpath(results_dir)
    if os.path.basename(name) in (".", ".."):  # the working folder itself: name the pickle after it, beside it
        name = os.path.abspath(name)
    return name + ".pkl"


def _jsonable(value):
    """Plain Python values for JSON: numpy scalars and arrays unwrapped, NaN and inf as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: dict) -> str:
    """The result as the indented, key-sorted JSON text of the result files."""
    return json.dumps(_jsonable(result), sort_keys=True, indent=4, separators=(",", ": "), allow_nan=False)


def print_json(result: dict) -> None:
    """Pretty-print a JSON-able structure (numpy values included)."""
    print(to_json(result))


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp"):
    """A temporary path beside `path` to write; once written, it replaces `path` durably (fsync, rename).

    Readers see the old content or the new, never a torn mix; an error or Ctrl-C while writing
    leaves the old file as it was. The temporary file is hidden and ends in `suffix`, which by
    default no reader of results globs for, even where a kill leaves it behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}"
    # Created as open() creates files, readable as the umask allows (mkstemp's would stay 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable, where the filesystem can: some (AFS, network and FUSE mounts) refuse to sync
    # a folder (EINVAL), as SQLite and git find, and the file is whole and in place either way.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_folder(folder: str | os.PathLike) -> None:
    """Make the folder and its parents where missing; a file in its place is "Not a directory", not "File exists"."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


def check_writable(folder: str | os.PathLike) -> None:
    """Make the folder and a file in it, removed at once: an OSError now rather than when hours of work are due there."""
    make_folder(folder)
    # A folder that cannot be written may still hold a writable file (a search's lock), so only a new file tells.
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check."):
            pass
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from None  # the folder, not the file that was not made


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a torn mix."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def result_path(result: dict, results_dir: str | os.PathLike = RESULTS_DIR) -> Path:
    """Where a result's file lives: `<model_name>.txt.json` in results_dir."""
    return Path(results_dir) / f"{result['model_name']}.txt.json"


def name_apart(result: dict, results_dir: str | os.PathLike, taken: set[str]) -> None:
    """Draw new hex digits for the result's model_name while a file in results_dir, or a name in `taken`, has it.

    Five hex digits collide: among a thousand failed trials (or networks that never learn, all at accuracy
    0.01 on CIFAR-100), two share them in one search of three; the second file would replace the first.
    """
    while result["model_name"] in taken or result_path(result, results_dir).exists():
        result["model_name"] = f"{result['model_name'].rsplit('_', 1)[0]}_{uuid.uuid4().hex[:5]}"
    taken.add(result["model_name"])


def save_json_result(result: dict, results_dir: str | os.PathLike = RESULTS_DIR) -> Path:
    """Write the result's file atomically; return its path."""
    path = result_path(result, results_dir)
    atomic_write(path, to_json(result).encode())
    return path


def load_json_result(path: str | os.PathLike) -> dict:
    """Read one result file."""
    with open(path) as f:
        return json.load(f)


# What the scripts read of a result besides its settings, and its type where present (null too): a file edited by hand
# into another is skipped, rather than stopping the analysis halfway.
NUMBER = (int, float)
RESULT_TYPES = {"status": str, "space": dict, "history": dict, "loss": NUMBER, "fine_best_accuracy": NUMBER,
                "coarse_best_accuracy": NUMBER, "test_fine_accuracy": NUMBER, "test_coarse_accuracy": NUMBER,
                "epochs_trained": int, "best_epoch": int, "train_seconds": NUMBER, "tid": int, "model_name": str,
                "train_images": int, "max_epochs": int, "retrained_from": str}


def not_a_result(result) -> str | None:
    """Why a file's JSON is not a result of the search, or None."""
    if not isinstance(result, dict) or "status" not in result or "space" not in result:
        return "no 'status' and 'space'"
    wrong = [key for key, kind in RESULT_TYPES.items()
             if result.get(key) is not None and (not isinstance(result[key], kind) or isinstance(result[key], bool))]
    if "history" not in wrong and not all(isinstance(v, list) for v in (result.get("history") or {}).values()):
        wrong.append("history")
    return f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} of the wrong type" if wrong else None


def iter_results(results_dir: str | os.PathLike = RESULTS_DIR):
    """Yield (path, result) for every readable result file, warning once for each unreadable one."""
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = load_json_result(path)
        except (OSError, ValueError) as err:
            warn(f"skipping {path}: not readable JSON ({err})")
            continue
        if why := not_a_result(result):
            warn(f"skipping {path}: not a result file ({why})")
            continue
        yield path, result


def validation_curve(result: dict, head: str = "fine") -> list[float]:
    """Validation accuracy per epoch of one head (`fine` or `coarse`), Keras 3 or 2017 key names."""
    history = result.get("history") or {}
    for key in (f"val_{head}_outputs_accuracy", f"val_{head}_outputs_acc"):
        if history.get(key):
            return [math.nan if v is None else float(v) for v in history[key]]
    return []


def best_epoch(curve: Sequence[float]) -> int | None:
    """The epoch (from 1) of a curve's highest accuracy, the first of equals as early stopping keeps it; None for no curve."""
    finite = [v for v in curve if math.isfinite(v)]
    return 1 + list(curve).index(max(finite)) if finite else None


def finished_curves(results: Iterable[dict]) -> list[list[float]]:
    """Validation fine accuracy per epoch of every finished trial (2017's too): what median pruning holds a trial against."""
    return [curve for result in results if result.get("status") == "ok" and (curve := validation_curve(result))]


def is_ok(result: dict) -> bool:
    """A finished trial with a usable loss (failed trials never count as best)."""
    loss = result.get("loss")
    return result.get("status") == "ok" and isinstance(loss, (int, float)) and math.isfinite(loss)


def failure_cause(error: str) -> str:
    """A failed trial's error with its numbers masked: failures of one cause share it (each out-of-memory names its own
    tensor's shape, each NaN its epoch, an object its address)."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "#", error)


def load_best_result(results_dir: str | os.PathLike = RESULTS_DIR) -> tuple[Path, dict] | None:
    """The (path, result) with the lowest `loss` field among the results, or None."""
    candidates = [(r["loss"], str(p), p, r) for p, r in iter_results(results_dir) if is_ok(r)]
    if not candidates:
        return None
    _, _, path, result = min(candidates, key=lambda c: c[:2])
    return path, result


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


class TrialsFileError(Exception):
    """The trials pickle cannot be used; the message is one line for the user."""


class BrokenTrialsFile(TrialsFileError):
    """The trials pickle holds no hyperopt Trials: torn, or another file."""


def load_trials(path: str | os.PathLike):
    """Load a hyperopt Trials pickle, or raise TrialsFileError (BrokenTrialsFile where it holds none) without touching
    the file."""
    from hyperopt import Trials

    try:
        with open(path, "rb") as f:
            trials = pickle.load(f)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise TrialsFileError(f"{path} is a folder, not a trials pickle: give the pickle's path (results.pkl, say)") from None
    except OSError as err:  # no permission: the file may be fine
        raise TrialsFileError(f"cannot read {path}: {err.strerror}") from None
    except Exception as err:  # noqa: BLE001 -- any unpickling failure means a broken file
        raise BrokenTrialsFile(f"{path} is corrupt or truncated ({type(err).__name__})") from None
    if not isinstance(trials, Trials):
        raise BrokenTrialsFile(f"{path} holds a {type(trials).__name__}, not hyperopt Trials")
    return trials


def finished_copy(trials):
    """A plain hyperopt Trials of the finished trials only, in tid order (what the pickle holds).

    A trial that raised (a Spark worker that crashed) becomes a failed trial with its error.
    """
    from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, STATUS_FAIL, Trials

    docs = []
    # _dynamic_trials: refresh() hides trials in the error state from .trials.
    for trial in sorted(trials._dynamic_trials, key=lambda t: t["tid"]):
        if trial["state"] == JOB_STATE_ERROR:
            kind, text = (trial["misc"].get("error") or ("Error", ""))[:2]
            lines = str(text).strip().splitlines()
            name = hashlib.sha1(f"{trial['tid']}{trial.get('book_time')}".encode()).hexdigest()[:5]
            trial = {**trial, "state": JOB_STATE_DONE, "result": {
                "status": STATUS_FAIL, "error": lines[-1] if lines else str(kind),
                "model_name": f"model_failed_{name}", "space": None, "pruned": False,
                "hyperopt_vals": {k: v[0] for k, v in trial["misc"]["vals"].items() if v}}}
        if trial["state"] == JOB_STATE_DONE:
            docs.append(trial)
    return holding(Trials(), docs)


def holding(trials, docs: list[dict]):
    """`trials` (empty, plain or Spark) with the given trial documents added, refreshed.

    New trials get ids above all of theirs: hyperopt numbers them from the count of ids it holds,
    and the trials of a parallel run finish out of order, so the saved ones can leave gaps (trial 3
    saved while trial 2 still ran). Given ids 0, 1 and 3, hyperopt gave every new trial id 3, which
    the search took for a saved trial: none of them was saved.
    """
    trials._dynamic_trials.extend(docs)
    trials._ids.update(range(1 + max((doc["tid"] for doc in docs), default=-1)))
    trials.refresh()
    return trials


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (inode, modification time, size); None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def save_trials(trials, path: str | os.PathLike) -> None:
    """Pickle the trials atomically."""
    atomic_write(path, pickle.dumps(trials, protocol=pickle.HIGHEST_PROTOCOL))


def holder_in(lock_file) -> str:
    """Who holds a run's lock, as its holder wrote it into the lock file ("pid 1234")."""
    lock_file.seek(0)
    return lock_file.read().strip() or "another process"


class RunLock:
    """An exclusive lock on a results folder; the OS releases it when the process dies."""

    def __init__(self, results_dir: str | os.PathLike, *other_folders: str | os.PathLike):
        """`other_folders`: the run's others (its trials pickle's), which go with the folder if the run made them empty."""
        self.path = Path(results_dir) / ".search.lock"
        self.folders = [self.path.parent, *map(Path, other_folders)]
        self._file = None
        self._made_folders = []

    def acquire(self) -> bool:
        """Take the lock; False if another live process holds it (True, with a warning, where files cannot be locked)."""
        missing = {f for folder in self.folders for f in (folder, *folder.parents) if not f.is_dir()}
        self._made_folders = sorted(missing, key=lambda f: len(f.absolute().parts), reverse=True)  # innermost first
        make_folder(self.path.parent)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = holder_in(self._file)
            self._file.close()
            self._file = None
            return False
        except OSError as err:  # a filesystem without file locks: Lustre mounted noflock, NFS without its lock daemon
            warn(f"cannot lock {self.path.parent}/ ({err.strerror}): its filesystem has no file locks, so nothing "
                 "stops a second run from writing there at the same time; start one at a time")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()
        return True

    def holder_now(self) -> str | None:
        """Who holds the lock ("pid 1234") while a run does, else None; a look that holds it no longer than it takes."""
        try:
            with open(self.path) as file:
                try:
                    fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return holder_in(file)
        except OSError:  # no lock file: no run; or no file locks there, where nothing tells
            return None
        return None

    def release(self) -> None:
        """Let go of the lock; the folders it made for a run that wrote nothing there go with it."""
        if self._file is not None:
            if self._made_folders:  # a search stopped before its first result (the data would not load, Ctrl-C)
                with contextlib.suppress(OSError):
                    if os.listdir(self.path.parent) == [self.path.name]:
                        self.path.unlink()
                for folder in self._made_folders:  # one that holds something stays, and its parents with it
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            self._file.close()  # which lets go of the lock
            self._file = None
