"""The search driver as a user runs it: resume, kills, signals, the lock, broken pickles, failures."""

import datetime
import importlib.metadata
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli import plural
from conftest import FOUR_GPUS, REPO, can_become, fake_nvidia_smi, swallow_a_signal_while_the_data_loads
from hyperspace import active, describe
from precision import cpu_name
from leaderboard import leaderboard_header, leaderboard_row, leaderboard_title
from trial import code_version, pace, trial_line
from utils import load_trials, save_trials

SCRIPT = str(REPO / "hyperopt_optimize.py")
QUICK = ["--dataset", "synthetic", "--space", "tiny", "--train-subset", "300", "--verbose", "0", "--no-plot"]


def run_cli(tmp_path, *args, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *QUICK, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


def start_cli(tmp_path, *args):
    """The search in the background, its output to a pipe, as in a user's shell: without PYTHONUNBUFFERED."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, SCRIPT, *QUICK, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_line(proc, text, timeout=120):
    """Read the process's output until a line contains `text`; return everything read."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"never saw {text!r} in:\n{''.join(seen)}")


@pytest.mark.parametrize("ended, said", [
    ({"epochs_trained": 8, "best_epoch": 8}, "best epoch 8 of 8, 12 s"),  # the whole budget: --epochs may be too few
    ({"epochs_trained": 6, "best_epoch": 3}, "best epoch 3 of 6, stopped early, 12 s"),  # --patience 3
    ({"epochs_trained": 5, "best_epoch": 5, "pruned": True}, "best epoch 5 of 5, pruned, 12 s"),
    ({"epochs_trained": 4, "best_epoch": 2, "diverged_at_epoch": 4}, "best epoch 2 of 4, diverged in epoch 4, 12 s"),
])
def test_a_trials_line_says_its_best_epoch_and_why_it_ended_before_its_budget(ended, said):
    result = {"status": "ok", "tid": 7, "fine_best_accuracy": 0.5, "coarse_best_accuracy": 0.6, "pruned": False,
              "max_epochs": 8, "train_seconds": 12.3, **ended}
    assert trial_line(result, -0.5, "validation") == f"Trial 7: fine 0.5000 / coarse 0.6000 validation accuracy, {said}; best so far 0.5000"


def test_a_leaderboard_says_how_long_its_trials_trained_where_each_finished_one_recorded_it():
    finished = {"status": "ok", "pruned": False, "train_seconds": 7200.0}
    trials = [finished, {**finished, "pruned": True, "train_seconds": 600.0}, {"status": "fail", "train_seconds": 12.0},
              {"status": "fail"}]  # a Spark worker that crashed
    assert leaderboard_title(2, trials) == "Top 2 of 4 trials (2 failed, 1 pruned; 2.2 h of training):"
    assert leaderboard_title(1, [{**finished, "train_seconds": 45.2}]) == "Top 1 of 1 trial (0 failed, 0 pruned; 45 s of training):"
    # The 2017 files recorded no time: the count alone, rather than a sum of some.
    assert leaderboard_title(2, [finished, {"status": "ok"}]) == "Top 2 of 2 trials (0 failed, 0 pruned):"


def test_a_leaderboard_row_marks_the_figures_a_trial_does_not_record():
    assert leaderboard_header("model") == "rank trial    fine  coarse    test epochs pruned  model"
    # Trained on a dataset without coarse labels, selected on the test set: no coarse, no separate test figure.
    assert leaderboard_row(1, 12, 0.6761, None, None, 37, True, "model_a") == "   1    12  0.6761       -       -     37    yes  model_a"
    assert leaderboard_row(2, None, 0.5, 0.6, 0.49, None, False, "") == "   2     -  0.5000  0.6000  0.4900      -     no  "


def result_files(tmp_path):
    return sorted((tmp_path / "results").glob("model_*.txt.json"))


@pytest.mark.slow
def test_the_search_says_which_precision_and_widths_its_trials_train_with(tmp_path):
    done = run_cli(tmp_path, "--max-evals", "1", "--epochs", "1", "--precision", "float32", "--width-multiple", "16")
    assert done.returncode == 0, done.stderr
    assert f"precision float32, on the CPU ({cpu_name()}): no GPU is visible to tensorflow" in done.stdout
    assert "trial/s" not in done.stdout + done.stderr  # output to a file: no progress bar redrawn into it
    result = json.loads(result_files(tmp_path)[0].read_text())
    assert result["precision"] == "float32"
    assert result["space"]["width_multiple"] == 16  # what a retrain of this result rebuilds with
    assert result["code_version"] == code_version() and result["backend_version"] == importlib.metadata.version("tensorflow")
    started = result["started"][:19].replace("T", " ")  # its first line's time, in the zone it records
    assert f"{started} Trial 0, up to 1 epoch: {describe(result['space'])}\n" in done.stdout
    # What to run next, as this ran: the sibling scripts, on the same folder.
    assert (f"Next: python3 {REPO / 'analyze_results.py'} (leaderboard, importance, plots); python3 "
            f"{REPO / 'retrain_best_with_tensorboard.py'} (the best network again, with TensorBoard logs and its best "
            "weights)\n") in done.stdout


def test_the_code_version_is_the_git_commit_and_says_whether_tracked_files_changed_since(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert code_version(str(tmp_path)) is None  # not a git checkout: a copy of the scripts
    git("init", "-q")
    (tmp_path / "neural_net.py").write_text("x = 1\n")
    git("add", "neural_net.py")
    git("commit", "-q", "-m", "first")
    commit = git("rev-parse", "--short=12", "HEAD")
    assert code_version(str(tmp_path)) == commit
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "model.txt.json").write_text("{}")  # output, untracked: the code is still the commit's
    assert code_version(str(tmp_path)) == commit
    (tmp_path / "neural_net.py").write_text("x = 2\n")
    assert code_version(str(tmp_path)) == f"{commit}-dirty"


@pytest.mark.slow
def test_the_search_runs_on_the_jax_backend_too(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, *QUICK, "--max-evals", "1", "--epochs", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr
    assert "on jax" in done.stdout
    result = json.loads(result_files(tmp_path)[0].read_text())
    assert result["status"] == "ok" and result["keras_backend"] == "jax"
    assert result["backend_version"] == importlib.metadata.version("jax")


@pytest.mark.slow
def test_resume_runs_up_to_max_evals_with_new_suggestions(tmp_path):
    first = run_cli(tmp_path, "--max-evals", "2", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert len(load_trials(tmp_path / "results.pkl").trials) == 2 and len(result_files(tmp_path)) == 2
    # TensorFlow counts each new trial's traces of its steps as retraces of one function: none is said.
    assert "retracing" not in first.stdout + first.stderr

    second = run_cli(tmp_path, "--max-evals", "3", "--epochs", "1")
    assert second.returncode == 0, second.stderr
    assert "Resuming: 2 trials, best fine accuracy" in second.stdout
    trials = load_trials(tmp_path / "results.pkl")
    assert len(trials.trials) == 3 and len(result_files(tmp_path)) == 3
    assert [t["tid"] for t in trials.trials] == [0, 1, 2]
    assert trials.trials[2]["misc"]["vals"] not in [t["misc"]["vals"] for t in trials.trials[:2]]
    assert "Top 3 of 3 trials (0 failed, 0 pruned; " in second.stdout  # too few finished trials before them to prune

    # The analysis ranks the trials as the search did, each with the same figures in the same columns.
    def rows(out):
        lines = out.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("rank trial    fine  coarse    test epochs pruned  "))
        return [line[:57] for line in lines[start + 1:start + 4]]  # the figures and the network's parameters

    analysis = subprocess.run([sys.executable, str(REPO / "analyze_results.py"), "--out", "analysis"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stderr
    assert rows(analysis.stdout) == rows(second.stdout) and len(rows(second.stdout)) == 3


@pytest.mark.slow
def test_sigkill_during_training_loses_only_the_running_trial_and_a_network_killed_in_two_runs_is_not_trained_again(tmp_path):
    # Trial 0 finishes in seconds; trial 1, killed 1.5 s in, is still compiling or training its first epochs.
    proc = start_cli(tmp_path, "--max-evals", "20", "--epochs", "4", "--prune", "none")
    log = wait_for_line(proc, "Trial 1, up to")  # without line buffering, held back until the search ended
    time.sleep(1.5)
    proc.kill()  # SIGKILL, as the host's out-of-memory killer sends; a crash in native code ends a run as abruptly
    log += proc.communicate()[0]
    trials = load_trials(tmp_path / "results.pkl")
    finished = len(trials.trials)
    assert finished >= 1 and len(result_files(tmp_path)) == finished
    assert all(f"Trial {tid}: fine " in log for tid in range(finished)), log

    def killed_in_its_first_trial() -> str:
        proc = start_cli(tmp_path, "--max-evals", "20", "--epochs", "4", "--prune", "none")
        log = wait_for_line(proc, f"Trial {finished}, up to")
        proc.kill()
        proc.communicate()
        assert f"The last run's process died while trial {finished} trained (started " in log
        return log.splitlines()[-1].split(" ", 2)[2]  # the network it trained, without when

    # A resume suggests from the finished trials and the seed: were the network of its first trial what kills the
    # process, every resume would train it again.
    network = killed_in_its_first_trial()
    assert killed_in_its_first_trial() == network

    again = run_cli(tmp_path, "--max-evals", str(finished + 2), "--epochs", "1")
    assert again.returncode == 0, again.stderr
    assert f"Resuming: {plural(finished, 'trial')}," in again.stdout
    assert "it died so 2 times on that network: if the search suggests its network again, it is recorded as failed" in (
        again.stdout)
    assert (f"Trial {finished} FAILED: ProcessDied: the search's process died while this network trained, in 2 runs "
            in again.stdout)
    trials = load_trials(tmp_path / "results.pkl").trials
    assert [t["result"]["status"] for t in trials[finished:]] == ["fail", "ok"]
    assert not (tmp_path / "results" / ".running_trial").exists()  # a clean stop leaves no trial marked


@pytest.mark.slow
def test_second_run_is_refused_and_sigint_stops_cleanly(tmp_path):
    folder = ["--results-dir", "my runs"]  # a space, which the resume command must quote
    proc = start_cli(tmp_path, "--epochs", "4", "--prune", "none", *folder)  # trials one after another until the signal
    wait_for_line(proc, "Trial 1, up to")
    rival = run_cli(tmp_path, "--max-evals", "1", *folder)
    assert rival.returncode == 2 and "already running" in rival.stderr

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-5000:]
    saved = len(load_trials(tmp_path / "my runs.pkl").trials)
    assert saved >= 1 and f"SIGINT: stopped; {plural(saved, 'finished trial')} saved" in out
    resume = next(line for line in out.splitlines() if line.startswith("Resume with: "))
    assert shlex.split(resume.removeprefix("Resume with: ")) == ["python3", SCRIPT, *QUICK, "--epochs", "4", "--prune", "none", *folder]
    analyse, retrain = next(line for line in out.splitlines() if line.startswith("Next: ")).split("; ")
    assert shlex.split(analyse.removeprefix("Next: ").removesuffix(" (leaderboard, importance, plots)")) == [
        "python3", str(REPO / "analyze_results.py"), *folder]
    assert shlex.split(retrain)[:4] == ["python3", str(REPO / "retrain_best_with_tensorboard.py"), *folder]

    # The lock died with the process: a new run starts.
    assert run_cli(tmp_path, "--max-evals", "2", "--epochs", "1", *folder).returncode == 0


@pytest.mark.slow
def test_sigterm_exits_143(tmp_path):
    proc = start_cli(tmp_path, "--epochs", "30")
    wait_for_line(proc, "Trial 0, up to")
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "SIGTERM" in out, out[-3000:]


@pytest.mark.parametrize("content, message", [
    (b"", "corrupt or truncated"),
    (b"\x80\x04\x95 truncated", "corrupt or truncated"),
    (pickle.dumps([1, 2, 3]), "not hyperopt Trials"),
])
def test_a_broken_trials_pickle_is_refused_untouched(tmp_path, content, message):
    (tmp_path / "results.pkl").write_bytes(content)
    out = run_cli(tmp_path, "--max-evals", "1")
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.strip().endswith("; move it away to start a new search")
    assert (tmp_path / "results.pkl").read_bytes() == content


def test_a_search_on_a_machine_of_several_gpus_trains_on_the_first_alone(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_GPUS)
    (tmp_path / "results.pkl").write_bytes(b"")  # so that it stops before the data loads
    assert in_process(tmp_path, monkeypatch) == 2
    assert "4 GPUs here, and Keras uses one: GPU 0 alone" in capsys.readouterr().out
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.slow
def test_the_2017_trials_pickle_resumes_as_2017_searched_and_only_so(tmp_path, monkeypatch, capsys, reference_dir):
    import numpy as np

    import datasets
    import hyperopt_optimize
    import neural_net

    shutil.copy(reference_dir / "results.pkl", tmp_path / "results.pkl")
    monkeypatch.chdir(tmp_path)
    # The quick runs' synthetic data would have TPE compare them with 2017's CIFAR-100 test accuracies.
    assert hyperopt_optimize.main([*QUICK, "--max-evals", "43"]) == 2
    assert "results.pkl holds trials with dataset cifar100, this run asks for synthetic" in capsys.readouterr().err

    def cifar100(name, **kwargs):  # CIFAR-100's sizes, without its images (not downloadable here)
        images = np.broadcast_to(np.zeros((1, 32, 32, 3), np.uint8), (50_000, 32, 32, 3))
        fine = np.arange(50_000) % 100
        return datasets.Dataset(name, images, fine, fine // 5, images[:10_000], fine[:10_000], fine[:10_000] // 5,
                                images[:10_000], fine[:10_000], fine[:10_000] // 5, 100, 20, selects_on=kwargs["select_on"])

    monkeypatch.setattr(datasets, "load_dataset", cifar100)
    monkeypatch.setattr(neural_net, "build_and_train",
                        lambda space, data, **_: (None, neural_net.failure(space, data, RuntimeError("not trained here"))))
    as_2017 = ["--select-on", "test", "--max-evals", "43", "--no-plot", "--verbose", "0"]
    assert hyperopt_optimize.main(as_2017) == 0
    out, err = capsys.readouterr()
    assert "Resuming: 42 trials, best fine accuracy 0.6761" in out
    assert "holds trials of --width-multiple 1, this run's is 8" in err  # 2017 built the exact widths
    trials = load_trials(tmp_path / "results.pkl")
    assert len(trials.trials) == 43 and trials.results[-1]["selected_on"] == "test"


def in_process(tmp_path, monkeypatch, *args):
    import hyperopt_optimize

    monkeypatch.chdir(tmp_path)
    return hyperopt_optimize.main([*QUICK, "--epochs", "1", *args])


def test_a_search_on_a_folder_another_search_holds_is_refused_before_it_makes_a_folder(tmp_path, monkeypatch, capsys):
    from utils import RunLock

    running = RunLock(tmp_path / "results")
    assert running.acquire()
    try:
        assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--trials-file", "p/r.pkl") == 2
    finally:
        running.release()
    assert capsys.readouterr().err.startswith(f"error: a search is already running on results/ (pid {os.getpid()})")
    assert not (tmp_path / "p").exists()


def test_trials_that_drew_the_same_name_keep_a_result_file_each(tmp_path, monkeypatch):
    import neural_net

    calls = []

    def same_name(space, data, **kwargs):  # as five hex digits can draw twice, over a long search
        calls.append(space)
        failed = neural_net.failure(space, data, RuntimeError(("disk", "memory", "network")[len(calls) - 1]))
        return None, failed | {"model_name": "model_failed_00000"}

    monkeypatch.setattr(neural_net, "build_and_train", same_name)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 0  # and one drawn in a later run
    files = {json.loads(p.read_text())["model_name"]: p.name for p in result_files(tmp_path)}
    names = [t["result"]["model_name"] for t in load_trials(tmp_path / "results.pkl").trials]
    assert len(files) == len(set(names)) == 3 and set(files) == set(names) and "model_failed_00000" in names
    assert all(files[name] == f"{name}.txt.json" for name in names)


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    import neural_net

    real = neural_net.build_and_train
    calls = []

    def first_one_fails(space, data, **kwargs):
        calls.append(space)
        if len(calls) == 1:
            return real({**space, "lr_rate_mult": 1e35}, data, **kwargs)
        return real(space, data, **kwargs)

    monkeypatch.setattr(neural_net, "build_and_train", first_one_fails)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 0
    trials = load_trials(tmp_path / "results.pkl")
    assert [t["result"]["status"] for t in trials.trials] == ["fail", "ok", "ok"]
    failed = [p for p in result_files(tmp_path) if "failed" in p.name]
    assert len(failed) == 1 and "NaN" in failed[0].read_text()
    assert "Top 2 of 3 trials (1 failed, 0 pruned; " in capsys.readouterr().out


def test_a_signal_that_a_library_swallowed_while_the_data_loaded_still_stops_the_search_before_it_trains(
        tmp_path, monkeypatch, capsys):
    swallow_a_signal_while_the_data_loads(monkeypatch)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 130
    assert capsys.readouterr().err.strip().endswith("Interrupted before the search started; nothing was changed.")
    assert not (tmp_path / "results.pkl").exists() and not result_files(tmp_path)


def test_a_signal_that_a_trial_swallowed_still_stops_the_search(tmp_path, monkeypatch):
    import neural_net

    def swallowed(space, data, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt as err:  # as C code that TensorFlow calls into can: it became an error
            return None, neural_net.failure(space, data, SystemError(f"bad argument to internal function ({err!r})"))
        raise AssertionError("SIGTERM was not turned into KeyboardInterrupt")

    monkeypatch.setattr(neural_net, "build_and_train", swallowed)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 143
    assert not (tmp_path / "results.pkl").exists() and not result_files(tmp_path)


def test_a_second_ctrl_c_while_the_search_reports_its_stop_does_not_cut_the_report_short(tmp_path, monkeypatch, capsys):
    import search
    import neural_net

    calls = []

    def interrupted_second(space, data, **kwargs):
        calls.append(space)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return None, neural_net.failure(space, data, RuntimeError("out of memory"))

    report = search.Search.print_leaderboard

    def impatient(self, trials):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while the first one's report prints
        report(self, trials)

    monkeypatch.setattr(neural_net, "build_and_train", interrupted_second)
    monkeypatch.setattr(search.Search, "print_leaderboard", impatient)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 130
    out = capsys.readouterr()
    assert "SIGINT: stopped; 1 finished trial saved" in out.out and "\nResume with: " in out.out
    assert "Interrupted" not in out.err  # "before the search started; nothing was changed", it said
    assert len(load_trials(tmp_path / "results.pkl").trials) == 1


def test_a_ctrl_c_after_the_trials_ended_says_they_are_saved(tmp_path, monkeypatch, capsys):
    import search
    import neural_net

    def leaderboard(self, trials):  # the last thing a search does; under Spark, after its poller stopped
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, **kwargs: (
        None, neural_net.failure(space, data, RuntimeError("out of memory"))))
    monkeypatch.setattr(search.Search, "print_leaderboard", leaderboard)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 130
    assert capsys.readouterr().err.endswith("\nInterrupted; 2 finished trials saved.\n")
    assert len(load_trials(tmp_path / "results.pkl").trials) == 2


@pytest.mark.slow
def test_a_resume_after_trials_that_finished_out_of_order_saves_every_new_trial(tmp_path, monkeypatch, capsys):
    from hyperopt import Trials

    from utils import holding

    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    # As a Spark run stopped while trial 0 still trained and trial 1 had finished: saved without trial 0.
    trials = load_trials(tmp_path / "results.pkl")
    running = trials.trials[0]["result"]["model_name"]
    save_trials(holding(Trials(), trials.trials[1:]), tmp_path / "results.pkl")
    (tmp_path / "results" / f"{running}.txt.json").unlink()
    capsys.readouterr()

    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    out = capsys.readouterr().out
    assert "Resuming: 1 trial," in out and "Trial 2: fine" in out
    assert [t["tid"] for t in load_trials(tmp_path / "results.pkl").trials] == [1, 2]
    assert sorted(json.loads(p.read_text())["tid"] for p in result_files(tmp_path)) == [1, 2]


@pytest.mark.slow
def test_an_enqueued_network_trains_first_and_a_resume_does_not_train_it_again(tmp_path, monkeypatch, capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--enqueue", "2017-best") == 2
    assert capsys.readouterr().err.startswith("error: --enqueue 2017-best (--space tiny): lr_rate_mult 0.65")
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--enqueue", "best", "--trials-file", "p/r.pkl") == 2
    assert capsys.readouterr().err == "error: --enqueue best: neither 2017-best, demo, a result file nor a results folder\n"
    assert not (tmp_path / "results").exists() and not (tmp_path / "p").exists()

    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--results-dir", "a", "--seed", "1") == 0
    [earlier] = (tmp_path / "a").glob("model_*.txt.json")
    enqueue = ["--results-dir", "b", "--enqueue", str(earlier)]
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", *enqueue) == 0
    out = capsys.readouterr().out
    assert f"--enqueue {earlier}: trained first" in out and f"Trial 0 (--enqueue {earlier}), up to " in out
    point = load_trials(tmp_path / "a.pkl").trials[0]["misc"]["vals"]
    assert load_trials(tmp_path / "b.pkl").trials[0]["misc"]["vals"] == point

    assert in_process(tmp_path, monkeypatch, "--max-evals", "2", *enqueue) == 0
    out = capsys.readouterr().out
    assert f"--enqueue {earlier}: trained already, as trial 0" in out and "Trial 1, up to " in out
    trials = load_trials(tmp_path / "b.pkl").trials
    assert len(trials) == 2 and trials[1]["misc"]["vals"] != point


def test_an_enqueued_network_whose_trials_failed_is_trained_again_up_to_three_tries(tmp_path, monkeypatch, capsys):
    import neural_net

    errors = iter(["disk", "device lost", "out of host memory"])  # not one error three times: the search goes on

    def failing_then_instant(space, data, **kw):
        if error := next(errors, None):
            return None, neural_net.failure(space, data, RuntimeError(error))
        return instant(space, data, **kw)

    monkeypatch.setattr(neural_net, "build_and_train", failing_then_instant)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    [failed] = (tmp_path / "results").glob("model_failed_*.txt.json")
    enqueue = ["--enqueue", str(failed)]
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2", *enqueue) == 0
    out = capsys.readouterr().out
    assert f"--enqueue {failed}: its trial 0 failed (RuntimeError: disk); trained again first\n" in out
    assert f"Trial 1 (--enqueue {failed}), up to " in out
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", *enqueue) == 0
    assert (f"--enqueue {failed}: its trials 0, 1 failed, the last with RuntimeError: device lost; trained again first"
            in capsys.readouterr().out)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "4", *enqueue) == 0
    out = capsys.readouterr().out
    assert (f"--enqueue {failed}: its trials 0, 1, 2 failed, the last with RuntimeError: out of host memory; not trained "
            "again\n") in out and "Trial 3, up to " in out
    trials = load_trials(tmp_path / "results.pkl").trials
    assert [t["result"]["status"] for t in trials] == ["fail", "fail", "fail", "ok"]
    assert [t["result"].get("suggested_by") for t in trials] == ["random", "enqueue", "enqueue", "random"]
    assert trials[1]["misc"]["vals"] == trials[2]["misc"]["vals"] == trials[0]["misc"]["vals"] != trials[3]["misc"]["vals"]
    # Once a trial of it trained, it is trained already.
    assert in_process(tmp_path, monkeypatch, "--max-evals", "5", "--enqueue", str(next(
        (tmp_path / "results").glob("model_0*.txt.json")))) == 0
    assert ": trained already, as trial 3\n" in capsys.readouterr().out


def test_a_network_that_killed_the_process_in_two_runs_fails_without_training_and_is_not_enqueued_again(
        tmp_path, monkeypatch, capsys):
    import neural_net

    trained = []
    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, **kw: trained.append(space) or instant(space, data))
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--results-dir", "elsewhere") == 0
    [first] = (tmp_path / "elsewhere").glob("model_*.txt.json")  # the network that a search of this seed trains first
    network = json.loads(first.read_text())["space"]
    assert trained == [network]
    # As two runs leave it whose process died training that network in their first trial.
    (tmp_path / "results").mkdir()
    started = ["2026-12-07T09:00:00+01:00", "2026-12-07T10:00:00+01:00"]
    (tmp_path / "results" / ".running_trial").write_text(json.dumps({"tid": 0, "space": network, "started": started}))
    trained.clear()
    capsys.readouterr()

    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    out = capsys.readouterr().out
    assert ("The last run's process died while trial 0 trained (started 2026-12-07T10:00:00+01:00): killed, out of the "
            "host's memory (`dmesg` names the out-of-memory killer's victims), or crashed in native code (the end of its "
            "log says where); it died so 2 times on that network: "
            "if the search suggests its network again, it is recorded as failed, not trained again\n") in out
    assert ("Trial 0 FAILED: ProcessDied: the search's process died while this network trained, in 2 runs (started "
            f"{', '.join(started)}): ") in out
    assert network not in trained and len(trained) == 1  # trial 1 alone trained
    [failed] = (tmp_path / "results").glob("model_failed_*.txt.json")
    result = json.loads(failed.read_text())
    assert (result["space"], result["seed"], result["max_epochs"], result["tid"]) == (network, 0, 1, 0)
    assert not (tmp_path / "results" / ".running_trial").exists()

    # --enqueue tries a failed network again, up to 3 times, for a failure that another process caused: not this one.
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--enqueue", str(failed)) == 0
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"--enqueue {failed}: "))
    assert said.startswith(f"--enqueue {failed}: its trial 0 failed (ProcessDied: ") and said.endswith("; not trained again")
    assert network not in trained and len(trained) == 2


def test_a_trial_that_cannot_be_marked_as_training_trains_all_the_same(tmp_path, monkeypatch, capsys):
    import errno

    import neural_net
    import utils

    def full_disk(path, data, write=utils.atomic_write):  # when the trial starts; not when it is saved
        if Path(path).name == ".running_trial":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(neural_net, "build_and_train", instant)
    monkeypatch.setattr(utils, "atomic_write", full_disk)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    captured = capsys.readouterr()
    assert ("warning: cannot mark trial 0 as training ([Errno 28] No space left on device: 'results/.running_trial'): "
            "were it to kill the process, a resume could not tell\n") in captured.err
    assert "Trial 0: fine " in captured.out and len(load_trials(tmp_path / "results.pkl").trials) == 1


def test_a_search_that_another_script_runs_names_the_next_scripts_where_they_are(tmp_path, monkeypatch, capsys):
    import neural_net

    monkeypatch.setattr(neural_net, "build_and_train", instant)
    monkeypatch.setattr(sys, "argv", [str(REPO / "bench" / "bench_search.py")])  # which runs searches in-process
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    analyse, retrain = REPO / "analyze_results.py", REPO / "retrain_best_with_tensorboard.py"
    assert f"Next: python3 {analyse} (leaderboard, importance, plots); python3 {retrain} (the best" in capsys.readouterr().out


def instant(space, data, **kw):
    """A trial's result without its training, for tests of what the search does around trials."""
    accuracy = 0.1 * space["lr_rate_mult"]
    return None, {"status": "ok", "loss": -accuracy, "fine_best_accuracy": accuracy, "coarse_best_accuracy": None,
                  "epochs_trained": 1, "pruned": False, "train_seconds": 0.0, "model_name": f"model_{accuracy}_x",
                  "space": space, "history": {"val_fine_outputs_accuracy": [accuracy]}, "dataset": data.name,
                  "train_images": len(data.x_train), "selected_on": data.selects_on}


def test_each_trial_says_when_it_started(tmp_path, monkeypatch, capsys):
    import neural_net

    monkeypatch.setattr(neural_net, "build_and_train", instant)
    start = datetime.datetime.now().replace(microsecond=0)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    firsts = [line for line in capsys.readouterr().out.splitlines() if ", up to 1 epoch: " in line]
    stamps = [datetime.datetime.strptime(line.split(" Trial ")[0], "%Y-%m-%d %H:%M:%S") for line in firsts]
    assert len(stamps) == 2 and start <= stamps[0] <= stamps[1] <= datetime.datetime.now()


@pytest.mark.parametrize("where, said", [
    ((41, 100, 11, 3300.0, None), "41 of 100 trials, about 4.9 h to go at this run's pace"),  # 300 s a trial, 59 to go
    ((41, 100, 11, 3300.0, 3600.0), "41 of 100 trials; no trial starts after 60 min more (--max-hours)"),
    ((41, 100, 11, 3300.0, 0.0), "41 of 100 trials; --max-hours is up"),
    ((41, 100, 11, 3300.0, 86400.0), "41 of 100 trials, about 4.9 h to go at this run's pace"),
    ((30, 100, 0, 0.0, None), "30 of 100 trials"),  # resumed, nothing trained yet to pace it by
    ((31, 100, 1, 0.01, None), "31 of 100 trials"),  # its one trial failed at once: ProcessDied, or a network too large
    ((100, 100, 70, 9000.0, None), "100 of 100 trials"),
    ((41, None, 11, 3300.0, 5400.0), "no trial starts after 1.5 h more (--max-hours)"),
    ((41, None, 11, 3300.0, None), None),  # until Ctrl-C: nothing to measure against
])
def test_the_pace_of_a_search_against_its_max_evals_and_max_hours(where, said):
    assert pace(*where) == said


def test_each_trial_line_says_how_far_the_search_is_against_max_evals(tmp_path, monkeypatch, capsys):
    import neural_net

    def a_second(space, data, **kw):  # a pace to go by: not one of trials that failed at once
        time.sleep(1)
        return instant(space, data, **kw)

    monkeypatch.setattr(neural_net, "build_and_train", a_second)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 0
    ends = [line.split("; best so far ")[1] for line in capsys.readouterr().out.splitlines() if line.startswith("Trial ")]
    assert [end.split("; ", 1)[1].split(", about ")[0] for end in ends] == ["1 of 2 trials", "2 of 2 trials", "3 of 3 trials"]
    assert ends[0].endswith(" s to go at this run's pace")


@pytest.mark.slow
def test_tpe_models_the_trials_from_startup_trials_on_and_each_result_says_which_drew_it(tmp_path, monkeypatch, capsys):
    import neural_net

    monkeypatch.setattr(neural_net, "build_and_train", instant)
    points, drawn_by = {}, {}
    for name, startup in (("default", []), ("two", ["--startup-trials", "2"]), ("none", ["--startup-trials", "0"])):
        assert in_process(tmp_path, monkeypatch, "--max-evals", "4", "--results-dir", name, *startup) == 0
        points[name] = [t["misc"]["vals"] for t in load_trials(tmp_path / f"{name}.pkl").trials]
        results = sorted((json.loads(p.read_text()) for p in (tmp_path / name).glob("*.json")), key=lambda r: r["tid"])
        drawn_by[name] = [r["suggested_by"] for r in results]
    # Random draws of the same seed until the startup trials are done, TPE's suggestions after.
    assert points["two"][:2] == points["default"][:2] and points["two"][2:] != points["default"][2:]
    assert points["none"][0] != points["default"][0]
    assert drawn_by == {"default": ["random"] * 4, "two": ["random", "random", "tpe", "tpe"], "none": ["tpe"] * 4}
    said = capsys.readouterr().out
    assert "TPE suggests the trials from here on, modelling the 2 trials before\n" in said
    assert "TPE suggests every trial (--startup-trials 0): the first from the space alone" in said
    assert "modelling the 0 trials" not in said

    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        in_process(tmp_path, monkeypatch, "--algo", "random", "--startup-trials", "2")
    assert refused.value.code == 2 and "--startup-trials is TPE's" in capsys.readouterr().err


def test_a_trial_of_another_search_of_the_same_seed_enqueued_is_not_drawn_again_at_its_place(tmp_path, monkeypatch):
    import neural_net

    monkeypatch.setattr(neural_net, "build_and_train", instant)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--results-dir", "a") == 0
    # Its trial 2, which the same seed would draw again as trial 2 of the next search.
    [third] = [p for p in (tmp_path / "a").glob("*.json") if json.loads(p.read_text())["tid"] == 2]
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--results-dir", "b", "--enqueue", str(third)) == 0
    trials = load_trials(tmp_path / "b.pkl").trials
    drawn = [active(t["misc"]["vals"]) for t in trials]
    assert drawn[0] == active(load_trials(tmp_path / "a.pkl").trials[2]["misc"]["vals"])
    assert len(drawn) == 3 and drawn[2] != drawn[0] and drawn[1] != drawn[0]
    assert [t["result"]["suggested_by"] for t in trials] == ["enqueue", "random", "random"]


def test_no_trial_starts_after_max_hours_and_the_same_command_goes_on_for_as_long_again(tmp_path, monkeypatch, capsys):
    import search
    import neural_net

    class Clock:  # each trial takes an hour
        hours = 0.0

        @classmethod
        def monotonic(cls):
            return cls.hours * 3600

    def an_hour_long(space, data, **kw):
        Clock.hours += 1
        return instant(space, data)

    monkeypatch.setattr(search, "time", Clock)
    monkeypatch.setattr(neural_net, "build_and_train", an_hour_long)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "10", "--max-hours", "2.5") == 0
    out = capsys.readouterr().out
    # Trials start at hours 0, 1 and 2; the third one, which ends past the limit, finishes and is saved.
    assert len(load_trials(tmp_path / "results.pkl").trials) == 3 and len(result_files(tmp_path)) == 3
    assert "\n--max-hours 2.5 is up: no more trials start; 3 finished trials saved.\n\nTop 3 of 3 trials" in out
    assert out.splitlines()[-2].startswith("Go on for another --max-hours with: python3 ")

    assert in_process(tmp_path, monkeypatch, "--max-evals", "10", "--max-hours", "1") == 0
    assert len(load_trials(tmp_path / "results.pkl").trials) == 4
    assert "--max-hours 1 is up: no more trials start; 4 finished trials saved." in capsys.readouterr().out


