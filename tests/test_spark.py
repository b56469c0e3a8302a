"""Trials in parallel on Spark (local[2]): results, resume in both directions, failed workers."""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, can_become
from hyperspace import SPACES, decode, describe
from trial import code_version
from utils import load_trials

pyspark = pytest.importorskip("pyspark")
if not shutil.which("java"):
    pytest.skip("no Java runtime", allow_module_level=True)

import hyperopt_optimize  # noqa: E402
import search  # noqa: E402
import spark_search  # noqa: E402

SCRIPT = str(REPO / "hyperopt_optimize.py")
QUICK = ["--dataset", "synthetic", "--space", "tiny", "--train-subset", "300", "--verbose", "0", "--no-plot",
         "--epochs", "1"]
# A time zone half an hour off UTC's, for the log's local times: hyperopt's own are UTC.
INDIA, INDIA_TZ = datetime.timezone(datetime.timedelta(hours=5, minutes=30)), "IST-5:30"


def india_now() -> datetime.datetime:
    """The time in INDIA to the second, without its zone, as the log writes it."""
    return datetime.datetime.now(INDIA).replace(tzinfo=None, microsecond=0)


def run_cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, SCRIPT, *QUICK, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("master, requested, trials_at_once", [
    ("local[4]", None, 4), ("local[3,2]", None, 3), ("local", None, 1), ("local[*]", None, 2),
    ("spark://host:7077", None, 2), ("local[4]", 8, 8),
])
def test_trials_at_once_are_the_local_masters_threads_unless_parallelism_says(master, requested, trials_at_once):
    assert spark_search.parallelism_of(master, requested) == trials_at_once


def test_the_search_says_the_cores_each_local_trial_trains_on_where_no_gpu_is_visible(monkeypatch):
    import precision

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(precision, "accelerators", lambda: [])
    assert spark_search.cpu_share("local[4]", 4) == "each on 4 of this machine's 16 CPU cores"
    assert spark_search.cpu_share("local[*]", 32) == "each on 1 of this machine's 16 CPU cores"
    assert spark_search.cpu_share("spark://host:7077", 4) is None  # the executors' cores, not this machine's
    monkeypatch.setattr(precision, "accelerators", lambda: [("NVIDIA H100 80GB HBM3", (9, 0))])
    assert spark_search.cpu_share("local[4]", 4) is None


def test_a_workers_lines_are_written_whole_so_that_two_trials_starting_at_once_do_not_merge_them(monkeypatch):
    from pruning import MedianStoppingRule
    from trial import report

    writes = []

    class Unbuffered:  # a Spark worker's stdout: every write reaches the stream the other workers share at once
        def write(self, text):
            writes.append(text)
            return len(text)

        def flush(self):
            pass

    class FakeModel:
        stop_training = False

    monkeypatch.setattr(sys, "stdout", Unbuffered())
    report("2026-12-07 10:49:57 A trial, up to 1 epoch: 3 blocks of conv3 8/16/32")
    rule = MedianStoppingRule([[0.5] * 5] * 3)
    rule.set_model(FakeModel())
    rule.on_train_begin()
    for epoch in range(5):
        rule.on_epoch_end(epoch, {"val_fine_outputs_accuracy": 0.1})
    assert [text for text in writes if text] == ["2026-12-07 10:49:57 A trial, up to 1 epoch: 3 blocks of conv3 8/16/32\n",
                                                 "Pruned at epoch 5: best 0.1000 is below 0.5000, the median of 3 "
                                                 "finished trials' best by epoch 5\n"]


