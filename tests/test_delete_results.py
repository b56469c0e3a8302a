"""delete_results.sh asks first, then removes generated output and recreates the folders."""

import shutil
import subprocess

from conftest import REPO


def make_project(tmp_path):
    shutil.copy(REPO / "delete_results.sh", tmp_path)
    for folder in ("results", "TensorBoard/run", "weights", "layers"):
        (tmp_path / folder).mkdir(parents=True)
    for f in ("results/model_0.5_abcde.txt.json", "results.pkl", "weights/m.keras", "layers/a.png",
              "model_demo.png", "model_best.png", "TensorBoard/run/events"):
        (tmp_path / f).write_text("x")


def test_asks_and_keeps_everything_on_no(tmp_path):
    make_project(tmp_path)
    out = subprocess.run(["bash", "delete_results.sh"], cwd=tmp_path, input="n\n", capture_output=True, text=True)
    assert "Nothing deleted" in out.stdout
    assert (tmp_path / "results.pkl").exists() and (tmp_path / "results/model_0.5_abcde.txt.json").exists()


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


def test_dash_y_deletes_and_recreates_empty_folders(tmp_path):
    make_project(tmp_path)
    subprocess.run(["bash", "delete_results.sh", "-y"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "results.pkl").exists() and not (tmp_path / "model_best.png").exists()
    for folder in ("results", "TensorBoard", "weights", "layers"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [".gitkeep"]