@pytest.mark.slow
def test_three_failures_in_a_row_from_one_cause_stop_the_run(tmp_path, monkeypatch, capsys):
    import neural_net

    real = neural_net.build_and_train
    monkeypatch.setattr(neural_net, "build_and_train",
                        lambda space, data, **kw: real({**space, "lr_rate_mult": 1e35}, data, **kw))
    assert in_process(tmp_path, monkeypatch, "--max-evals", "10") == 1
    assert len(load_trials(tmp_path / "results.pkl").trials) == 3
    assert "3 trials in a row failed with: FloatingPointError" in capsys.readouterr().err


class ResourceExhaustedError(Exception):
    """TensorFlow's out-of-memory error, by its name."""


@pytest.mark.parametrize("error, device, where", [
    (ResourceExhaustedError, None, "this machine's memory (free -h), or is this machine"),
    (ResourceExhaustedError, "NVIDIA H100 80GB HBM3", "the GPU's memory (nvidia-smi), or is the GPU"),
    (MemoryError, "NVIDIA H100 80GB HBM3", "this machine's memory (free -h), or is this machine"),  # Python's own: the host's
], ids=["cpu", "gpu", "host-on-a-gpu-machine"])
def test_three_out_of_memory_failures_in_a_row_stop_the_run_though_each_names_its_own_tensor(error, device, where,
                                                                                              tmp_path, monkeypatch,
                                                                                              capsys):
    import neural_net

    # Another process holding the memory: every network fails, each at a tensor of its own shape.
    shapes = iter(range(64, 6400, 64))

    def out_of_memory(*args, **kwargs):
        raise error(f"OOM when allocating tensor with shape[{next(shapes)},128,16,16] and type float")

    monkeypatch.setattr(neural_net, "build_model", out_of_memory)
    if device:
        monkeypatch.setattr(neural_net, "device_name", lambda: device)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "10") == 1
    assert len(load_trials(tmp_path / "results.pkl").trials) == 3
    err = capsys.readouterr().err
    assert f"3 trials in a row failed with: {error.__name__}: OOM when allocating tensor with shape[192," in err
    # No network has trained on it: it may as well be too small for them all.
    assert err.endswith(f" and type float; does another process hold {where} too small for these networks "
                        "(none has trained on it yet)?\n")


