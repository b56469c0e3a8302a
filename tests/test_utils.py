"""Results on disk: atomic JSON, choosing the best by `loss`, the trials pickle and the run lock."""

import json
import os
import pickle
import stat

import numpy as np
import pytest
from hyperopt import Trials

from utils import (RunLock, TrialsFileError, load_best_result, load_json_result, load_trials,
                   save_json_result, save_trials)


def result(acc, name, status="ok"):
    return {"loss": -acc, "status": status, "space": {}, "model_name": name}


def test_result_json_holds_numpy_values_and_is_named_after_the_model(tmp_path):
    r = {**result(0.5, "model_0.5_abcde"), "history": {"acc": np.array([0.1, 0.5], np.float32)},
         "n_params": np.int64(7), "nan": float("nan")}
    path = save_json_result(r, tmp_path)
    assert path.name == "model_0.5_abcde.txt.json"
    loaded = load_json_result(path)
    assert loaded["n_params"] == 7 and loaded["history"]["acc"] == pytest.approx([0.1, 0.5])
    assert loaded["nan"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["model_0.5_abcde.txt.json"]  # no temp file left


def test_best_result_is_chosen_by_loss_not_by_file_name(tmp_path):
    # Sorted by name, "model_0.9..." comes last, but its loss field is worse.
    save_json_result({**result(0.5, "model_0.9_aaaaa")}, tmp_path)
    save_json_result({**result(0.7, "model_0.1_bbbbb")}, tmp_path)
    save_json_result({**result(0.99, "model_failed_ccccc", status="fail")}, tmp_path)
    path, best = load_best_result(tmp_path)
    assert best["model_name"] == "model_0.1_bbbbb"


def test_unreadable_result_files_are_skipped_with_a_warning(tmp_path, capsys):
    save_json_result(result(0.3, "model_0.3_aaaaa"), tmp_path)
    (tmp_path / "model_broken.txt.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"foo": 1}))
    _, best = load_best_result(tmp_path)
    assert best["model_name"] == "model_0.3_aaaaa"
    err = capsys.readouterr().err
    assert "model_broken.txt.json" in err and "other.json" in err


def test_a_result_write_killed_before_its_rename_leaves_nothing_that_reads_as_a_result(tmp_path, monkeypatch, capsys):
    import utils

    save_json_result(result(0.3, "model_0.3_aaaaa"), tmp_path)
    with monkeypatch.context() as kill:  # killed after writing, before the rename: nothing cleans up
        kill.setattr(utils.os, "replace", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        kill.setattr(utils.os, "unlink", lambda path: None)
        with pytest.raises(KeyboardInterrupt):
            save_json_result(result(0.9, "model_0.9_bbbbb"), tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # the whole new result, under its temporary name
    assert load_best_result(tmp_path)[1]["model_name"] == "model_0.3_aaaaa" and not capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_results_and_pickle_are_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        path = save_json_result(result(0.3, "model_0.3_aaaaa"), tmp_path)
        save_trials(Trials(), tmp_path / "results.pkl")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "results.pkl").stat().st_mode) == mode


def test_a_filesystem_that_cannot_sync_a_folder_still_saves_results_and_trials(tmp_path, monkeypatch):
    import errno

    real_fsync = os.fsync

    def no_folder_sync(fd):  # as AFS and some network and FUSE mounts answer
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    save_trials(Trials(), tmp_path / "results.pkl")
    path = save_json_result({"loss": -0.5, "status": "ok", "model_name": "model_0.5_abcde"}, tmp_path)
    assert load_json_result(path)["loss"] == -0.5 and len(load_trials(tmp_path / "results.pkl").trials) == 0


def test_no_result_gives_none(tmp_path):
    assert load_best_result(tmp_path) is None


def test_best_of_the_2017_results_is_its_best_network(reference_dir):
    path, best = load_best_result(reference_dir)
    assert path.name == "model_0.676100010872_6066e.txt.json"


def test_the_2017_trials_pickle_loads(reference_dir):
    trials = load_trials(reference_dir / "results.pkl")
    assert len(trials.trials) == 42 and min(trials.losses()) == pytest.approx(-0.6761, abs=1e-4)


def test_a_folder_given_as_the_trials_pickle_is_not_called_corrupt(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(TrialsFileError, match=r"^.*results is a folder, not a trials pickle: give the pickle's path"):
        load_trials(tmp_path / "results")


def test_trials_round_trip(tmp_path):
    save_trials(Trials(), tmp_path / "t.pkl")
    assert isinstance(load_trials(tmp_path / "t.pkl"), Trials)


@pytest.mark.parametrize("content, message", [
    (b"", "corrupt or truncated"),
    (b"garbage that is not a pickle", "corrupt or truncated"),
    (pickle.dumps({"not": "trials"}), "not hyperopt Trials"),
])
def test_broken_trials_pickles_raise_one_line_and_stay_untouched(tmp_path, content, message):
    path = tmp_path / "results.pkl"
    path.write_bytes(content)
    with pytest.raises(TrialsFileError, match=message):
        load_trials(path)
    assert path.read_bytes() == content


def test_truncated_trials_pickle_is_reported(tmp_path):
    path = tmp_path / "results.pkl"
    save_trials(Trials(), path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TrialsFileError):
        load_trials(path)


def test_a_run_lock_removes_the_folders_it_made_for_a_run_that_left_them_empty(tmp_path):
    lock = RunLock(tmp_path / "runs" / "a", tmp_path / "pickles" / "deep", tmp_path / "runs")
    assert lock.acquire()
    (tmp_path / "pickles" / "deep").mkdir(parents=True)  # as the search's write check makes it
    lock.release()
    assert list(tmp_path.iterdir()) == []

    lock = RunLock(tmp_path / "runs" / "a", tmp_path / "pickles")
    assert lock.acquire()
    (tmp_path / "pickles").mkdir()
    (tmp_path / "pickles" / "a.pkl").write_text("x")
    lock.release()
    assert [p.name for p in tmp_path.iterdir()] == ["pickles"]


def test_run_lock_is_exclusive_and_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_failures_of_one_cause_share_it_whatever_their_numbers_and_others_do_not():
    from utils import failure_cause

    same = [("ResourceExhaustedError: OOM when allocating tensor with shape[320,256,16,16] and type float",
             "ResourceExhaustedError: OOM when allocating tensor with shape[640,128,8,8] and type float"),
            ("XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 7406166528 bytes.",
             "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 285212672 bytes."),
            ("FloatingPointError: loss is NaN or infinite at epoch 1", "FloatingPointError: loss is NaN or infinite at epoch 12"),
            ("TypeError: <Foo object at 0x7f3a9c2e1b50> is no tensor", "TypeError: <Foo object at 0x7fe01285de10> is no tensor")]
    for one, other in same:
        assert failure_cause(one) == failure_cause(other)
    assert failure_cause("RuntimeError: disk") != failure_cause("RuntimeError: memory")
    assert failure_cause("ValueError: 3 blocks") != failure_cause("KeyError: 3 blocks")