@pytest.mark.slow
def test_local_2_continues_a_sequential_search_two_trials_at_a_time_and_names_each_trials_network(tmp_path):
    assert run_cli(tmp_path, "--max-evals", "1").returncode == 0
    began = india_now()
    out = run_cli(tmp_path, "--max-evals", "3", "--spark-master", "local[2]", env={**os.environ, "TZ": INDIA_TZ})
    ended = india_now()
    assert out.returncode == 0, out.stderr[-2000:]
    # A worker cannot know its trial's number: the driver says which network each finished trial trained, and when.
    lines = out.stdout.splitlines()
    for trial in load_trials(tmp_path / "results.pkl").trials[1:]:
        tid, first = trial["tid"], f"Trial {trial['tid']}, up to 1 epoch: {describe(trial['result']['space'])}"
        started, = [line.removesuffix(f" {first}") for line in lines if line.endswith(f" {first}")]
        assert began <= datetime.datetime.fromisoformat(started) <= ended
        # The time on the worker's clock, as its own first line (in Spark's log, on stderr) and the result have it.
        assert f"{started} A trial, up to 1 epoch: {describe(trial['result']['space'])}" in out.stderr.splitlines()
        assert trial["result"]["started"] == started.replace(" ", "T") + "+05:30"
        assert lines.index(f"{started} {first}") < next(i for i, line in enumerate(lines) if line.startswith(f"Trial {tid}: "))
    assert "Resuming: 1 trial," in out.stdout
    # On a CPU, each trial trains on its share of the cores, where one at a time trains on all of them.
    cores = os.cpu_count()
    assert (f"Running up to 2 trials at once on Spark (local[2]), each on {max(1, cores // 2)} of this machine's {cores} "
            "CPU cores\n") in out.stdout
    assert "Warning" not in out.stderr  # pyspark's about job tags, which the search does not use
    trials = load_trials(tmp_path / "results.pkl")
    assert sorted(t["tid"] for t in trials.trials) == [0, 1, 2]
    assert all(t["result"]["status"] == "ok" for t in trials.trials)
    assert len(list((tmp_path / "results").glob("model_*.txt.json"))) == 3
    # A worker gets the project's modules alone: the commit that trained them is the driver's.
    assert {t["result"]["code_version"] for t in trials.trials} == {code_version()}


@pytest.mark.slow
def test_a_trials_task_carries_the_dataset_by_reference_as_spark_sends_each_executor_it_once(tmp_path, monkeypatch):
    import hyperopt
    from pyspark import cloudpickle  # the copy that pickles Spark's tasks

    from datasets import load_dataset

    tasks = []
    monkeypatch.setattr(hyperopt, "fmin", lambda fn, *args, **kwargs: tasks.append(cloudpickle.dumps(fn)))
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "1", "--spark-master", "local[2]"]) == 0
    data = load_dataset("synthetic", train_subset=300)
    dataset_bytes = sum(getattr(data, f"x_{split}").nbytes for split in ("train", "val", "test"))
    assert dataset_bytes > 3_000_000 and len(tasks[0]) < 50_000  # the objective as each trial's task carries it


class ExplodingObjective(search.Objective):
    """A worker whose trial dies with an exception (a crash, not a NaN)."""

    def __call__(self, space):
        raise RuntimeError("worker exploded")


@pytest.mark.slow
def test_a_crashed_worker_trial_is_recorded_as_failed_and_the_search_resumes_over_it(tmp_path, monkeypatch, capsys):
    from pyspark import cloudpickle  # the copy that pickles Spark's tasks

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(search, "Objective", ExplodingObjective)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", INDIA_TZ)
    time.tzset()
    try:
        began = india_now()
        assert hyperopt_optimize.main([*QUICK, "--max-evals", "3", "--spark-master", "local[2]"]) == 1
        ended = india_now()
    finally:
        monkeypatch.undo()
        time.tzset()
    trials = load_trials(tmp_path / "results.pkl")
    assert [t["result"]["status"] for t in trials.trials] == ["fail"] * 3
    failed = sorted((tmp_path / "results").glob("model_failed_*.txt.json"))
    assert len(failed) == 3 and "worker exploded" in failed[0].read_text()
    out, err = capsys.readouterr()
    assert "3 trials in a row failed with: RuntimeError: worker exploded" in err
    for trial in trials.trials:  # which network each crashed worker had, and since when
        point = decode(trial["misc"]["vals"], SPACES["tiny"])
        first = f" Trial {trial['tid']}, up to 1 epoch: {describe(point)}"
        started, = [line.removesuffix(first) for line in out.splitlines() if line.endswith(first)]
        assert began <= datetime.datetime.fromisoformat(started) <= ended

    # A trial that trains again, now without Spark: a sequential run resumes Spark's trials.
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "4"]) == 0
    assert "Resuming: 3 trials" in capsys.readouterr().out
    assert [t["result"]["status"] for t in load_trials(tmp_path / "results.pkl").trials] == ["fail"] * 3 + ["ok"]