@pytest.mark.parametrize("scale, code", [(100, 0), (0.01, 1)], ids=["larger", "smaller"])
def test_out_of_memory_failures_stop_the_run_only_where_a_network_that_failed_needed_less_than_one_that_trained(
        scale, code, tmp_path, monkeypatch, capsys):
    import neural_net

    # A device whose memory held the first two networks alone; the next ones needed `scale` times their own activations.
    real_build, real_count = neural_net.build_model, neural_net.activations_per_image
    built = []

    def out_of_memory(*args, **kwargs):
        raise ResourceExhaustedError("OOM when allocating tensor with shape[700,256,32,32] and type float")

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append(model)
        if len(built) > 2:
            model.fit = out_of_memory
        return model

    monkeypatch.setattr(neural_net, "build_model", build)
    monkeypatch.setattr(neural_net, "activations_per_image",
                        lambda model: real_count(model) * (1 if model in built[:2] else scale))
    assert in_process(tmp_path, monkeypatch, "--max-evals", "5") == code
    results = [t["result"] for t in load_trials(tmp_path / "results.pkl").trials]
    assert [r["status"] for r in results] == ["ok", "ok", "fail", "fail", "fail"]
    assert all(r["activations_per_image"] > 0 and r["n_params"] > 0 for r in results)  # failed ones too
    out, err = capsys.readouterr()
    assert ("3 trials in a row failed with: ResourceExhaustedError: OOM" in err) == (code == 1)
    if code == 1:  # two networks larger than one that failed trained on it: memory that another process holds
        assert err.endswith("; does another process hold this machine's memory (free -h)?\n")
    # Each failure of a network too large for the device says so, and why the search goes on past it.
    outgrown = re.findall(r"FAILED: .*; its step's activations \(([\d.]+ [MG]iB)\) outgrow those of every network that "
                          r"trained on this device \(([\d.]+ [MG]iB) at most\): failures like it do not stop the search", out)
    assert len(outgrown) == (3 if code == 0 else 0)

    def mib(text):
        number, unit = text.split()
        return float(number) * (1024 if unit == "GiB" else 1)

    assert all(mib(needed) > mib(most) for needed, most in outgrown)


