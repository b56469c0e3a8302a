"""delete_results.sh asks first, then removes generated output and recreates the folders."""

import os
import shutil
import subprocess

from conftest import REPO


def make_project(tmp_path):
    shutil.copy(REPO / "delete_results.sh", tmp_path)
    for folder in ("results", "TensorBoard/run", "weights", "layers"):
        (tmp_path / folder).mkdir(parents=True)
    for f in ("results/model_0.5_abcde.txt.json", "results.pkl", "weights/m.keras", "layers/a.png",
              "results/model_demo.png", "results/model_best.png",
              "TensorBoard/run/events"):
        (tmp_path / f).write_text("x")


def test_asks_and_keeps_everything_on_no(tmp_path):
    make_project(tmp_path)
    out = subprocess.run(["bash", "delete_results.sh"], cwd=tmp_path, input="n\n", capture_output=True, text=True)
    assert "Nothing deleted" in out.stdout
    assert (tmp_path / "results.pkl").exists() and (tmp_path / "results/model_0.5_abcde.txt.json").exists()


def test_without_an_answer_on_stdin_it_keeps_everything_and_says_how_to_delete_without_asking(tmp_path):
    make_project(tmp_path)
    out = subprocess.run(["bash", "delete_results.sh"], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.endswith("Nothing deleted: no answer on stdin (-y deletes without asking).\n")
    assert (tmp_path / "results.pkl").exists()


def test_a_running_search_is_not_deleted_from_under_it(tmp_path):
    from utils import RunLock

    make_project(tmp_path)
    lock = RunLock(tmp_path / "results")
    assert lock.acquire()
    try:
        out = subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, capture_output=True, text=True)
    finally:
        lock.release()
    assert out.returncode == 1 and "a search is running on results/" in out.stderr
    assert (tmp_path / "results.pkl").exists()
    subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "results.pkl").exists()  # once the search has stopped


def test_a_running_retrain_is_not_deleted_from_under_it_and_an_interrupted_one_is(tmp_path):
    from utils import RunLock

    make_project(tmp_path)
    backup = tmp_path / "weights" / "m.backup"  # where a retrain keeps its lock and what resuming needs
    backup.mkdir()
    (backup / "settings.json").write_text("{}")
    lock = RunLock(backup)
    assert lock.acquire()
    try:
        out = subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, capture_output=True, text=True)
    finally:
        lock.release()
    assert out.returncode == 1 and out.stderr.startswith("error: a retrain of m is running (pid ")
    assert (tmp_path / "weights/m.keras").exists() and (tmp_path / "results.pkl").exists()
    assert (backup / ".search.lock").exists()  # as a retrain that was interrupted leaves it, free
    subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [".gitkeep"]


