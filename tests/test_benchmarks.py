"""The training benchmark measures what it says: the requested precision for every network, 2017 as 2017."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_training.py"
QUICK = ["--spaces", "best", "--batch-size", "4", "--steps", "1", "--windows", "1"]


def run_bench(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), *QUICK, *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_network_of_a_run_trains_in_the_requested_precision(tmp_path):
    # Keras's clear_session() between networks resets the dtype policy to float32.
    report = run_bench(tmp_path, "--variants", "as-is,filters-x8", "--precision", "mixed_bfloat16", "--skip-memory")
    assert [row["variant"] for row in report["rows"]] == ["as-is", "filters-x8"]
    assert [row["dtype_policy"] for row in report["rows"]] == ["mixed_bfloat16", "mixed_bfloat16"]
    assert report["rows"][0]["params"] == 7_059_352
    assert report["rows"][1]["params"] > report["rows"][0]["params"]  # 64/128/256 filters instead of 63/126/252
    assert all(row["images_per_s"] > 0 for row in report["rows"])


@pytest.mark.slow
def test_the_2017_recipe_trains_in_float32_one_step_per_call(tmp_path):
    report = run_bench(tmp_path, "--recipe", "2017", "--skip-memory")
    assert report["precision"] == "float32" and report["steps_per_execution"] == 1
    assert report["rows"][0]["dtype_policy"] == "float32"


@pytest.mark.slow
def test_data_memory_counts_the_dataset_itself(monkeypatch):
    import argparse

    sys.path.insert(0, str(BENCH.parent))
    import bench_training

    # Large enough that compiling and feeding could not account for it: only the array itself can.
    monkeypatch.setattr(bench_training, "CIFAR_IMAGES", 210_000)
    memory = bench_training.data_memory(argparse.Namespace(precision="float32", steps_per_execution=1))
    assert memory["dataset_images"] == 210_000 and memory["dataset_mb"] == pytest.approx(645.1, abs=0.1)
    assert memory["process_mb_above_baseline"] >= memory["dataset_mb"]


def test_the_2017_recipe_refuses_bfloat16():
    done = subprocess.run([sys.executable, str(BENCH), "--recipe", "2017", "--precision", "mixed_bfloat16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "float32" in done.stderr.splitlines()[-1]