def test_a_network_outgrows_those_that_trained_on_its_device_by_its_steps_bytes_in_its_precision():
    from trial import outgrew_the_trained

    def result(status, precision, device="NVIDIA H100 80GB HBM3", per_image=1000):
        return {"status": status, "precision": precision, "device": device, "activations_per_image": per_image,
                "space": {"batch_size": 100.0}}

    trained = [result("ok", "mixed_bfloat16")]
    assert outgrew_the_trained(result("fail", "float32"), trained)  # the same network, twice the bytes
    assert not outgrew_the_trained(result("fail", "mixed_float16"), trained)
    assert outgrew_the_trained(result("fail", "mixed_bfloat16", per_image=1001), trained)
    # No telling: nothing trained on that device, or what trained did not record its size, or the failure did not.
    assert not outgrew_the_trained(result("fail", "float32", device="NVIDIA A10"), trained)
    assert not outgrew_the_trained(result("fail", "float32"), [result("ok", "mixed_bfloat16", per_image=None)])
    assert not outgrew_the_trained(result("fail", "float32", per_image=None), trained)


@pytest.mark.slow
def test_a_failed_save_stops_the_search_and_the_next_run_restores_the_result_file(tmp_path, monkeypatch, capsys):
    import utils

    def disk_full(result, results_dir):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(utils, "save_json_result", disk_full)
        assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 1
    err = capsys.readouterr().err
    assert ("error: cannot write the result file of trial 0 ([Errno 28] No space left on device); results.pkl holds it, "
            "and a rerun writes the file once it can be written\n") in err and "Traceback" not in err
    assert len(load_trials(tmp_path / "results.pkl").trials) == 1 and not result_files(tmp_path)

    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    assert "Restored the result file of trial 0" in capsys.readouterr().out
    assert len(result_files(tmp_path)) == 2