def test_where_files_cannot_be_locked_it_warns_that_it_cannot_tell_a_running_search_and_deletes(tmp_path):
    make_project(tmp_path)
    (tmp_path / "results" / ".search.lock").write_text("pid 1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    flock = bin_dir / "flock"  # util-linux's flock on Lustre mounted noflock: no lock, and not a conflict either
    flock.write_text("#!/bin/sh\necho \"flock: $4: Function not implemented\" >&2\nexit 71\n")
    flock.chmod(0o755)
    out = subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    assert out.stderr == "warning: cannot tell whether a search is running on results/: its filesystem has no file locks\n"
    assert not (tmp_path / "results.pkl").exists()


def test_dash_y_deletes_and_recreates_empty_folders(tmp_path):
    make_project(tmp_path)
    subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "results.pkl").exists()
    for folder in ("results", "TensorBoard", "weights", "layers"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [".gitkeep"]


def test_a_named_results_folder_loses_only_what_its_search_wrote(tmp_path):
    make_project(tmp_path)
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    for f in ("a/model_0.7_12345.txt.json", "a/model_failed_54321.txt.json", "a/model_best.png", "a.pkl", "a/notes.md"):
        (runs / f).write_text("x")
    out = subprocess.run(["bash", "delete_results.sh", "-y", "runs/a/"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (runs / "a").iterdir()) == ["notes.md"]
    assert not (runs / "a.pkl").exists()
    assert (tmp_path / "results.pkl").exists() and (tmp_path / "results/model_0.5_abcde.txt.json").exists()


def test_a_named_results_folder_loses_its_default_analysis_and_nothing_else_there(tmp_path, monkeypatch):
    import analyze_results
    from test_analyze_results import make_results

    make_project(tmp_path)
    make_results(tmp_path / "runs" / "a", n=3)
    monkeypatch.chdir(tmp_path)  # where the analysis writes analysis/a/ by default, and the deletion looks for it
    assert analyze_results.main(["--results-dir", "runs/a"]) == 0
    assert analyze_results.main(["--results-dir", "runs/a", "--out", "analysis/b"]) == 0  # another's, by its name
    out = subprocess.run(["bash", "delete_results.sh", "runs/a"], cwd=tmp_path, input="y\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "This deletes 4 result file(s) in runs/a/, and its analysis in analysis/a/" in out.stdout
    assert "Deleted the search in runs/a/ (4 result file(s)) and its analysis in analysis/a/." in out.stdout
    assert not (tmp_path / "analysis" / "a").exists() and not (tmp_path / "runs" / "a").exists()
    assert (tmp_path / "analysis" / "b" / "trials.csv").exists()

    (tmp_path / "analysis" / "c").mkdir()
    for f in ("trials.csv", "convergence.png", "notes.md"):
        (tmp_path / "analysis" / "c" / f).write_text("x")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model_0.7_12345.txt.json").write_text("x")
    out = subprocess.run(["bash", "delete_results.sh", "-y", "c/"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "analysis" / "c").iterdir()) == ["notes.md"]  # not the analysis's


def test_a_named_results_folder_left_empty_is_removed(tmp_path):
    make_project(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b/model_0.7_12345.txt.json").write_text("x")
    (tmp_path / "b/.running_trial").write_text("{}")  # the trial its search was training when its process died
    (tmp_path / "b/.trial_backup.npz").write_text("x")  # and its backup
    (tmp_path / "b/..trial_backup.npz.0123abcd.tmp.npz").write_text("x")  # and a backup that a kill cut short
    (tmp_path / "b.pkl").write_text("x")
    out = subprocess.run(["bash", "delete_results.sh", "b"], cwd=tmp_path, input="y\n", capture_output=True, text=True)
    assert "This deletes 1 result file(s) in b/ and b.pkl" in out.stdout
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.pkl").exists()


def test_a_folder_without_search_results_is_refused(tmp_path):
    make_project(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/cat.png").write_text("x")
    out = subprocess.run(["bash", "delete_results.sh", "-y", "photos"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "photos/ holds no search results" in out.stderr
    assert (tmp_path / "photos/cat.png").exists()
    # "/" names a folder too: not the default of deleting everything beside the script.
    out = subprocess.run(["bash", "delete_results.sh", "-y", "/"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "holds no search results" in out.stderr
    assert (tmp_path / "results.pkl").exists() and (tmp_path / "results/model_0.5_abcde.txt.json").exists()


def test_a_bad_option_or_a_second_folder_is_one_line_and_deletes_nothing(tmp_path):
    make_project(tmp_path)
    for args, message in [(["-y", "--yes"], "error: unknown option --yes (--help says what it takes)"),
                          (["-y", "results", "weights"], "error: give one results folder at most")]:
        out = subprocess.run(["bash", "delete_results.sh", *args], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr == message + "\n"
    assert (tmp_path / "results.pkl").exists() and (tmp_path / "weights/m.keras").exists()


def test_a_running_search_in_a_named_folder_is_not_deleted(tmp_path):
    from utils import RunLock

    (tmp_path / "c").mkdir()
    (tmp_path / "c/model_0.7_12345.txt.json").write_text("x")
    shutil.copy(REPO / "delete_results.sh", tmp_path)
    lock = RunLock(tmp_path / "c")
    assert lock.acquire()
    try:
        out = subprocess.run(["bash", "delete_results.sh", "-y", "c"], cwd=tmp_path, capture_output=True, text=True)
    finally:
        lock.release()
    assert out.returncode == 1 and "a search is running on c/" in out.stderr
    assert (tmp_path / "c/model_0.7_12345.txt.json").exists()


def test_run_from_another_folder_it_names_the_scripts_folder_whose_results_it_deletes(tmp_path):
    make_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "results").mkdir(parents=True)
    (elsewhere / "results.pkl").write_text("x")
    out = subprocess.run(["bash", str(tmp_path / "delete_results.sh")], cwd=elsewhere, input="y\n", capture_output=True,
                         text=True)
    assert out.stdout.startswith(f"This deletes in {tmp_path}/: results results.pkl TensorBoard weights layers analysis\n")
    assert out.stdout.endswith(f"recreated in {tmp_path}/.\n")
    assert not (tmp_path / "results.pkl").exists() and (elsewhere / "results.pkl").exists()
