"""A search stopped in the middle of a trial resumes that trial from its backup, not from its first epoch."""

import json
import os
import signal
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

import trial_backup
from conftest import REPO, SMALL_SPACE
from datasets import load_dataset
from neural_net import build_and_train
from pruning import MONITOR, Progress
from test_search import in_process, result_files
from trial import Objective, cut_short_line
from trial_backup import TrialBackup, backup_file, read_backup
from utils import load_trials, to_json


def watching(on_epoch_begin=None, on_epoch_end=None):
    """A callback that runs the given hooks, with the model, at each epoch's start and end."""
    callback = keras.callbacks.Callback()
    callback.on_epoch_begin = lambda epoch, logs=None: on_epoch_begin and on_epoch_begin(callback.model, epoch)
    callback.on_epoch_end = lambda epoch, logs=None: on_epoch_end and on_epoch_end(callback.model, epoch, logs)
    return callback


def state_of(model) -> list[np.ndarray]:
    optimizer = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    return [np.array(w) for w in model.get_weights()] + optimizer


def test_a_backup_puts_back_the_network_its_optimizer_and_its_best_epoch_where_it_stopped(tmp_path, monkeypatch):
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")  # the backend it was asked to run on
    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 0.0)
    data = load_dataset("synthetic", synthetic_size=300)
    space = {**SMALL_SPACE, "conv_dropout_drop_proba": 0.2, "fc_dropout_drop_proba": 0.2}  # masks to draw, and flips
    identity = {"tid": 4, "space": space, "suggested_by": "tpe", "precision": "float32", "code_version": "abc"}
    after = {}
    backup = TrialBackup(backup_file(tmp_path), identity)
    seen = watching(on_epoch_end=lambda model, epoch, logs: after.update({epoch: state_of(model)}))
    _, first = build_and_train(space, data, epochs=3, callbacks=[backup, seen], precision="float32", seed=1)
    assert first["status"] == "ok"

    restored = read_backup(tmp_path, set())
    assert read_backup(tmp_path, {4}) is None  # its trial saved since
    # Backed up at the end of epoch 2: none after the last, which ends the trial.
    assert (restored.tid, restored.space, restored.suggested_by, restored.epochs) == (4, space, "tpe", 2)
    assert {key: values[:2] for key, values in first["history"].items()} == restored.progress.history
    best = int(np.argmax(first["history"][MONITOR][:2]))
    assert all(np.array_equal(a, b) for a, b in zip(restored.progress.best_weights, after[best][:len(restored.weights)]))

    # Resumed: epoch 3 starts from the state that epoch 2 ended with, weights and optimizer alike.
    began = {}
    again = TrialBackup(tmp_path / "again.npz", identity, restore=restored)
    seen = watching(on_epoch_begin=lambda model, epoch: began.update({epoch: state_of(model)}))
    _, second = build_and_train(space, data, epochs=3, callbacks=[again, seen], precision="float32", seed=1,
                                before=restored.progress)
    assert list(began) == [2]
    assert len(began[2]) == len(after[1]) and all(np.array_equal(a, b) for a, b in zip(began[2], after[1]))
    assert second["epochs_trained"] == 3 and second["history"][MONITOR][:2] == first["history"][MONITOR][:2]
    # Its epoch 3 saw the batches, flips and dropout masks of the unbroken training's: the same figures, to the float
    # rounding of threaded reductions.
    for key in ("loss", "fine_outputs_accuracy", "val_loss", MONITOR):
        assert second["history"][key] == pytest.approx(first["history"][key], rel=1e-4), key

    # Resumed with a budget that its backup has spent: tested with its best epoch's weights, as it is.
    began.clear()
    spent = TrialBackup(tmp_path / "spent.npz", identity, restore=restored)
    seen = watching(on_epoch_begin=lambda model, epoch: began.update({epoch: state_of(model)}))
    model, third = build_and_train(space, data, epochs=2, callbacks=[spent, seen], precision="float32", seed=1,
                                   before=restored.progress)
    assert not began and third["status"] == "ok" and third["epochs_trained"] == 2 and third["max_epochs"] == 2
    assert third["best_epoch"] == best + 1 and third["fine_best_accuracy"] == max(first["history"][MONITOR][:2])
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), restored.progress.best_weights))


