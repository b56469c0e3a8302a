"""Retraining with TensorBoard and checkpoints, then filter visualisation, on a tiny network."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import types

import keras
import matplotlib.image
import numpy as np
import pytest

import conv_filters_visualization as viz
import retrain_best_with_tensorboard as retrain
from conftest import (FOUR_GPUS, REPO, SMALL_SPACE, fake_nvidia_smi, swallow_a_signal_in,
                      swallow_a_signal_while_the_data_loads)
from neural_net import failure
from precision import cpu_name, device_name
from retrain_callbacks import RetrainBackup
from test_datasets import write_cifar100_archive
from trial import code_version
from trial_backup import backed_up
from utils import load_json_result, save_json_result, weights_seed

RESIDUAL_SPACE = {**SMALL_SPACE, "residual": 1.0, "conv_pool_res_start_idx": 1.0}


def scalar_tags(folder):
    """Every summary tag written in the event files under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    return tags


def epoch_steps(folder, tag):
    """The epochs of one summary tag, as TensorBoard shows them (its accumulator of the summaries plugins read)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [event.step for event in acc.Tensors(tag)]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": RESIDUAL_SPACE,
                      "dataset": "synthetic"}, folder / "results")
    save_json_result({"loss": -0.1, "status": "ok", "model_name": "model_0.1_bbbbb", "space": SMALL_SPACE,
                      "dataset": "synthetic"}, folder / "results")
    keras.backend.clear_session()  # layer names as in a new process, whatever tests ran before
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        code = retrain.main(["--epochs", "3", "--train-subset", "1000", "--verbose", "0"])
    return folder, code


@pytest.mark.slow
def test_retrain_writes_logs_for_both_heads_and_a_loadable_best_model(retrained):
    import keras

    from datasets import load_dataset
    from batches import targets

    folder, code = retrained
    assert code == 0
    tags = scalar_tags(folder / "TensorBoard" / "model_0.2_aaaaa")
    assert {"epoch_fine_outputs_accuracy", "epoch_coarse_outputs_accuracy"} <= tags
    # Weight histograms every 10 epochs, from the first: each costs most of an epoch on a GPU.
    assert epoch_steps(folder / "TensorBoard" / "model_0.2_aaaaa" / "train", "conv2d/kernel/histogram") == [0]
    result = load_json_result(folder / "weights" / "model_0.2_aaaaa.retrain.txt.json")
    model = keras.saving.load_model(folder / "weights" / "model_0.2_aaaaa.keras")
    data = load_dataset("synthetic", train_subset=1000)
    scores = model.evaluate(data.x_val, targets(data, "val"), verbose=0, return_dict=True)
    assert scores["fine_outputs_accuracy"] == pytest.approx(result["fine_best_accuracy"], abs=1e-6)
    assert result["code_version"] == code_version()  # the commit of the code that retrained it


@pytest.mark.slow
def test_an_interrupted_retrain_keeps_its_best_model_and_the_same_command_resumes_it(tmp_path, monkeypatch, capsys):
    import neural_net
    import trial_backup
    from datasets import load_dataset
    from batches import targets
    from pruning import MONITOR

    monkeypatch.setattr(trial_backup, "SNAPSHOT_EVERY_S", 0.0)  # each epoch's end kept, which the stop writes
    real = neural_net.build_and_train
    seen = []

    class CtrlCAfterTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs[MONITOR])
            if epoch == 0:
                time.sleep(3)  # training time that the resumed run's result must count too
            if epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, callbacks, **kw: real(
        space, data, callbacks=[*callbacks, CtrlCAfterTheSecondEpoch()], **kw))
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "synthetic"}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "4", "--train-subset", "300", "--verbose", "0", "--precision", "float32", "--histogram-freq", "0"]
    first_run = time.time()
    assert retrain.main(args) == 130
    checkpoint = tmp_path / "weights" / "model_0.2_aaaaa.keras"
    captured = capsys.readouterr()
    assert f"precision float32, on the CPU ({cpu_name()}): no GPU is visible to tensorflow" in captured.out  # where it trains
    assert f"SIGINT: stopped; the best model so far is {checkpoint.relative_to(tmp_path)}" in captured.err
    assert "; a resume goes on after epoch 2 (its backup of " in captured.err
    assert "Resume with: " in captured.err and len(seen) == 2

    class DivergeInTheThirdEpoch(keras.callbacks.Callback):  # so that the best epoch is one before the resume
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(1e35)

    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, callbacks, **kw: real(
        space, data, callbacks=[*callbacks, DivergeInTheThirdEpoch()], **kw))
    started = time.time()
    assert retrain.main(args) == 0
    resumed_seconds = time.time() - started
    assert f"Resuming the interrupted retrain after epoch 2 (best validation fine accuracy {max(seen):.4f}; its " \
        "backup of " in capsys.readouterr().out
    result = load_json_result(tmp_path / "weights" / "model_0.2_aaaaa.retrain.txt.json")
    assert (result["epochs_trained"], result["diverged_at_epoch"], result["resumed_after_epoch"]) == (3, 3, 2)
    assert result["train_seconds"] > resumed_seconds + 2  # both runs' seconds
    assert int(first_run) <= datetime.datetime.fromisoformat(result["started"]).timestamp() < started - 3  # the first run's
    assert result["history"][MONITOR][:2] == pytest.approx(seen, abs=0) and result["fine_best_accuracy"] == max(seen)
    # The model kept is still the best epoch's, and the one the result's test accuracy is of.
    data = load_dataset("synthetic", train_subset=300)
    model = keras.saving.load_model(checkpoint)
    for split, accuracy in (("val", result["fine_best_accuracy"]), ("test", result["test_fine_accuracy"])):
        scores = model.evaluate(getattr(data, f"x_{split}"), targets(data, split), verbose=0, return_dict=True)
        assert scores["fine_outputs_accuracy"] == pytest.approx(accuracy, abs=1e-6), split
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [checkpoint.name, "model_0.2_aaaaa.retrain.txt.json"]
    # TensorBoard's curves go on from the epoch where they stopped.
    assert epoch_steps(tmp_path / "TensorBoard" / "model_0.2_aaaaa" / "train", "epoch_loss") == [0, 1, 2]


@pytest.mark.slow
def test_a_retrain_writes_its_best_model_when_it_backs_up_stops_or_ends_not_at_every_better_epoch(tmp_path, monkeypatch,
                                                                                                   capsys):
    import neural_net
    from pruning import MONITOR

    real_callbacks, real_save, saves, ended = neural_net.trial_callbacks, keras.Model.save, [], {}

    class BetterEachEpoch(keras.callbacks.Callback):  # as early in a long retrain
        def on_epoch_end(self, epoch, logs=None):
            logs[MONITOR] = 0.1 * (epoch + 1)

    class CtrlCAfterTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ended[epoch] = self.model.get_weights()
            if epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", lambda self, *args, **kw: (saves.append(self),
                                                                         real_save(self, *args, **kw))[1])
    monkeypatch.setattr(neural_net, "trial_callbacks", lambda *args, **kw: [
        BetterEachEpoch(), *real_callbacks(*args, **kw), CtrlCAfterTheSecondEpoch()])
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "3", "--train-subset", "300", "--verbose", "0", "--precision", "float32",
            "--histogram-freq", "0"]
    assert retrain.main(args) == 130
    # Two better epochs in its first 5 minutes: no backup yet, and the best model written once, when it stopped.
    assert "; nothing backed up yet (one every 5 minutes): a resume starts anew\n" in capsys.readouterr().err
    assert len(saves) == 1 and not (tmp_path / "weights" / "m.backup" / ".trial_backup.npz").exists()
    stopped = keras.saving.load_model(tmp_path / "weights" / "m.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(stopped, ended[1], strict=True))  # its best epoch's

    monkeypatch.setattr(neural_net, "trial_callbacks",
                        lambda *args, **kw: [BetterEachEpoch(), *real_callbacks(*args, **kw)])
    assert retrain.main(args) == 0
    assert "The interrupted retrain stopped before its first backup (one every 5 minutes): it starts anew\n" in \
        capsys.readouterr().out
    result = load_json_result(tmp_path / "weights" / "m.retrain.txt.json")
    assert result["epochs_trained"] == 3 and "resumed_after_epoch" not in result
    assert len(saves) == 2  # and once more when it ended
    # TensorBoard shows the epochs that the first run logged as this one logged them, each once.
    for run in ("train", "validation"):
        assert epoch_steps(tmp_path / "TensorBoard" / "m" / run, "epoch_loss") == [0, 1, 2], run
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["m.keras", "m.retrain.txt.json"]


@pytest.mark.slow
def test_a_retrain_whose_backup_no_longer_fits_its_network_says_so_and_trains_anew(tmp_path, monkeypatch, capsys):
    import neural_net
    import trial_backup

    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 0.0)
    real = neural_net.build_and_train

    class CtrlCAfterTheFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, callbacks, **kw: real(
        space, data, callbacks=[*callbacks, CtrlCAfterTheFirstEpoch()], **kw))
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "2", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]
    assert retrain.main(args) == 130
    # The code that builds the network changed since (its first conv's kernel, say), with the same settings.
    path = tmp_path / "weights" / "m.backup" / ".trial_backup.npz"
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["weights0"] = np.zeros((5, 5, 3, 8), "float32")
    np.savez(path, **arrays)
    monkeypatch.setattr(neural_net, "build_and_train", real)
    capsys.readouterr()
    assert retrain.main(args) == 0
    captured = capsys.readouterr()
    assert "Resuming the interrupted retrain after epoch 1 " in captured.out
    assert "warning: the backup of the retrain after epoch 1 does not fit its network as this code builds it: it " \
        "starts anew\n" in captured.err
    result = load_json_result(tmp_path / "weights" / "m.retrain.txt.json")
    assert result["epochs_trained"] == 2 and "resumed_after_epoch" not in result


@pytest.mark.slow
def test_a_retrain_whose_best_model_cannot_be_written_at_a_backup_trains_on_and_writes_it_at_its_end(
        tmp_path, monkeypatch, capsys):
    import neural_net
    import trial_backup
    from batches import targets
    from datasets import load_dataset

    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 0.0)
    real_callbacks, real_save, full = neural_net.trial_callbacks, keras.Model.save, [True]

    def save(self, *args, **kwargs):
        if full[0]:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    class SpaceFreedAfterTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            full[0] = epoch < 1

    monkeypatch.setattr(keras.Model, "save", save)
    monkeypatch.setattr(neural_net, "trial_callbacks", lambda *args, **kw: [
        *real_callbacks(*args, **kw), SpaceFreedAfterTheSecondEpoch()])
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "3", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]
    assert retrain.main(args) == 0
    checkpoint = os.path.join("weights", "m.keras")
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1  # once, at the first backup
    assert f"warning: cannot write the best model so far to {checkpoint} ([Errno 28] No space left on device): the " \
        "retrain goes on, and writes it at its next backup or when it ends\n" in err
    result = load_json_result(tmp_path / "weights" / "m.retrain.txt.json")
    data = load_dataset("synthetic", train_subset=300)
    scores = keras.saving.load_model(tmp_path / checkpoint).evaluate(data.x_val, targets(data, "val"), verbose=0,
                                                                     return_dict=True)
    assert scores["fine_outputs_accuracy"] == pytest.approx(result["fine_best_accuracy"], abs=1e-6)  # the best epoch's


@pytest.mark.slow
def test_a_retrain_stopped_by_sigterm_exits_143_and_the_same_command_resumes_it(tmp_path, monkeypatch, capsys):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    args = ["--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]
    # The script as run, with a backup after each epoch (as a long epoch's).
    backing_up_each_epoch = ("import sys, runpy, precision; precision.tensorflow_defaults(); import trial_backup; "
                             "trial_backup.BACKUP_EVERY_S = 0.0; sys.argv = sys.argv[1:]; "
                             "runpy.run_path(sys.argv[0], run_name='__main__')")
    script = str(REPO / "retrain_best_with_tensorboard.py")
    proc = subprocess.Popen([sys.executable, "-c", backing_up_each_epoch, script, "--epochs", "100", *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    backup = tmp_path / "weights" / "m.backup"
    deadline = time.time() + 120
    while proc.poll() is None and not (backup / ".trial_backup.npz").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # as a cluster's scheduler stops a job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-8000:]  # a crash: every thread's stack (cli.run's faulthandler)
    assert f"\nSIGTERM: stopped; the best model so far is {os.path.join('weights', 'm.keras')}" in err
    assert err.splitlines()[-1] == f"Resume with: python3 {script} --epochs 100 " + " ".join(args)
    done = backed_up(backup)["epochs"]
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--epochs", str(done + 1), *args]) == 0
    assert f"Resuming the interrupted retrain after epoch {done} " in capsys.readouterr().out
    assert load_json_result(tmp_path / "weights" / "m.retrain.txt.json")["epochs_trained"] == done + 1


@pytest.mark.slow
@pytest.mark.parametrize("becomes", ["nothing", "an error"])
def test_a_signal_that_a_library_swallowed_mid_retrain_still_stops_it_at_once_resumable(tmp_path, monkeypatch, capsys, becomes):
    import trial_backup

    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 0.0)
    real_end = trial_backup.TrialBackup.on_epoch_end

    def swallowing(self, epoch, logs=None):  # in the second epoch, as C code that TensorFlow calls into can
        real_end(self, epoch, logs)
        if epoch != 1:
            return
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt as err:
            if becomes == "an error":
                raise SystemError(f"bad argument to internal function ({err!r})") from None
            return
        raise AssertionError("SIGTERM was not turned into KeyboardInterrupt")

    monkeypatch.setattr(trial_backup.TrialBackup, "on_epoch_end", swallowing)
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "3", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]
    assert retrain.main(args) == 143
    assert "\nSIGTERM: stopped; the best model so far is " in capsys.readouterr().err
    assert not (tmp_path / "weights" / "m.retrain.txt.json").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert retrain.main(args) == 0
    assert "Resuming the interrupted retrain after epoch " in capsys.readouterr().out


@pytest.mark.slow
def test_a_retrain_backed_up_by_keras_as_an_earlier_version_did_says_so_and_starts_anew(tmp_path, monkeypatch, capsys):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    settings = {"space": SMALL_SPACE, "dataset": "synthetic", "selected_on": "validation", "seed": 0, "train_images": 300,
                "precision": "float32"}
    folder = tmp_path / "weights" / "m.backup"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "training_metadata.json").write_text('{"epoch": 4}')  # Keras's BackupAndRestore's
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--epochs", "1", "--train-subset", "300", "--verbose", "0", "--precision", "float32"]) == 0
    assert "The interrupted retrain was backed up by an earlier version of this code, whose backup this one does not " \
        "read: it starts anew\n" in capsys.readouterr().out
    assert load_json_result(tmp_path / "weights" / "m.retrain.txt.json")["epochs_trained"] == 1 and not folder.exists()


def test_a_retrain_resumes_neither_one_running_now_nor_one_of_other_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    settings = {"space": SMALL_SPACE, "dataset": "synthetic", "selected_on": "validation", "seed": 0, "train_images": 300,
                "precision": "float32"}
    run, running, resumes = retrain.claim_run("m", settings)
    assert (run, resumes) == ("m", False)
    run, other, resumes = retrain.claim_run("m", settings)
    assert (run, resumes) == ("m-2", False)  # not the one running now
    running.release(), other.release()  # both stopped before their end: interrupted
    assert retrain.claim_run("m", {**settings, "seed": 5})[::2] == ("m-3", False)
    assert capsys.readouterr().err == "".join(
        f"warning: {os.path.join('weights', run)}.backup/ is an interrupted retrain of other settings: --seed 0; "
        "rerun with those to resume it\n" for run in ("m", "m-2"))
    assert retrain.claim_run("m", settings)[::2] == ("m", True)
    # One of another --weights-seed is another retrain, named as its option is.
    retrain.claim_run("w", {**settings, "weights_seed": 7})[1].release()
    assert retrain.claim_run("w", settings)[::2] == ("w-2", False)
    assert capsys.readouterr().err == (f"warning: {os.path.join('weights', 'w')}.backup/ is an interrupted retrain of "
                                       "other settings: --weights-seed 7; rerun with those to resume it\n")
    (tmp_path / "weights" / "n.backup").mkdir()  # a retrain killed before it wrote its settings: it never trained
    assert retrain.claim_run("n", settings)[::2] == ("n", False)
    assert retrain.read_settings(tmp_path / "weights" / "n.backup") == settings


@pytest.mark.slow
def test_a_second_retrain_of_a_model_keeps_the_first_ones_best_model_and_logs(tmp_path, monkeypatch, capsys):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "synthetic"}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    quick = ["--epochs", "1", "--train-subset", "300", "--verbose", "0", "--precision", "float32"]
    assert retrain.main(quick) == 0
    first_model = (tmp_path / "weights" / "model_0.2_aaaaa.keras").read_bytes()
    first_logs = {p: p.stat().st_size for p in (tmp_path / "TensorBoard" / "model_0.2_aaaaa").rglob("*")}
    assert retrain.main([*quick, "--seed", "1"]) == 0
    assert "(from results/model_0.2_aaaaa.txt.json) as model_0.2_aaaaa-2, beside the earlier retrains" in capsys.readouterr().out
    assert (tmp_path / "weights" / "model_0.2_aaaaa.keras").read_bytes() == first_model
    assert {p: p.stat().st_size for p in (tmp_path / "TensorBoard" / "model_0.2_aaaaa").rglob("*")} == first_logs
    second = load_json_result(tmp_path / "weights" / "model_0.2_aaaaa-2.retrain.txt.json")
    assert second["checkpoint"] == os.path.join("weights", "model_0.2_aaaaa-2.keras")
    assert keras.saving.load_model(tmp_path / second["checkpoint"]).count_params() > 0
    assert scalar_tags(tmp_path / "TensorBoard" / "model_0.2_aaaaa-2")


@pytest.mark.parametrize("name, content, message", [
    ("results.pkl", b"\x80\x04\x95", "results.pkl is not a result file of the search: not JSON ("),
    ("missing.json", None, "cannot read missing.json: No such file or directory\n"),
])
def test_retrain_of_a_file_that_is_no_result_exits_2_with_one_line(tmp_path, monkeypatch, capsys, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("content", ['[1, 2]', '{"status": "fail", "space": null, "model_name": "model_failed_abcde"}'])
def test_retrain_of_a_result_without_a_network_exits_2(tmp_path, monkeypatch, capsys, content):
    (tmp_path / "r.txt.json").write_text(content)
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", "r.txt.json"]) == 2
    assert capsys.readouterr().err == "error: r.txt.json has no 'space' to rebuild the network from\n"


def test_retrain_of_a_network_lacking_hyperparameters_exits_2_before_it_makes_its_folders(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.txt.json").write_text(json.dumps({"loss": -0.5, "dataset": "synthetic",
                                                     "space": {k: v for k, v in SMALL_SPACE.items() if k != "batch_size"}}))
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", "r.txt.json"]) == 2
    assert capsys.readouterr().err == "error: r.txt.json's space lacks batch_size: not a network of the search\n"
    assert not (tmp_path / "TensorBoard").exists() and not (tmp_path / "weights").exists()


def test_a_result_whose_npz_is_not_here_asks_for_its_path(tmp_path, monkeypatch, capsys):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "mine.npz"}, tmp_path / "results")  # as a search on --dataset /data/mine.npz records it
    monkeypatch.chdir(tmp_path)
    assert retrain.main([]) == 2
    assert capsys.readouterr().err == ("error: dataset file mine.npz does not exist (the dataset "
                                       "results/model_0.2_aaaaa.txt.json was trained on: give its path with --dataset)\n")
    # CIFAR-100's own message says where its archive goes: no advice to pass a path.
    save_json_result({"loss": -0.1, "status": "ok", "model_name": "model_0.1_bbbbb", "space": SMALL_SPACE,
                      "dataset": "cifar100"}, tmp_path / "results")
    assert retrain.main(["--result", "results/model_0.1_bbbbb.txt.json", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'cifar-100-python.tar.gz'} does not exist") and "--dataset)" not in err
    # An npz that is here, refused for another reason: no advice to give its path either.
    (tmp_path / "mine.npz").write_bytes(b"")
    assert retrain.main(["--result", "results/model_0.2_aaaaa.txt.json", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --data-dir is where the official CIFAR archives lie; mine.npz does not read it\n"


@pytest.mark.parametrize("args, select_on, train_images", [([], "test", 300), (["--select-on", "validation"], "validation", 270)])
def test_a_2017_result_retrains_selecting_on_the_test_set_as_its_search_did(tmp_path, monkeypatch, capsys,
                                                                            args, select_on, train_images):
    write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz")
    # 2017's files have neither the dataset nor what selected them: CIFAR-100's test set did.
    (tmp_path / "model_2017.txt.json").write_text(json.dumps({"loss": -0.6, "status": "ok", "space": SMALL_SPACE,
                                                              "fine_best_accuracy": 0.6,
                                                              "history": {"val_fine_outputs_acc": [0.2, 0.6, 0.5]}}))
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", "model_2017.txt.json", "--data-dir", ".", "--epochs", "1", "--verbose", "0",
                         "--histogram-freq", "0", *args]) == 0
    out = capsys.readouterr().out
    result = load_json_result(tmp_path / "weights" / "model_2017.retrain.txt.json")
    assert (result["selected_on"], result["train_images"]) == (select_on, train_images)
    assert ("the test images select epochs" in out) == (select_on == "test")
    test = "" if select_on == "test" else f", test {result['test_fine_accuracy']:.4f}"
    assert f"Retrained:     {select_on} fine accuracy {result['fine_best_accuracy']:.4f}{test} (best epoch 1 of 1), " \
           f"{train_images} training images; result in " in out
    # Beside it, what the search reached, and on how many images: 2017's on all of CIFAR-100's, selected on the test set.
    assert "In the search: test fine accuracy 0.6000 (best epoch 2 of 3), 50,000 training images\n" in out


def test_a_retrain_validates_on_the_images_its_search_did(tmp_path, monkeypatch):
    from datasets import load_dataset
    from batches import targets

    # --seed draws the validation split and, on synthetic data, the images themselves.
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "synthetic", "selected_on": "validation", "seed": 5}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--epochs", "2", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]) == 0
    result = load_json_result(tmp_path / "weights" / "model_0.2_aaaaa.retrain.txt.json")
    assert result["seed"] == 5
    data = load_dataset("synthetic", train_subset=300, seed=5)
    model = keras.saving.load_model(tmp_path / "weights" / "model_0.2_aaaaa.keras")
    scores = model.evaluate(data.x_val, targets(data, "val"), verbose=0, return_dict=True)
    assert scores["fine_outputs_accuracy"] == pytest.approx(result["fine_best_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_retrain_stopped_and_resumed_trains_as_an_unbroken_one(tmp_path, monkeypatch):
    import neural_net
    import trial_backup
    from pruning import MONITOR

    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 0.0)
    space = {**SMALL_SPACE, "conv_dropout_drop_proba": 0.2, "fc_dropout_drop_proba": 0.2}  # masks to draw, and flips
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": space,
                      "dataset": "synthetic"}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "3", "--train-subset", "300", "--verbose", "0", "--precision", "float32", "--histogram-freq", "0"]
    assert retrain.main(args) == 0
    real = neural_net.build_and_train

    class CtrlCAfterTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(neural_net, "build_and_train", lambda space, data, callbacks, **kw: real(
        space, data, callbacks=[*callbacks, CtrlCAfterTheSecondEpoch()], **kw))
    assert retrain.main(args) == 130  # a second retrain, stopped
    monkeypatch.setattr(neural_net, "build_and_train", real)
    assert retrain.main(args) == 0  # and resumed
    unbroken = load_json_result(tmp_path / "weights" / "model_0.2_aaaaa.retrain.txt.json")
    resumed = load_json_result(tmp_path / "weights" / "model_0.2_aaaaa-2.retrain.txt.json")
    assert resumed["resumed_after_epoch"] == 2 and "resumed_after_epoch" not in unbroken
    # Its third epoch saw the unbroken one's batches, flips and dropout masks: the same figures, to the float rounding of
    # threaded reductions.
    for key in ("loss", "val_loss", MONITOR):
        assert resumed["history"][key] == pytest.approx(unbroken["history"][key], rel=1e-4), key


@pytest.mark.slow
def test_a_retrain_on_its_trials_images_repeats_the_trial_and_says_so_beside_it(tmp_path, monkeypatch, capsys):
    import hyperopt_optimize

    monkeypatch.chdir(tmp_path)
    assert hyperopt_optimize.main(["--dataset", "synthetic", "--space", "tiny", "--train-subset", "300", "--seed", "3",
                                   "--max-evals", "1", "--epochs", "2", "--verbose", "0", "--no-plot"]) == 0
    (trial,) = [load_json_result(path) for path in (tmp_path / "results").glob("*.json")]
    capsys.readouterr()
    assert retrain.main(["--epochs", "2", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0"]) == 0
    (retrained,) = [load_json_result(path) for path in (tmp_path / "weights").glob("*.json")]
    lines = capsys.readouterr().out.splitlines()
    retrained_line = next(line for line in lines if line.startswith("Retrained:"))
    assert retrained_line.endswith(f"; result in weights/{retrained['model_name']}.txt.json")
    assert f"In the search: {retrained_line.removeprefix('Retrained:').split(';')[0].strip()}" in lines
    assert ", test " in retrained_line and "300 training images" in retrained_line
    assert not any(line.startswith("Trained with other") for line in lines)  # the trial's own software and device
    # The same weights, batches and images: the same curve, to the float rounding of threaded reductions.
    for key in ("loss", "val_fine_outputs_accuracy", "val_coarse_outputs_loss"):
        assert retrained["history"][key] == pytest.approx(trial["history"][key], rel=1e-4), key
    assert retrained["weights_seed"] == weights_seed(3, trial["space"])
    first = tmp_path / "weights" / f"{trial['model_name']}.retrain.txt.json"  # as a version before --weights-seed wrote it
    first.write_text(json.dumps({k: v for k, v in retrained.items() if k != "weights_seed"}))
    # Another draw of the weights and batches, on the same images: another curve, beside the first retrain's. The trial
    # as an older commit of the code trained it, on a Spark worker's share of the cores: which the retrain says, as they may
    # set their figures apart.
    trial_file = next((tmp_path / "results").glob("*.json"))
    trial_file.write_text(json.dumps(trial | {"code_version": "0123456789ab", "device": "CPU (Other CPU, 1 core)"}))
    assert retrain.main(["--epochs", "2", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0",
                         "--weights-seed", "7"]) == 0
    out = capsys.readouterr().out
    assert (f"\nTrained with other software or hardware than the trial: code_version {code_version()} (the trial's: "
            f"0123456789ab), device {device_name()} (the trial's: CPU (Other CPU, 1 core))\n") in out
    other = load_json_result(tmp_path / "weights" / f"{trial['model_name']}-2.retrain.txt.json")
    assert other["weights_seed"] == 7 and other["seed"] == 3 and other["val_images"] == trial["val_images"]
    assert other["history"]["loss"] != pytest.approx(trial["history"]["loss"], rel=1e-3)

    def spread(key):
        values = [retrained[key], other[key]]
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"

    # The two draws' accuracies, summed up; a retrain of other epochs is none of them.
    seeds = ", ".join(map(str, sorted([7, retrained["weights_seed"]])))
    assert (f"Over 2 draws of its weights and batches (--weights-seed {seeds}) on these images: "
            f"validation fine accuracy {spread('fine_best_accuracy')}, test {spread('test_fine_accuracy')} "
            "(mean ± standard deviation)\n") in out
    assert retrain.main(["--epochs", "1", "--train-subset", "300", "--verbose", "0", "--histogram-freq", "0",
                         "--weights-seed", "8"]) == 0
    assert "Over " not in capsys.readouterr().out


def test_a_result_without_a_model_name_retrains_under_its_file_name(tmp_path, monkeypatch):
    (tmp_path / "mine.txt.json").write_text(json.dumps({"loss": -0.2, "status": "ok", "space": SMALL_SPACE,
                                                         "dataset": "synthetic"}))
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", "mine.txt.json", "--epochs", "1", "--train-subset", "300", "--verbose", "0"]) == 0
    assert (tmp_path / "weights" / "mine.keras").is_file() and (tmp_path / "TensorBoard" / "mine").is_dir()


def test_retrain_without_results_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert retrain.main([]) == 2
    assert "no result to retrain in results/; run hyperopt_optimize.py first" in capsys.readouterr().err


def test_a_result_file_given_as_the_results_folder_is_refused_naming_the_result_option(tmp_path, monkeypatch, capsys):
    path = save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--results-dir", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --results-dir {path} is a file: to retrain that result, pass it with --result\n"
    assert not (tmp_path / "weights").exists()


def test_a_results_folder_given_as_the_result_is_refused_naming_the_folder_option(tmp_path, monkeypatch, capsys):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--result", "results"]) == 2
    assert capsys.readouterr().err == ("error: --result results is a folder: to retrain its best trial, pass it with "
                                       "--results-dir\n")
    assert not (tmp_path / "weights").exists()


def test_retrain_of_a_search_whose_trials_all_failed_says_so_rather_than_to_run_one(tmp_path, monkeypatch, capsys):
    for _ in range(2):
        save_json_result(failure(SMALL_SPACE, None, MemoryError("out of memory")), tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert retrain.main([]) == 2
    assert capsys.readouterr().err == ("error: no finished trial to retrain in results/: its 2 failed (their result files "
                                       "say why); pass --result FILE to retrain one of them anyway\n")
    assert not (tmp_path / "weights").exists()
    # Retrained anyway, as asked, and said to have failed: a network that killed the search's process may again.
    one = next((tmp_path / "results").glob("model_failed_*.txt.json"))
    assert retrain.main(["--result", str(one), "--dataset", "missing.npz"]) == 2
    assert capsys.readouterr().err.startswith(f"warning: {one} is a trial that failed in the search (MemoryError: out of "
                                              "memory): retraining it as asked\nerror: dataset file missing.npz")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_a_library_swallowed_while_the_data_loaded_still_stops_the_retrain_before_it_trains(
        tmp_path, monkeypatch, capsys, signum):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "m", "space": SMALL_SPACE, "dataset": "synthetic"},
                     tmp_path / "results")
    swallow_a_signal_while_the_data_loads(monkeypatch, signum)
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signum)
    assert retrain.main(["--train-subset", "300"]) == 128 + signum
    assert capsys.readouterr().err.strip() == "Interrupted."
    assert not (tmp_path / "weights").exists() and not (tmp_path / "TensorBoard").exists()
    assert signal.getsignal(signum) is handler


def test_a_retrain_stopped_while_it_saves_a_better_epoch_keeps_the_previous_best_whole(tmp_path, monkeypatch):
    from neural_net import build_model

    path = tmp_path / "weights" / "model.keras"
    identity = {"tid": None, "space": SMALL_SPACE, "suggested_by": None, "precision": "float32", "code_version": None}
    backup = RetrainBackup(tmp_path / "weights" / "backup.npz", identity, None, path)
    backup.set_model(build_model(SMALL_SPACE))
    backup.keeper = types.SimpleNamespace(best_weights=backup.model.get_weights(), best_epoch=0)  # its early stopping's
    backup.save_best()
    before = path.read_bytes()

    def torn_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(before[:100])  # the new model half written...
        raise KeyboardInterrupt  # ...when Ctrl-C or a kill came

    monkeypatch.setattr(keras.Model, "save", torn_save)
    backup.keeper.best_epoch = 1
    with pytest.raises(KeyboardInterrupt):
        backup.save_best()
    assert path.read_bytes() == before and keras.saving.load_model(path, compile=False).count_params() > 0
    assert [p.name for p in path.parent.iterdir()] == ["model.keras"]  # no temporary file left behind


def test_a_folder_without_a_model_given_to_visualise_is_named_in_the_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert viz.main(["--model", str(tmp_path / "runs"), "--out", str(tmp_path / "layers")]) == 2
    assert capsys.readouterr().err == (f"error: no model to load ({tmp_path / 'runs' / '*.keras'}); run "
                                       "retrain_best_with_tensorboard.py first or pass --model PATH\n")


def test_the_default_model_to_visualise_is_the_newest_saved_not_a_save_in_progress(tmp_path):
    for when, name in enumerate(["model_a.keras", "model_b.keras", ".model_a.keras.x1y2z3.tmp.keras"]):  # last: torn by a kill
        (tmp_path / name).write_bytes(b"PK")
        os.utime(tmp_path / name, (when, when))
    assert viz.newest_model(tmp_path).name == "model_b.keras"


@pytest.mark.slow
def test_filter_images_have_the_grid_size_and_are_not_flat(retrained, tmp_path):
    folder, _ = retrained
    assert viz.main(["--model", str(folder / "weights" / "model_0.2_aaaaa.keras"), "--max-filters", "16",
                     "--steps", "10", "--out", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["add_best_filters_16_(4x4)_out_of_16.png"]
    image = matplotlib.image.imread(pngs[0])
    side = (4 * 32 + 3 * 2) * 4  # 4x4 input-sized images, 2-pixel margins, each pixel 4x4 for viewing
    assert image.shape[:2] == (side, side)
    assert image.std() > 0.05
    # Its folder given instead: the newest model there, the same one.
    assert viz.main(["--model", str(folder / "weights"), "--max-filters", "16", "--steps", "10", "--out", str(tmp_path),
                     "--zoom", "1"]) == 0
    assert np.array_equal(matplotlib.image.imread(pngs[0]), image[::4, ::4])  # the same pixels, one for one


@pytest.mark.slow
def test_the_retrain_and_the_filters_take_the_first_of_several_gpus_alone(retrained, tmp_path, monkeypatch, capsys):
    folder, _ = retrained
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_GPUS)
    assert viz.main(["--model", str(folder / "weights" / "model_0.2_aaaaa.keras"), "--max-filters", "1", "--steps", "1",
                     "--out", str(tmp_path / "layers")]) == 0
    assert "4 GPUs here, and Keras uses one: GPU 0 alone" in capsys.readouterr().out
    assert os.environ.pop("CUDA_VISIBLE_DEVICES") == "0"
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "mine.npz"}, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    assert retrain.main([]) == 2  # mine.npz is not here: it stops once it has said where it trains
    assert "4 GPUs here, and Keras uses one: GPU 0 alone" in capsys.readouterr().out
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.slow
def test_visualization_runs_on_tensorflow_whatever_the_keras_backend(retrained, tmp_path):
    folder, _ = retrained
    env = {**os.environ, "KERAS_BACKEND": "jax"}  # as a user who trained on JAX may have it set
    done = subprocess.run([sys.executable, viz.__file__, "--model", str(folder / "weights" / "model_0.2_aaaaa.keras"),
                           "--max-filters", "4", "--steps", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.glob("*.png")] == ["add_best_filters_4_(2x2)_out_of_4.png"]
    assert "filter/s" not in done.stdout + done.stderr  # output to a file: no progress bar redrawn into it


def test_the_retrains_callbacks_let_keras_on_jax_dispatch_the_next_step_without_waiting(tmp_path):
    # Keras's own TensorBoard callback has per-step hooks (its BackupAndRestore, which the retrain used before, too),
    # so Keras on JAX waited for every step of a retrain.
    check = ("import keras, retrain_callbacks as r, cli; from pathlib import Path; "
             "backup = r.RetrainBackup(Path('backup.npz'), {}, None, Path('m.keras')); "
             "mine = r.retrain_callbacks(Path('logs'), 1, backup, cli.SignalGuard()); "
             "print(keras.callbacks.CallbackList(mine)._async_train, "
             "keras.callbacks.CallbackList([keras.callbacks.TensorBoard()])._async_train)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)})
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["the first conv", "fine_outputs"])  # a filter's mean activation, a class's probability
def test_gradient_ascent_raises_the_filters_activation(retrained, layer):
    import keras

    folder, _ = retrained
    model = keras.saving.load_model(folder / "weights" / "model_0.2_aaaaa.keras")
    if layer == "the first conv":
        climbed = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][0]
    else:
        climbed = model.get_layer(layer)
    features = viz.feature_model(model, climbed)
    _, trace = viz.ascend(features, list(range(8)), (32, 32, 3), 15, 0.01, np.random.default_rng(0))
    alive = trace[0] != 0  # a filter that no pixel of the start image excites has no gradient to climb
    assert alive.sum() >= 3
    assert (trace[-1][alive] > trace[0][alive]).all()


@pytest.mark.parametrize("taken, folder", [("weights", "weights"), ("TensorBoard", "TensorBoard/model_0.2_aaaaa")])
def test_retrain_where_logs_or_model_cannot_be_written_exits_2_before_training(tmp_path, monkeypatch, capsys, taken,
                                                                                folder):
    save_json_result({"loss": -0.2, "status": "ok", "model_name": "model_0.2_aaaaa", "space": SMALL_SPACE,
                      "dataset": "synthetic"}, tmp_path / "results")
    (tmp_path / taken).write_text("")  # a file where the folder should be
    monkeypatch.chdir(tmp_path)
    assert retrain.main(["--train-subset", "300"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: cannot write the logs and the model: [Errno 20] Not a directory: '{folder}'\n"
    assert "Retraining" not in captured.out


def test_visualization_of_a_torn_model_another_file_or_layers_that_cannot_be_climbed_exits_2(tmp_path, capsys):
    from neural_net import build_model

    ours, plain = tmp_path / "ours.keras", tmp_path / "plain.keras"
    build_model(SMALL_SPACE).save(ours)
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)).save(plain)
    assert viz.main(["--model", str(ours), "--layers", "^(images|rescaling)$", "--out", str(tmp_path)]) == 2
    assert f"no layer of {ours} after its input's scaling matches" in capsys.readouterr().err
    assert viz.main(["--model", str(plain), "--out", str(tmp_path)]) == 2
    assert "has no Rescaling layer after its input: not a network of this project" in capsys.readouterr().err
    torn = tmp_path / "torn.keras"
    torn.write_bytes(ours.read_bytes()[:3000])  # a copy cut short
    assert viz.main(["--model", str(torn), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {torn} is not a whole .keras model: a .keras file is a zip archive, "
                                       "this one is not (cut short, or another file)\n")
    (tmp_path / "notes.txt").write_text("not a model")
    assert viz.main(["--model", str(tmp_path / "notes.txt"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'notes.txt'} is not a saved Keras model: give a .keras file (or a legacy .h5)\n"
    assert not list(tmp_path.glob("*.png"))


def test_a_signal_mid_write_lets_the_visualization_finish_and_name_that_grid_then_stops_it_with_one_line(
        tmp_path, monkeypatch, capsys):
    from neural_net import build_model

    build_model(SMALL_SPACE).save(tmp_path / "ours.keras")
    real_imsave = matplotlib.image.imsave

    def imsave_then_sigterm(*args, **kwargs):  # as a cluster's scheduler stops a job while the first grid is written
        real_imsave(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(matplotlib.image, "imsave", imsave_then_sigterm)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "layers"
    args = ["--model", str(tmp_path / "ours.keras"), "--layers", "conv", "--steps", "1", "--max-filters", "4", "--out", str(out)]
    assert viz.main(args) == 143
    captured = capsys.readouterr()
    assert captured.err == "\nSIGTERM: stopped; the grids written above are complete\n"
    [grid] = os.listdir(out)  # of the model's 2 conv layers, the first alone, and no temporary file beside it
    assert ": 2 layers: " in captured.out and captured.out.endswith(f"\n  wrote {out / grid}\n")
    assert matplotlib.image.imread(out / grid).shape == (2 * 128 + 2 * 4, 2 * 128 + 2 * 4, 4)  # whole: 2x2 tiles
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_tensorflow_swallowed_mid_climb_still_stops_the_visualization_after_that_layer(
        tmp_path, monkeypatch, capsys, signum):
    from neural_net import build_model

    build_model(SMALL_SPACE).save(tmp_path / "ours.keras")
    swallow_a_signal_in(monkeypatch, viz, "ascend", signum)
    args = ["--model", str(tmp_path / "ours.keras"), "--layers", "conv", "--steps", "1", "--max-filters", "1",
            "--out", str(tmp_path / "layers")]
    assert viz.main(args) == 128 + signum
    assert capsys.readouterr().err == f"\n{signal.Signals(signum).name}: stopped; the grids written above are complete\n"
    assert len(os.listdir(tmp_path / "layers")) == 1


def test_a_full_disk_ends_the_visualization_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import errno

    from neural_net import build_model

    build_model(SMALL_SPACE).save(tmp_path / "ours.keras")

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(matplotlib.image, "imsave", full_disk)
    args = ["--model", str(tmp_path / "ours.keras"), "--out", str(tmp_path), "--steps", "1", "--max-filters", "1"]
    assert viz.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write a grid ([Errno 28] No space left on device: ")
    assert err.endswith("); the grids written above are complete\n") and len(err.splitlines()) == 1


def test_visualization_without_a_model_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert viz.main([]) == 2
    assert "no model to load" in capsys.readouterr().err


@pytest.mark.slow
def test_visualization_into_a_folder_that_cannot_be_written_exits_2(retrained, tmp_path, capsys):
    folder, _ = retrained
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "layers"
    assert viz.main(["--model", str(folder / "weights" / "model_0.2_aaaaa.keras"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write to {out}/")