class SlowObjective(search.Objective):
    """A trial that takes at least 8 s."""

    def __call__(self, space):
        import time

        time.sleep(8)
        return super().__call__(space)


@pytest.mark.slow
def test_trials_still_training_when_max_hours_is_up_finish_and_are_saved(tmp_path, monkeypatch, capsys):
    from pyspark import cloudpickle  # the copy that pickles Spark's tasks

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(search, "Objective", SlowObjective)
    monkeypatch.chdir(tmp_path)
    # Both trials start within a second or two, and train past the 7.2 s allowed: hyperopt's own timeout would cancel
    # them. The third, suggested meanwhile, waits for a free slot until then.
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "6", "--max-hours", "0.002", "--spark-master", "local[2]"]) == 0
    assert "--max-hours 0.002 is up: no more trials start; 2 finished trials saved." in capsys.readouterr().out
    trials = load_trials(tmp_path / "results.pkl")
    assert [t["result"]["status"] for t in trials.trials] == ["ok", "ok"]
    assert len(list((tmp_path / "results").glob("model_*.txt.json"))) == 2


# A Spark worker as prepare_worker leaves it: its GPU and memory settings on one line; then it holds its
# lock until its stdin closes. Run as the user whose id is argv[3] (0: as it is).
WORKER = """
import os, sys, spark_search
spark_search.GPU_LOCKS = sys.argv[1] + "/gpu-{index}-{slot}.lock"
if int(sys.argv[3]):
    os.setgid(int(sys.argv[3]))
    os.setuid(int(sys.argv[3]))
os.umask(0o022)
spark_search.prepare_worker(int(sys.argv[2]))
print(os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"),
      os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), flush=True)
sys.stdin.read()
"""


def start_worker(lock_dir, parallelism, uid=0):
    """A worker process on a machine with two (fake) GPUs, whose lock files lie in lock_dir."""
    fake = lock_dir / "bin" / "nvidia-smi"
    if not fake.exists():
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "HYPEROPT_CNN_WORKER_READY")}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    return subprocess.Popen([sys.executable, "-c", WORKER, str(lock_dir), str(parallelism), str(uid)], cwd=REPO,
                            env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def chosen_gpu(worker):
    """What the worker chose: its CUDA_VISIBLE_DEVICES, memory growth and preallocation."""
    return worker.stdout.readline().split()


@pytest.mark.parametrize("parallelism, devices, shared", [(2, ["0", "1"], False), (4, ["0", "0", "1", "1"], True)])
def test_spark_workers_spread_over_the_gpus_and_share_them_only_when_trials_outnumber_them(tmp_path, parallelism, devices, shared):
    # Each worker holds its GPU for its life: all of them stay up until every one has chosen.
    workers = [start_worker(tmp_path, parallelism) for _ in range(parallelism)]
    chosen = [chosen_gpu(w) for w in workers]
    for w in workers:
        w.communicate("", timeout=60)
    assert sorted(c[0] for c in chosen) == devices
    assert all(c[1:] == (["true", "false"] if shared else ["None", "None"]) for c in chosen)


def test_the_drivers_own_gpu_memory_settings_do_not_reach_its_workers(tmp_path, monkeypatch):
    for name in ("TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        monkeypatch.delenv(name, raising=False)
    spark_search.spare_the_gpus_in_the_driver()  # as hyperopt_optimize.py does under Spark, before a backend loads
    assert (os.environ["TF_FORCE_GPU_ALLOW_GROWTH"], os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]) == ("true", "false")
    worker = start_worker(tmp_path, 2)  # inherits this environment, as Spark's local workers do
    assert chosen_gpu(worker) == ["0", "None", "None"]  # a GPU of its own, all of whose memory its backend may take
    worker.communicate("", timeout=60)


def test_memory_settings_of_the_users_own_reach_the_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    spark_search.spare_the_gpus_in_the_driver()
    worker = start_worker(tmp_path, 2)
    assert chosen_gpu(worker) == ["0", "true", "None"]
    worker.communicate("", timeout=60)


@pytest.mark.skipif(not (can_become(60001) and can_become(60002)), reason="plays two users, which needs root")
def test_a_second_users_workers_share_the_gpu_lock_files_of_the_first():
    first_user, second_user = 60001, 60002
    with tempfile.TemporaryDirectory() as shared:  # not in tmp_path, which only pytest's user may enter
        lock_dir = Path(shared)
        lock_dir.chmod(0o1777)  # like /tmp: anyone may make files there, and only their owner remove them
        first = start_worker(lock_dir, 2, first_user)
        assert chosen_gpu(first)[0] == "0"
        second = start_worker(lock_dir, 2, second_user)
        assert chosen_gpu(second)[0] == "1"  # GPU 0 is the first user's while that worker lives
        first.communicate("", timeout=60)
        third = start_worker(lock_dir, 2, second_user)
        assert chosen_gpu(third)[0] == "0"  # through the lock file the first user left
        for w in (second, third):
            w.communicate("", timeout=60)
    assert [w.returncode for w in (first, second, third)] == [0, 0, 0]


def test_a_spark_master_that_cannot_be_reached_gets_a_one_line_message(tmp_path, monkeypatch, capsys):
    from pyspark.sql import SparkSession

    def unreachable(builder):  # as Spark gives up after a minute of retries on a master that is down
        raise RuntimeError("Cannot call methods on a stopped SparkContext.\nThis stopped SparkContext was created at:")

    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", unreachable)
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "1", "--spark-master", "spark://nowhere:7077"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: cannot start Spark on spark://nowhere:7077 (RuntimeError): is that master up and reachable "
                   "from here? Spark's log above says more\n")