def test_a_stop_writes_the_epochs_end_kept_in_memory_untouched_by_the_training_after_it(tmp_path, monkeypatch):
    monkeypatch.setattr(trial_backup, "BACKUP_EVERY_S", 1e9)  # none written as it trains
    monkeypatch.setattr(trial_backup, "SNAPSHOT_EVERY_S", 0.0)
    identity = {"tid": 2, "space": SMALL_SPACE, "suggested_by": "tpe", "precision": "float32", "code_version": None}
    backup, after = TrialBackup(backup_file(tmp_path), identity), {}
    seen = watching(on_epoch_end=lambda model, epoch, logs: after.update({epoch: state_of(model)}))
    build_and_train(SMALL_SPACE, load_dataset("synthetic", synthetic_size=300), epochs=3, callbacks=[backup, seen],
                    precision="float32", seed=1)
    assert not backup_file(tmp_path).exists()
    backup.flush()  # as a stop in epoch 3 would: epoch 2's end, kept before epoch 3 trained (the arrays are copies)
    kept = read_backup(tmp_path, set())
    assert kept.epochs == 2 and all(np.array_equal(a, b) for a, b in zip(kept.weights + kept.optimizer, after[1],
                                                                          strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(kept.weights, after[2]))


@pytest.mark.slow
def test_a_backup_puts_back_the_training_on_the_jax_backend_too():
    # Keras's JAX trainer reads the variables into its own state when an epoch starts: those put back before it.
    tests = [f"{__file__}::test_a_backup_puts_back_the_network_its_optimizer_and_its_best_epoch_where_it_stopped",
             f"{__file__}::test_a_stop_writes_the_epochs_end_kept_in_memory_untouched_by_the_training_after_it"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], capture_output=True,
                          text=True, timeout=600, cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


def test_a_backup_resumes_only_the_network_it_trained_in_the_same_precision_and_code_once(tmp_path, capsys):
    args = types.SimpleNamespace(epochs=3, patience=None, prune="none", verbose=0, precision="float32", seed=0,
                                 space="tiny", dataset="synthetic", results_dir=str(tmp_path))
    objective = Objective(None, args)
    objective.code_version = "abc"
    progress = types.SimpleNamespace(history={MONITOR: [0.1, 0.2]})
    backup = trial_backup.Backup(7, {"a": 1}, "tpe", "float32", "abc", "then", progress, [], [], [])
    for other in ({"a": 2}, {"a": 1}):
        objective.resumable = backup
        assert objective.restorable(other, "float32") is (backup if other == {"a": 1} else None)
    assert objective.restorable({"a": 1}, "float32") is None  # once
    objective.resumable, objective.code_version = backup, "def"
    assert objective.restorable({"a": 1}, "float32") is None
    assert capsys.readouterr().err == ("warning: trial 7's backup after epoch 2 trained with code version abc (now def):"
                                       " it starts anew\n")


def test_a_backup_that_no_longer_fits_its_network_is_warned_about_removed_and_its_trial_trains_anew(tmp_path, capsys):
    # As where the code that builds the network changed between two runs outside a git checkout (no code version).
    args = types.SimpleNamespace(epochs=2, patience=None, prune="median", verbose=0, precision="float32", seed=0,
                                 space="tiny", dataset="synthetic", results_dir=str(tmp_path))
    objective = Objective(load_dataset("synthetic", synthetic_size=300), args)
    point = json.loads(to_json(SMALL_SPACE))
    progress = Progress({"loss": [3.0], MONITOR: [0.1]}, None, 5.0, 0.0)
    unfit = [np.zeros(3)]  # its first weights' shape
    objective.resumable = trial_backup.Backup(0, point, "random", "float32", None, "then", progress, unfit, [], [])
    objective.backup_file.write_bytes(b"its backup")
    result = objective(SMALL_SPACE)
    assert capsys.readouterr().err == ("warning: the backup of trial 0 after epoch 1 does not fit its network as this "
                                       "code builds it: it starts anew\n")
    assert result["status"] == "ok" and result["epochs_trained"] == 2 and "resumed_after_epoch" not in result
    assert len(result["history"][MONITOR]) == 2 and not objective.backup_file.exists()


def test_a_backup_that_cannot_be_written_is_warned_about_once_with_what_a_resume_would_go_on_from(tmp_path, capsys):
    from neural_net import build_model

    model = build_model(SMALL_SPACE)
    model.optimizer.build(model.trainable_variables)
    identity = {"tid": 3, "space": SMALL_SPACE, "suggested_by": "tpe", "precision": "float32", "code_version": None}
    backup = TrialBackup(tmp_path / "backup.npz", identity)
    backup.set_model(model)
    backup.history = {MONITOR: [0.1, 0.2]}
    backup.save()  # after epoch 2
    (tmp_path / "full").write_text("")
    backup.path = tmp_path / "full" / "backup.npz"  # as a disk that filled since: no file can be made there
    for _ in range(2):  # epochs 3 and 4
        backup.history[MONITOR].append(0.1)
        backup.save()
    [line] = capsys.readouterr().err.splitlines()  # once
    assert line.startswith("warning: cannot back trial 3 up (") and line.endswith(
        "): were it stopped, its resume would go on after epoch 2")
    assert trial_backup.load_backup(tmp_path / "backup.npz").epochs == 2  # which the resume would go on from


def test_runs_that_died_after_backing_a_trial_up_do_not_count_against_its_network(tmp_path):
    args = types.SimpleNamespace(epochs=9, patience=None, prune="none", verbose=0, precision="float32", seed=0,
                                 space="tiny", dataset="synthetic", results_dir=str(tmp_path))
    objective = Objective(None, args)
    network = {"a": 1}
    # Two runs died training it, both from its backup of epoch 4 (a network that kills the process at epoch 6, say).
    objective.cut_short = {"tid": 3, "space": network, "started": ["t1", "t2"], "from_epoch": 4}
    assert cut_short_line(objective.cut_short, 4).endswith(
        "it died so 2 times on that network: if the search suggests its network again, it is recorded as failed, not "
        "trained again")
    failed = objective.mark_running(network, 0.0, None, from_epoch=4)
    assert failed["status"] == "fail" and failed["error"].startswith("ProcessDied: ")
    # The last of them backed it up after epoch 7 before it died (a machine preempted twice in a long trial): it goes on.
    assert cut_short_line(objective.cut_short, 7).endswith(
        "; it had backed the trial up after epoch 7, which the search goes on from")
    assert objective.mark_running(network, 0.0, None, from_epoch=7) is None
    marked = json.loads((tmp_path / ".running_trial").read_text())
    assert len(marked["started"]) == 1 and marked["from_epoch"] == 7


@pytest.mark.slow
def test_a_search_stopped_mid_trial_goes_on_with_that_trial_from_its_backup(tmp_path, monkeypatch, capsys):
    import neural_net

    # Epoch 2's end kept in memory, and written as the search stops: no backup every 5 minutes in a trial of seconds.
    monkeypatch.setattr(trial_backup, "SNAPSHOT_EVERY_S", 0.0)
    callbacks, epochs, logs = neural_net.trial_callbacks, [], []

    def interrupted_at_epoch_2(*args, **kwargs):
        def ended(model, epoch, epoch_logs):
            logs.append(dict(epoch_logs))
            if epoch == 1 and len(logs) == 2:  # the first run, once its backup has kept epoch 2's end
                os.kill(os.getpid(), signal.SIGINT)

        return callbacks(*args, **kwargs) + [watching(lambda model, epoch: epochs.append(epoch), ended)]

    monkeypatch.setattr(neural_net, "trial_callbacks", interrupted_at_epoch_2)
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--epochs", "3") == 130
    out = capsys.readouterr().out
    assert "SIGINT: stopped; 0 finished trials saved, trial 0 is backed up after epoch 2 (" in out
    assert not result_files(tmp_path) and (tmp_path / "results" / ".trial_backup.npz").exists()
    first_line = next(line for line in out.splitlines() if " Trial 0, up to 3 epochs: " in line)

    epochs.clear()
    assert in_process(tmp_path, monkeypatch, "--max-evals", "1", "--epochs", "3") == 0
    out = capsys.readouterr().out
    assert "Trial 0 was stopped after epoch 2, which its backup of " in out
    assert " Trial 0, resumed after epoch 2 (its backup of " in out
    assert epochs == [2]  # its last epoch alone
    [trial] = [json.loads(path.read_text()) for path in result_files(tmp_path)]
    assert trial["resumed_after_epoch"] == 2 and trial["epochs_trained"] == 3
    assert trial["history"][MONITOR][:2] == [log[MONITOR] for log in logs[:2]]
    assert trial["started"][:19].replace("T", " ") == first_line[:19]  # when its first run started it
    assert trial["suggested_by"] == "random"  # as the first run's suggestion was, not "enqueue"
    assert not (tmp_path / "results" / ".trial_backup.npz").exists()  # gone once its trial was saved
    assert [t["tid"] for t in load_trials(tmp_path / "results.pkl").trials] == [0]
