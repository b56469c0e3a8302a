"""Run trials in parallel on Apache Spark through hyperopt's SparkTrials (optional: pyspark, Java 17+)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from precision import nvidia_gpu_count

REPO = Path(__file__).resolve().parent
# Shipped to every executor, so that workers need neither the repository nor a shared filesystem:
# all of the project's modules, so that a new import cannot be forgotten here.
PROJECT_MODULES = sorted(path.name for path in REPO.glob("*.py"))
GPU_LOCKS = "/tmp/hyperopt-cnn-gpu-{index}-{slot}.lock"  # held by the worker that trains on that GPU, in that slot
_worker_gpu_lock = None
# Both backends' switches from taking most of every GPU's memory at start to taking it as needed.
MEMORY_AS_NEEDED = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
DRIVER_SET = "HYPEROPT_CNN_DRIVER_SET"  # which of those the search's own process set for itself, not for its workers


# What Spark takes as a master (https://spark.apache.org/docs/latest/submitting-applications.html#master-urls).
# local[0] is not one: Spark refuses it, and its parallelism of 0 would have run the search without Spark.
MASTER_URL = re.compile(r"local(\[([1-9]\d*|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|(spark|k8s)://\S+|yarn")


class SparkUnavailable(Exception):
    """Spark cannot run here; the message says what to install or to check."""


def check_requirements() -> None:
    """Raise SparkUnavailable unless pyspark imports and a Java 17+ runtime is found."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable("--spark-master needs pyspark: pip install -r requirements-spark.txt") from None
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        raise SparkUnavailable("--spark-master needs a Java 17+ runtime: apt install openjdk-17-jre-headless (or set JAVA_HOME)")
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version)
    major = int(match.group(1)) if match else 0
    if major == 1 and match.group(2):  # "1.8.0" is Java 8
        major = int(match.group(2))
    if major < 17:
        raise SparkUnavailable(f"--spark-master needs Java 17+, found Java {major or 'of unknown version'} at {java}: "
                               "apt install openjdk-17-jre-headless (or set JAVA_HOME)")


def parallelism_of(master: str, requested: int | None) -> int:
    """--parallelism, else the threads of local[P] (P; local alone: 1), else 2."""
    if requested:
        return requested
    match = re.fullmatch(r"local(?:\[(\d+)(?:,\d+)?\])?", master)
    return int(match.group(1) or 1) if match else 2


def make_trials(master: str, parallelism: int, finished_docs: list[dict]):
    """SparkTrials on `master`, holding the finished trials of an earlier run."""
    from hyperopt import SparkTrials
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = (SparkSession.builder.master(master).appName("hyperopt-cnn-search")
                 .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    except Exception as err:  # noqa: BLE001 -- Spark's own log, above, says why: this says what to check
        raise SparkUnavailable(f"cannot start Spark on {master} ({type(err).__name__}): is that master up and "
                               "reachable from here? Spark's log above says more") from None
    spark.sparkContext.setLogLevel("ERROR")
    for module in PROJECT_MODULES:
        spark.sparkContext.addPyFile(str(REPO / module))
    # SparkTrials starts each trial's thread through pyspark without the session, which then warns
    # that Spark job tags will not be inherited: this search sets none.
    warnings.filterwarnings("ignore", "Spark session is not provided", UserWarning)
    from utils import holding

    return holding(SparkTrials(parallelism=parallelism, spark_session=spark), finished_docs)


def broadcast(value):
    """`value` as a broadcast of the running Spark session: each executor fetches it once.

    A trial's task would carry it every time, and Spark's temporary folder would keep each copy
    until the JVM collects its garbage: 177 MB a trial for CIFAR-100.
    """
    from pyspark import SparkContext

    return SparkContext.getOrCreate().broadcast(value)


class Poller:
    """Under Spark, trials finish on other threads: hands them to `save` every second, and once more at stop().

    `save(trials)` returns why the search must stop, or None; SparkTrials then cancels it.
    """

    def __init__(self, trials, save: Callable[[object], str | None]):
        self.trials, self.save = trials, save
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            if reason := self.save(self.trials):
                self.trials._fmin_cancelled = True
                self.trials._fmin_cancelled_reason = reason

    def stop(self) -> None:
        """Stop polling, then save the trials that finished since the last poll."""
        self._stop.set()
        self._thread.join()
        self.save(self.trials)


def cancel_queued(trials) -> bool:
    """Cancel the trials that SparkTrials holds for the next free slot, so that none of them starts; whether any was."""
    from hyperopt.base import JOB_STATE_CANCEL, JOB_STATE_NEW

    queued = [trial for trial in trials._dynamic_trials if trial["state"] == JOB_STATE_NEW]
    for trial in queued:
        trial["state"] = JOB_STATE_CANCEL
    return bool(queued)


def spare_the_gpus_in_the_driver() -> None:
    """Before the search's own process loads a backend: it trains nothing (its workers do), so it takes GPU memory
    as it needs it (a model to draw), not most of every GPU, which the workers' trials would then lack."""
    chosen = {name: value for name, value in MEMORY_AS_NEEDED.items() if name not in os.environ}
    os.environ.update(chosen, **{DRIVER_SET: ",".join(chosen)})


def worker_threads(parallelism: int) -> int:
    """The CPU threads that each of `parallelism` trials at once on this machine trains with: its share of the cores."""
    return max(1, (os.cpu_count() or 1) // parallelism)


def cpu_share(master: str, parallelism: int) -> str | None:
    """Where a local master's trials train on this machine's CPU (no GPU visible): the cores each one trains on, as the
    search says at start; None elsewhere."""
    from precision import accelerators

    if not re.fullmatch(r"local(\[.*\])?", master) or accelerators():
        return None
    return f"each on {worker_threads(parallelism)} of this machine's {os.cpu_count() or 1} CPU cores"


def prepare_worker(parallelism: int) -> None:
    """In a Spark worker: TensorFlow threads = its share of the cores; a GPU, shared evenly when trials outnumber GPUs."""
    global _worker_gpu_lock
    if "tensorflow" in sys.modules or os.environ.get("HYPEROPT_CNN_WORKER_READY"):
        return  # too late to change, or done already by this worker process
    for name in filter(None, os.environ.pop(DRIVER_SET, "").split(",")):
        os.environ.pop(name, None)  # inherited from the driver, as local workers are its children
    threads = str(worker_threads(parallelism))
    os.environ.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=threads,
                      HYPEROPT_CNN_WORKER_READY="1")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    gpus = nvidia_gpu_count()
    slots = -(-parallelism // gpus) if gpus else 0
    if slots > 1:
        # Trials share a GPU: each backend then takes memory as it needs it, not most of the GPU at once.
        os.environ.update(MEMORY_AS_NEEDED)
    for slot in range(slots):  # the first slot of every GPU, then the second...
        for index in range(gpus):
            lock = _open_lock(GPU_LOCKS.format(index=index, slot=slot))
            if lock is None:
                continue
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue
            _worker_gpu_lock = lock  # the worker process keeps this lock (and its GPU) for its whole life
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            return


def _open_lock(path: str) -> int | None:
    """A read-only descriptor of the lock file at path, created if missing; None if another user's is unreadable."""
    # Read-only, which flock needs no more than, so that one user's workers can take the lock files that
    # another user's search left in /tmp; and no O_CREAT on a file that exists, which Linux refuses
    # there for another user's file where fs.protected_regular is on.
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        except PermissionError:
            return None  # made under a umask such as 077: that user's workers coordinate among themselves
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another worker made it in between