def test_a_trials_pickle_that_cannot_be_saved_stops_the_search_with_nothing_of_that_trial_written(tmp_path, monkeypatch,
                                                                                                  capsys):
    import utils

    def disk_full(trials, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils, "save_trials", disk_full)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 1
    assert ("error: cannot save trial 0 ([Errno 28] No space left on device); the trials before are saved, rerun to "
            "resume once it can be written\n") in capsys.readouterr().err
    assert not (tmp_path / "results.pkl").exists() and not result_files(tmp_path)


def test_a_search_on_a_filesystem_without_file_locks_runs_and_warns_that_nothing_stops_a_second(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(file, operation):  # as on Lustre mounted noflock, or NFS without its lock daemon
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    err = capsys.readouterr().err
    assert ("warning: cannot lock results/ (No locks available): its filesystem has no file locks, so nothing stops a "
            "second run from writing there at the same time; start one at a time\n") in err
    assert len(result_files(tmp_path)) == 1 and "Traceback" not in err


def test_a_resume_on_other_data_a_training_subset_selection_set_space_or_seed_is_refused_untouched(tmp_path, monkeypatch, capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    before = (tmp_path / "results.pkl").read_bytes()
    (tmp_path / "mine.npz").touch()  # refused for its name, before it is read
    capsys.readouterr()
    for other, setting in ((["--dataset", "mine.npz"], "dataset synthetic, this run asks for mine.npz"),
                           (["--select-on", "test"], "selected_on validation, this run asks for test"),
                           (["--train-subset", "200"], "train_images 300, this run asks for 200"),
                           (["--space", "full"], "search_space tiny, this run asks for full (--space)"),
                           (["--seed", "1"], "seed 0, this run asks for 1 (--seed)")):
        assert in_process(tmp_path, monkeypatch, "--max-evals", "2", *other) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: results.pkl holds trials with {setting}") and "do not compare" in err
    assert (tmp_path / "results.pkl").read_bytes() == before


@pytest.mark.slow
def test_a_resume_with_another_budget_patience_width_multiple_or_code_version_is_warned_about_and_goes_on(tmp_path, monkeypatch,
                                                                                                           capsys):
    import trial

    monkeypatch.setattr(trial, "code_version", lambda: "fedcba987654")  # a commit wherever the tests run: None outside a git checkout
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2", "--width-multiple", "8", "--patience", "15") == 0  # the defaults
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(trial, "code_version", lambda: "0123456789ab")  # a git pull since
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--epochs", "2", "--width-multiple", "1", "--patience", "1") == 0
    err = capsys.readouterr().err
    assert "warning: results.pkl holds trials of --epochs 1, this run's is 2: TPE will compare" in err
    assert "warning: results.pkl holds trials of --patience 15, this run's is 1: TPE will compare" in err
    assert "warning: results.pkl holds trials of --width-multiple 8, this run's is 1: TPE will compare networks" in err
    assert ("warning: results.pkl holds trials of code version fedcba987654, this run's is 0123456789ab: TPE will "
            "compare accuracies of networks trained by different code") in err
    results = load_trials(tmp_path / "results.pkl").results
    assert [(r["max_epochs"], r["patience"], r["space"]["width_multiple"]) for r in results] == [(1, 15, 8), (1, 15, 8), (2, 1, 1)]


@pytest.mark.slow
def test_a_search_whose_trials_pickle_another_search_rewrote_stops_without_overwriting_it(tmp_path, monkeypatch, capsys):
    import neural_net

    shared = ["--trials-file", "shared.pkl"]
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--results-dir", "a", *shared) == 0
    real, written = neural_net.build_and_train, []

    def the_other_search_saves_meanwhile(*args, **kwargs):
        save_trials(load_trials(tmp_path / "shared.pkl"), tmp_path / "shared.pkl")
        written.append((tmp_path / "shared.pkl").read_bytes())
        return real(*args, **kwargs)

    monkeypatch.setattr(neural_net, "build_and_train", the_other_search_saves_meanwhile)
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--results-dir", "b", *shared) == 1
    err = capsys.readouterr().err
    assert "error: shared.pkl was rewritten by another process while this search ran; trial 1 is not saved" in err
    assert len(written) == 1 and (tmp_path / "shared.pkl").read_bytes() == written[0]


@pytest.mark.slow
def test_a_search_in_another_results_folder_keeps_its_own_trials_pickle(tmp_path, monkeypatch, capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    before = (tmp_path / "results.pkl").read_bytes()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--results-dir", "runs/b/") == 0
    assert "Starting a new search: trials go to runs/b.pkl, results to runs/b/\n" in capsys.readouterr().out
    assert (tmp_path / "results.pkl").read_bytes() == before  # neither resumed nor overwritten
    assert len(load_trials(tmp_path / "runs" / "b.pkl").trials) == 1
    assert len(list((tmp_path / "runs" / "b").glob("model_*.txt.json"))) == 1


@pytest.mark.slow
def test_results_whose_trials_pickle_is_elsewhere_are_refused_untouched(tmp_path, monkeypatch, capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    (tmp_path / "results.pkl").rename(tmp_path / "moved.pkl")
    before = sorted(p.name for p in (tmp_path / "results").iterdir())
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results/ holds the results of a search (1 trial) whose trials pickle is not results.pkl")
    assert len(err.splitlines()) == 1 and sorted(p.name for p in (tmp_path / "results").iterdir()) == before
    assert not (tmp_path / "results.pkl").exists()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2", "--trials-file", "moved.pkl") == 0
    assert "Resuming: 1 trial," in capsys.readouterr().out


def trials_as_tpe_models_them(trials) -> list:
    return [(t["tid"], t["state"], active(t["misc"]["vals"]), t["misc"]["idxs"], t["misc"]["suggested_by"], t["result"])
            for t in trials.trials]


@pytest.mark.slow
def test_a_lost_trials_pickle_is_rebuilt_from_the_result_files_and_tpe_goes_on_as_it_would_have(tmp_path, monkeypatch,
                                                                                                 capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--startup-trials", "2") == 0
    (tmp_path / "results.pkl").rename(tmp_path / "kept.pkl")
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 2
    assert "rebuild it from them with --rebuild-trials" in capsys.readouterr().err
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--rebuild-trials") == 0
    out = capsys.readouterr().out
    assert "Rebuilt the trials of results.pkl from 3 result files in results/\nResuming: 3 trials," in out
    kept, rebuilt = load_trials(tmp_path / "kept.pkl"), load_trials(tmp_path / "results.pkl")
    assert trials_as_tpe_models_them(rebuilt) == trials_as_tpe_models_them(kept)
    # A rebuilt pickle is never overwritten by another rebuild.
    before = (tmp_path / "results.pkl").read_bytes()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3", "--rebuild-trials") == 2
    assert capsys.readouterr().err == ("error: --rebuild-trials writes results.pkl only where there is none: move that "
                                       "one away first\n")
    assert (tmp_path / "results.pkl").read_bytes() == before
    # TPE's next suggestion from the rebuilt pickle is the one it makes from the original.
    shutil.copytree(tmp_path / "results", tmp_path / "original")
    (tmp_path / "kept.pkl").rename(tmp_path / "original.pkl")
    for folder in ("results", "original"):
        assert in_process(tmp_path, monkeypatch, "--max-evals", "4", "--results-dir", folder) == 0
    assert ([active(t["misc"]["vals"]) for t in load_trials(tmp_path / "results.pkl").trials] ==
            [active(t["misc"]["vals"]) for t in load_trials(tmp_path / "original.pkl").trials])
    # An unreadable pickle: the way out names the rebuild.
    (tmp_path / "results.pkl").write_bytes(b"torn")
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "5") == 2
    assert capsys.readouterr().err.endswith("is corrupt or truncated (UnpicklingError); move it away to rebuild it from "
                                            "the result files with --rebuild-trials\n")


@pytest.mark.slow
def test_an_older_copy_of_the_trials_pickle_is_refused_untouched_before_a_trial_takes_the_id_of_one_it_lacks(
        tmp_path, monkeypatch, capsys):
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    older = (tmp_path / "results.pkl").read_bytes()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "2") == 0
    (tmp_path / "results.pkl").write_bytes(older)  # a backup put back
    capsys.readouterr()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "3") == 2
    assert capsys.readouterr().err == ("error: results/ holds the results of 1 trial that results.pkl lacks (1): an older "
                                       "copy of it? Move it away to rebuild it from the result files with --rebuild-trials\n")
    assert (tmp_path / "results.pkl").read_bytes() == older and len(list((tmp_path / "results").glob("*.json"))) == 2


def test_trials_are_rebuilt_from_a_crashed_workers_result_and_not_from_two_searches_or_2017s(tmp_path, capsys):
    import resume
    from hyperopt import STATUS_FAIL

    from utils import TrialsFileError

    (tmp_path / "results").mkdir()
    crashed = {"status": STATUS_FAIL, "error": "worker lost", "model_name": "model_failed_abcde", "space": None,
               "pruned": False, "hyperopt_vals": {"lr_rate_mult": 1.2, "optimizer": 1}, "tid": 4}
    (tmp_path / "results" / "model_failed_abcde.txt.json").write_text(json.dumps(crashed))
    # A 2017 file records no trial id: its trial is in 2017's pickle alone.
    (tmp_path / "results" / "model_2017.txt.json").write_text(json.dumps({"status": "ok", "loss": -0.6, "space": {}}))
    [trial] = resume.rebuilt_trials(str(tmp_path / "results")).trials
    assert capsys.readouterr().err == (f"warning: 1 result file in {tmp_path / 'results'}/ records no trial id, as 2017's "
                                       "do: their trials, in 2017's pickle alone, are left out of the rebuilt one\n")
    assert trial["tid"] == 4 and trial["result"] == crashed
    assert active(trial["misc"]["vals"]) == {"lr_rate_mult": [1.2], "optimizer": [1]}
    assert trial["misc"]["vals"]["residual"] == [] and trial["misc"]["idxs"]["lr_rate_mult"] == [4]
    (tmp_path / "results" / "model_failed_fghij.txt.json").write_text(json.dumps(crashed | {"model_name": "model_failed_fghij"}))
    with pytest.raises(TrialsFileError, match="holds two result files of trial 4, model_failed_abcde.txt.json and model_failed_fghij"):
        resume.rebuilt_trials(str(tmp_path / "results"))
    # A folder of 2017's files alone, or of none, has no trial to rebuild: each said as it is.
    for name in ("model_failed_abcde.txt.json", "model_failed_fghij.txt.json"):
        (tmp_path / "results" / name).unlink()
    with pytest.raises(TrialsFileError, match=r"the result file in .*results/ records no trial id, as 2017's do: their "
                                              r"trials are in 2017's pickle alone \(--trials-file resumes it\)$"):
        resume.rebuilt_trials(str(tmp_path / "results"))
    (tmp_path / "results" / "model_2017.txt.json").unlink()
    with pytest.raises(TrialsFileError, match="results/ holds no result file to rebuild the trials from$"):
        resume.rebuilt_trials(str(tmp_path / "results"))


@pytest.mark.parametrize("where, folder", [(["--results-dir", "a_file/results"], "a_file/results"),
                                           (["--results-dir", "a_file"], "a_file"),
                                           (["--trials-file", "a_file/results.pkl"], "a_file")])
def test_a_results_location_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch, capsys, where,
                                                                               folder):
    (tmp_path / "a_file").write_text("")
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", *where) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: cannot write the results there: [Errno 20] Not a directory: '{folder}'\n"
    assert "training" not in captured.out


# The search as another user (argv[1]) would run it: the modules that main imports are loaded first, while
# root may still read them wherever they are installed.
AS_ANOTHER_USER = """
import os, sys
import datasets, hyperopt_optimize, locale, utils
os.setgid(int(sys.argv[1]))
os.setuid(int(sys.argv[1]))
sys.exit(hyperopt_optimize.main(sys.argv[2:]))
"""


@pytest.mark.skipif(not can_become(60001), reason="plays another user, which needs root")
def test_the_results_folder_of_another_users_search_is_refused_before_training():
    with tempfile.TemporaryDirectory() as shared:  # not in tmp_path, which only pytest's user may enter
        Path(shared).chmod(0o755)
        results = Path(shared) / "results"
        results.mkdir()
        lock = results / ".search.lock"
        lock.write_text("")
        lock.chmod(0o666)  # the lock opens for anyone, while only its owner may add a result beside it
        searched = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, "60001", *QUICK, "--max-evals", "1",
                                   "--results-dir", str(results)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert searched.returncode == 2
        assert searched.stderr == f"error: cannot write the results there: [Errno 13] Permission denied: '{results}'\n"
        assert "Trial" not in searched.stdout
        assert [p.name for p in results.iterdir()] == [lock.name]


@pytest.mark.parametrize("dataset_args, message", [
    (["cifar1000"], "unknown dataset 'cifar1000'"),
    (["gone.npz"], "dataset file gone.npz does not exist"),
    (["cifar100", "--data-dir", "data"], f"{os.path.join('data', 'cifar-100-python.tar.gz')} does not exist: put the official"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_dataset_that_cannot_be_loaded_is_refused_before_a_results_folder_is_made(tmp_path, monkeypatch, capsys,
                                                                                   dataset_args, message):
    assert in_process(tmp_path, monkeypatch, "--dataset", *dataset_args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}") and len(captured.err.splitlines()) == 1
    assert captured.out == "" and not list(tmp_path.iterdir())


def test_a_new_search_that_stops_before_it_writes_anything_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")  # found, so refused only once it is read
    assert in_process(tmp_path, monkeypatch, "--dataset", "junk.npz", "--results-dir", "runs/a") == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["junk.npz"]  # neither runs/a/ nor runs/, where its pickle would go
    (tmp_path / "results").mkdir()
    assert in_process(tmp_path, monkeypatch, "--dataset", "junk.npz") == 2
    assert (tmp_path / "results").is_dir()  # a folder it did not make stays


def test_nothing_to_do_when_max_evals_is_reached(tmp_path, monkeypatch, capsys):
    from hyperopt import Trials

    save_trials(Trials(), tmp_path / "results.pkl")
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0  # one trial
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1") == 0
    assert "Nothing to do: 1 trial already, --max-evals 1, which counts them; a larger --max-evals goes on.\n" in (
        capsys.readouterr().out)
    # A mistyped --enqueue is said at once, not in the run that has something to train.
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--enqueue", "2017-bset") == 2
    assert capsys.readouterr().err == "error: --enqueue 2017-bset: neither 2017-best, demo, a result file nor a results folder\n"


@pytest.mark.slow
def test_model_plots_are_drawn_into_each_searchs_own_results_folder(tmp_path, monkeypatch):
    from keras.src.utils.model_visualization import check_graphviz
    from PIL import Image

    if not check_graphviz():
        pytest.skip("Graphviz is not installed")
    import hyperopt_optimize

    monkeypatch.chdir(tmp_path)
    args = [a for a in QUICK if a != "--no-plot"]
    assert hyperopt_optimize.main([*args, "--epochs", "1", "--max-evals", "1"]) == 0
    assert hyperopt_optimize.main([*args, "--epochs", "1", "--max-evals", "1", "--results-dir", "runs/a"]) == 0
    for folder in ("results", "runs/a"):
        assert (tmp_path / folder / "model_demo.png").stat().st_size > 1000
        assert (tmp_path / folder / "model_best.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.png"))
    # The demo network, the full space's, drawn small enough for an image viewer: Keras's default 200 dpi drew it at
    # 124 megapixels, past what Pillow opens without a warning of a decompression bomb.
    with Image.open(tmp_path / "results" / "model_demo.png") as drawn:
        width, height = drawn.size
    assert width * height < Image.MAX_IMAGE_PIXELS / 2


@pytest.mark.slow
def test_a_search_on_a_grayscale_npz_without_coarse_labels_resumes_on_that_file_alone(tmp_path, monkeypatch, capsys):
    import numpy as np

    from datasets import load_dataset, make_synthetic

    x, fine, _, x_test, fine_test, _ = make_synthetic(1000, seed=3)
    gray = lambda images: images.mean(axis=-1).astype(np.uint8)[:, 4:28, 2:30]  # noqa: E731 -- 24x28x1
    np.savez(tmp_path / "gray.npz", x_train=gray(x), y_train_fine=fine % 10, x_test=gray(x_test),
             y_test_fine=fine_test % 10)
    monkeypatch.chdir(tmp_path)
    import hyperopt_optimize

    # The last --dataset wins over QUICK's.
    assert hyperopt_optimize.main([*QUICK, "--dataset", "gray.npz", "--max-evals", "2", "--epochs", "1"]) == 0
    results = [t["result"] for t in load_trials(tmp_path / "results.pkl").trials]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert all(r["coarse_best_accuracy"] is None and r["test_coarse_accuracy"] is None for r in results)
    assert all(r["dataset"] == "gray.npz" and r["dataset_file"] == str(tmp_path / "gray.npz") for r in results)

    # The retrain finds the file from anywhere, by the path the results record.
    import retrain_best_with_tensorboard

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert retrain_best_with_tensorboard.main(["--results-dir", str(tmp_path / "results"), "--epochs", "1",
                                               "--verbose", "0", "--histogram-freq", "0"]) == 0
    assert len(list((elsewhere / "weights").glob("*.keras"))) == 1
    assert "differ from those" not in capsys.readouterr().err

    # The file remade with one label changed: a resume would compare accuracies on other data, and is refused; the
    # retrain goes on, saying that its figures will not compare with the trial's.
    digest = results[0]["dataset_digest"]
    assert len(digest) == 16 and {r["dataset_digest"] for r in results} == {digest}
    fine[0] = (fine[0] + 1) % 10
    np.savez(tmp_path / "gray.npz", x_train=gray(x), y_train_fine=fine % 10, x_test=gray(x_test),
             y_test_fine=fine_test % 10)
    remade = load_dataset(str(tmp_path / "gray.npz")).digest
    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main([*QUICK, "--dataset", "gray.npz", "--max-evals", "3", "--epochs", "1"]) == 2
    assert capsys.readouterr().err == (
        f"error: results.pkl holds trials of other images or labels under the name gray.npz (dataset_digest {digest}; this "
        f"file's: {remade}): their accuracies do not compare; resume with the file they trained on, or start a new search "
        "with another --results-dir\n")
    assert len(load_trials(tmp_path / "results.pkl").trials) == 2
    monkeypatch.chdir(elsewhere)
    assert retrain_best_with_tensorboard.main(["--results-dir", str(tmp_path / "results"), "--epochs", "1",
                                               "--verbose", "0", "--histogram-freq", "0"]) == 0
    warned = capsys.readouterr().err
    assert warned.startswith("warning: the images or labels of gray.npz differ from those ")
    assert f"(dataset_digest {remade}; the trial's: {digest}): its figures and the retrain's will not compare" in warned