def test_missing_java_gets_a_one_line_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "1", "--spark-master", "local[2]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Java 17+" in err and "openjdk-17-jre-headless" in err and len(err.splitlines()) == 1


def test_missing_pyspark_gets_a_one_line_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "1", "--spark-master", "local[2]"]) == 2
    assert "pip install -r requirements-spark.txt" in capsys.readouterr().err


@pytest.mark.slow
def test_the_spark_benchmark_trains_the_same_networks_one_at_a_time_and_on_spark_and_prints_both(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_spark.py"), "--trials", "2", "--epochs", "1",
                           "--train-subset", "300", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(s["mode"], s["trials"], s["failed"], s["exit_code"]) for s in report["searches"]] == [
        ("sequential", 2, 0, 0), ("local[2]", 2, 0, 0)]
    # Each Spark trial trains on its share of the machine's cores.
    cores = os.cpu_count()
    assert report["searches"][1]["device"].endswith(f", {max(1, cores // 2)} core{'s' if cores // 2 > 1 else ''})")
    assert report["comparison"]["same_networks"] and report["comparison"]["trials_compared"] == 2
    table = done.stdout.splitlines()
    assert [line.split()[:3] for line in table if line.startswith(("sequential ", "local[2] "))] == [
        ["sequential", "2", "0"], ["local[2]", "2", "0"]]
    assert table[-1].startswith("local[2]: ") and "x the sequential search's trials an hour; the same networks" in table[-1]


def test_the_spark_benchmark_tells_searches_that_trained_other_networks_apart():
    sys.path.insert(0, str(REPO / "bench"))
    from bench_spark import compare

    def result(loss, **space):
        return {"status": "ok", "loss": loss, "space": {"batch_size": 32, **space}}

    one = {0: result(-0.5), 1: result(-0.25)}
    assert compare(one, {0: result(-0.5), 1: result(-0.27)}) == {
        "same_networks": True, "trials_compared": 2, "max_accuracy_gap": 0.02, "median_accuracy_gap": 0.01}
    assert not compare(one, {0: result(-0.5), 1: result(-0.25, batch_size=64)})["same_networks"]
    assert not compare(one, {0: result(-0.5)})["same_networks"]
