"""analyze_results.py: leaderboard, trials.csv, importance and plots from result files."""

import csv
import json
import os
import re
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest
from hyperopt import Trials, fmin, hp, tpe

import analysis_notes
import analysis_plots
import analyze_results
import hyperspace
import significance
from conftest import REPO
from utils import load_json_result, save_json_result, save_trials

PLOTS = ["hyperparameters_vs_accuracy.png", "scatter_matrix.png", "convergence.png", "top_trials_per_epoch.png",
         "fine_vs_coarse.png", "cost_vs_accuracy.png", "importance.png"]


@pytest.fixture(autouse=True)
def close_the_figures_a_test_drew():
    yield
    analysis_plots.plt.close("all")


def make_results(folder, n=8, dataset="synthetic", recorded=lambda tid: {}):
    rng = np.random.default_rng(0)
    for tid in range(n):
        acc = float(rng.uniform(0.1, 0.6))
        space = {**hyperspace.SEED_BEST_SPACE, "lr_rate_mult": float(rng.uniform(0.6, 1.6)),
                 "residual": None if tid % 2 else 2.0, "pooling_type": ["max", "avg"][tid % 2], "width_multiple": 8}
        curve = list(np.linspace(0.05, acc, 6))
        save_json_result({
            "loss": -acc, "status": "ok", "fine_best_accuracy": acc, "coarse_best_accuracy": acc + 0.1,
            "test_fine_accuracy": acc - 0.01, "epochs_trained": 6, "pruned": tid == 3, "tid": tid,
            **({"resumed_after_epoch": 4} if tid == 2 else {}),  # a search stopped in its epoch 5 went on with it
            "model_name": f"model_{acc}_{tid:05d}", "space": space, "selected_on": "validation",
            "dataset": dataset, "train_images": 2700, "val_images": 300, "test_images": 600, "search_space": "full",
            "max_epochs": 6 + tid % 2, "patience": 4, "n_params": 1000 + tid, "activations_per_image": 9000 + tid, "train_seconds": 60.5 + tid,
            "started": f"2026-12-07T03:{tid:02d}:00+05:30",
            "keras_backend": "jax", "keras_version": "3.15.1", "backend_version": "0.10.2", "precision": "mixed_bfloat16",
            "device": "NVIDIA H100 80GB HBM3", "code_version": "1a2b3c4d5e6f",
            "history": {"val_fine_outputs_accuracy": curve, "val_coarse_outputs_accuracy": curve},
        } | recorded(tid), folder)
    save_json_result({"status": "fail", "error": "FloatingPointError: NaN", "tid": n, "model_name": "model_failed_abcde",
                      "space": hyperspace.DEMO_SPACE, "dataset": dataset, "train_images": 2700, "search_space": "full",
                      "selected_on": "validation"}, folder)


def check_outputs(out, n_rows, plots=PLOTS):
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_rows
    for column in ("fine_accuracy", "coarse_accuracy", "status", "residual", "one_more_fc", "pooling_type"):
        assert column in rows[0]
    for name in plots:
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01, name
    return rows


def test_generated_results_give_csv_plots_and_a_leaderboard_in_loss_order(tmp_path, capsys):
    make_results(tmp_path / "results")
    (tmp_path / "results" / "broken.txt.json").write_text("{oops")
    (tmp_path / "results" / "foreign.json").write_text(json.dumps([1, 2]))
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    rows = check_outputs(tmp_path / "out", 9)
    assert [r["status"] for r in rows].count("fail") == 1
    assert {(r["max_epochs"], r["patience"], r["width_multiple"]) for r in rows if r["status"] == "ok"} == {("6", "4", "8"), ("7", "4", "8")}
    assert {r["residual"] for r in rows if r["status"] == "ok"} == {"", "2.0"}  # nested choice: a value or empty
    assert {r["best_epoch"] for r in rows} == {"6", ""}  # from the curves, which peak at their end; a failed trial has none
    assert {r["tid"]: r["resumed_after_epoch"] for r in rows if r["resumed_after_epoch"]} == {"2": "4"}
    # What each trial cost, when, and on what machine and software.
    first = next(r for r in rows if r["tid"] == "0")
    assert ((first["n_params"], first["activations_per_image"], first["train_seconds"], first["started"], first["keras_backend"], first["keras_version"],
             first["backend_version"], first["precision"], first["device"], first["code_version"])
            == ("1000", "9000", "60.5", "2026-12-07T03:00:00+05:30", "jax", "3.15.1", "0.10.2", "mixed_bfloat16",
                "NVIDIA H100 80GB HBM3", "1a2b3c4d5e6f"))
    captured = capsys.readouterr()
    assert "broken.txt.json" in captured.err and "foreign.json" in captured.err
    assert "more than one search" not in captured.err
    assert "The trials ran on" not in captured.out  # one version of the code, device and precision trained them all
    # Beside each leader, the hyperparameters that vary most among the leaders: none that every trial shares.
    header = next(line for line in captured.out.splitlines() if line.startswith("rank trial")).split()
    assert header[7] == "params" and sorted(header[8:]) == ["lr_rate_mult", "pooling_type", "residual"]
    board = [line.split() for line in captured.out.splitlines() if line[:4].strip().isdigit()]
    accuracies = [float(cols[2]) for cols in board]
    assert accuracies == sorted(accuracies, reverse=True) and len(accuracies) == 8
    # Each network's size beside it (make_results counts 1,000 parameters and its trial id), as the analysis reads them.
    leaders = [line for line in captured.out.splitlines() if line[:4].strip().isdigit()]
    assert all(re.search(r" (no|yes) +1 k  ", line) for line in leaders)
    assert "What explains validation fine accuracy over 8 trials, 1 of them pruned at their accuracy when stopped" in captured.out
    best = max(rows, key=lambda r: float(r["fine_accuracy"] or 0))
    acc, test = float(best["fine_accuracy"]), float(best["test_fine_accuracy"])
    assert (f"Trial {best['trial']}'s fine accuracy, one standard error: validation {acc:.4f} of 300 images "
            f"±{(acc * (1 - acc) / 300) ** 0.5:.4f}, test {test:.4f} of 600 images ±{(test * (1 - test) / 600) ** 0.5:.4f}. "
            "The validation figure, the highest of many epochs and trials on those images, reads high; the test figure, "
            "measured once, does not.") in captured.out
    assert {(r["val_images"], r["test_images"]) for r in rows if r["status"] == "ok"} == {("300", "600")}
    # Trials 0, 2, 4 and 6 trained all of their 6 epochs and peaked in the last 4 (--patience): still improving.
    assert ("Their budget may have been short: 4 of the 8 best trials peaked in the last 4 epochs of 6; a larger --epochs "
            "may raise them.\n") in captured.out
    assert {r["selected_on"] for r in rows} == {"validation", ""}  # a failed trial was selected on nothing
    assert (tmp_path / "out" / "importance.csv").read_text().startswith("hyperparameter,method,score,p_value,q_value")


def test_the_analysis_says_which_versions_of_the_code_and_keras_devices_and_precisions_trained_the_trials_where_they_differ(
        tmp_path, capsys):
    def recorded(tid):  # a newer commit from trial 3 on, one trial that recorded none; a newer JAX from trial 4 on;
        return ({"code_version": "1a2b3c4d5e6f" if tid < 3 else None if tid == 5 else "7a8b9c0d1e2f-dirty"}  # another
                | ({"backend_version": "0.10.3"} if tid >= 4 else {})  # GPU from trial 6 on
                | ({"device": "NVIDIA A100-SXM4-80GB"} if tid >= 6 else {}))

    make_results(tmp_path / "results", recorded=recorded)
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["code_version"] for r in rows] == ["1a2b3c4d5e6f"] * 3 + ["7a8b9c0d1e2f-dirty", "7a8b9c0d1e2f-dirty", "",
                                                                         "7a8b9c0d1e2f-dirty", "7a8b9c0d1e2f-dirty", ""]
    best = max(rows, key=lambda r: float(r["fine_accuracy"] or 0))
    out = capsys.readouterr().out
    assert (f"The trials ran on 2 versions of the code (trials.csv's code_version): 1a2b3c4d5e6f from trial 0 (3 trials), "
            f"7a8b9c0d1e2f-dirty from trial 3 (4 trials), and 2 that record none; the best, trial {best['trial']}, on "
            f"{best['code_version'] or 'an unrecorded one'}.\n") in out
    # The failed trial, 8, recorded no device.
    assert (f"The trials ran on 2 devices (trials.csv's device): NVIDIA H100 80GB HBM3 from trial 0 (6 trials), "
            f"NVIDIA A100-SXM4-80GB from trial 6 (2 trials), and 1 that records none; the best, trial {best['trial']}, on "
            f"{best['device']}.\n") in out
    assert (f"The trials ran on 2 versions of Keras and its backend (trials.csv's keras_version, keras_backend, "
            f"backend_version): Keras 3.15.1 on jax 0.10.2 from trial 0 (4 trials), Keras 3.15.1 on jax 0.10.3 from trial 4 "
            f"(4 trials), and 1 that records none; the best, trial {best['trial']}, on Keras 3.15.1 on jax "
            f"{best['backend_version']}.\n") in out
    assert "precisions" not in out


def test_each_results_folder_gets_its_own_analysis_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_results(tmp_path / "runs" / "a", n=3)
    make_results(tmp_path / "runs" / "b", n=4)
    assert analyze_results.main(["--results-dir", "runs/a"]) == 0
    assert analyze_results.main(["--results-dir", "runs/b/"]) == 0
    check_outputs(tmp_path / "analysis" / "a", 4)  # 3 finished trials and a failed one
    check_outputs(tmp_path / "analysis" / "b", 5)
    assert "Wrote analysis/b/trials.csv" in capsys.readouterr().out
    assert analyze_results.parse_args([]).out == "analysis"  # results/'s, as before


def test_the_analysis_of_a_search_still_running_says_so(tmp_path, capsys):
    from utils import RunLock

    make_results(tmp_path / "results", n=3)
    search = RunLock(tmp_path / "results")
    assert search.acquire()
    try:
        assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    finally:
        search.release()
    assert capsys.readouterr().out.startswith(f"A search is running on {tmp_path}/results/ (pid {os.getpid()}): these are "
                                              "its finished trials so far.\n\nTop 3 of 4 trials")
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("Top 3 of 4 trials")  # the search has ended, its lock file stays


def importance_rows(accuracies, **varying) -> list[dict]:
    """Rows as load_trials_table makes them: these accuracies, the varying hyperparameters, the others constant."""
    rows = [{name: 1.0 for name in analyze_results.NUMERIC} | {name: "a" for name in analyze_results.CATEGORICAL}
            | {"fine_accuracy": float(acc), "coarse_accuracy": float(acc) + 0.1, "n_params": None} for acc in accuracies]
    for name, values in varying.items():
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def test_a_category_that_nine_of_ten_leaders_share_is_not_shown_as_varying_most_among_them(capsys):
    # 20 trials, the best 10 the leaders. activation: elu for 9 of them and relu for 9 of the others, so that the search
    # tried both equally and its leaders mostly agree. Four numbers spread among the leaders nearly as in the search.
    # Counting levels, activation scored 1.0 (both levels among the leaders), above all four.
    accuracy = np.linspace(0.60, 0.41, 20)
    activation = ["elu"] * 9 + ["relu"] * 2 + ["elu"] + ["relu"] * 8
    rng = np.random.default_rng(0)
    numbers = {name: rng.permutation(np.tile([1.0, 2.0], 10)) for name in
               ("lr_rate_mult", "batch_size", "conv_dropout_drop_proba", "fc_dropout_drop_proba")}
    rows = [row | {"status": "ok", "trial": i, "test_fine_accuracy": None, "epochs": 5, "pruned": False}
            for i, row in enumerate(importance_rows(accuracy, activation=activation, **numbers))]
    analyze_results.print_leaderboard(rows, 10)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("rank trial")).split()
    spreads = {name: np.std(values[:10]) / np.std(values) for name, values in numbers.items()}
    assert min(spreads.values()) > 0.6  # activation's: sqrt(1 - 0.9^2 - 0.1^2) / sqrt(1 - 0.5^2 - 0.5^2)
    assert sorted(header[7:]) == sorted(numbers)


def test_importance_p_values_tell_what_drives_accuracy_from_chance():
    rng = np.random.default_rng(0)
    lr = rng.uniform(0.6, 1.6, 30)
    accuracy = 0.2 * lr + rng.normal(0, 0.02, 30)
    optimizer = ["Adam" if a > np.median(accuracy) else "Nadam" for a in accuracy]
    scores = {i.hyperparameter: (i.score, i.p_value) for i in analyze_results.importance(importance_rows(
        accuracy, lr_rate_mult=lr, batch_size=rng.uniform(100, 450, 30), optimizer=optimizer,
        activation=rng.choice(["relu", "elu"], 30)))}
    assert scores["lr_rate_mult"][0] > 0.8 and scores["lr_rate_mult"][1] < 0.001  # rho 0.93: R² 0.86, adjusted
    assert scores["optimizer"][0] > 0.5 and scores["optimizer"][1] < 0.001
    assert scores["batch_size"][1] > 0.05 and scores["activation"][1] > 0.05  # drawn independently of accuracy
    assert scores["batch_size"][0] < 0.1 and scores["activation"][0] < 0.1


def test_importance_says_which_way_the_better_trials_lean_and_a_lean_chance_would_often_give_in_parentheses():
    rng = np.random.default_rng(0)
    lr, l2 = rng.uniform(0.6, 1.6, 30), rng.uniform(0.2, 5, 30)
    accuracy = 0.2 * lr - 0.04 * l2 + rng.normal(0, 0.02, 30)
    optimizer = ["Nadam" if a > np.median(accuracy) else "Adam" for a in accuracy]
    batch_size = rng.uniform(100, 450, 30)  # drawn independently of accuracy
    ranked = analyze_results.importance(importance_rows(accuracy, lr_rate_mult=lr, l2_weight_reg_mult=l2,
                                                        optimizer=optimizer, batch_size=batch_size))
    tendency = {i.hyperparameter: i.tendency for i in ranked}
    nadam = accuracy[np.array(optimizer) == "Nadam"]
    rho = np.corrcoef(np.argsort(np.argsort(batch_size)), np.argsort(np.argsort(accuracy)))[0, 1]
    assert tendency == {"lr_rate_mult": "higher did better", "l2_weight_reg_mult": "lower did better",
                        "optimizer": f"Nadam did best, median {np.median(nadam):.3f} of 15",
                        "batch_size": f"({'higher' if rho > 0 else 'lower'} did better)"}
    assert {i.hyperparameter for i in ranked if i.p_value >= 0.05} == {"batch_size"}


def test_the_level_of_a_category_that_did_best_is_the_one_whose_trials_ranked_higher_not_one_with_no_collapsed_network():
    # "a" trained three networks above every "b" one and a fourth that never learned, which drags its mean below b's.
    ranked = analyze_results.importance(importance_rows([0.60, 0.61, 0.62, 0.05, 0.50, 0.51, 0.52, 0.53],
                                                        first_conv=["a"] * 4 + [""] * 4))
    assert ranked[0].tendency == "(a did best, median 0.605 of 4)"
    ranked = analyze_results.importance(importance_rows([0.50, 0.51, 0.52, 0.53, 0.60, 0.61, 0.62, 0.05],
                                                        first_conv=[""] * 4 + ["a"] * 4))
    assert ranked[0].tendency == "(a did best, median 0.605 of 4)"
    ranked = analyze_results.importance(importance_rows([0.60, 0.61, 0.62, 0.05, 0.50, 0.51, 0.52, 0.53],
                                                        first_conv=[""] * 4 + ["a"] * 4))
    assert ranked[0].tendency == "(none did best, median 0.605 of 4)"  # a nested choice's None, as the plots name it


def test_the_hyperparameters_of_residual_units_count_only_for_the_networks_that_have_them(tmp_path, capsys):
    # 12 networks whose residual units' kernel drives their accuracy; 6 without units, and 6 whose units would start
    # past their last block (neural_net adds none): their kernels, drawn all the same, say nothing of their accuracy.
    rng = np.random.default_rng(0)
    for tid in range(24):
        kernel = [2.0, 3.0, 4.0][tid % 3] if tid < 12 else float(rng.integers(2, 5))
        residual, start, blocks = (2.0, 0.0, 3) if tid < 12 else (None, 1.0, 3) if tid < 18 else (3.0, 2.0, 2)
        acc = 0.3 + 0.05 * kernel + rng.normal(0, 0.01) if tid < 12 else float(rng.uniform(0.3, 0.55))
        space = {**hyperspace.SEED_BEST_SPACE, "res_conv_kernel_size": kernel, "residual": residual,
                 "conv_pool_res_start_idx": start, "nb_conv_pool_layers": blocks, "lr_rate_mult": float(rng.uniform(0.6, 1.6))}
        save_json_result({"loss": -acc, "status": "ok", "fine_best_accuracy": acc, "coarse_best_accuracy": acc, "tid": tid,
                          "model_name": f"model_{acc}_{tid:05d}", "space": space, "dataset": "synthetic",
                          "selected_on": "validation"}, tmp_path / "results")
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    # trials.csv holds the networks as built: none of the units' hyperparameters where a network has no units.
    assert {(r["residual"], r["conv_pool_res_start_idx"], r["res_conv_kernel_size"] != "") for r in rows} == {
        ("2.0", "0.0", True), ("", "", False), ("", "2.0", False)}
    with open(tmp_path / "out" / "importance.csv") as f:
        scored = {r["hyperparameter"]: r for r in csv.DictReader(f)}
    kernel = scored["res_conv_kernel_size"]
    assert kernel["tendency"] == "higher did better, over the 12 trials with residual units" and float(kernel["p_value"]) < 0.001
    assert scored["conv_pool_res_start_idx"]["tendency"].endswith(", over the 18 trials that chose residual units")
    assert "higher did better, over the 12 trials with residual units" in capsys.readouterr().out


@pytest.mark.parametrize("residual, start, blocks", [(None, 0.0, 2), (2.0, 1.0, 2), (3.0, 2.0, 2), (1.0, 2.0, 3)])
def test_the_analysis_reads_a_network_as_neural_net_builds_it(residual, start, blocks):
    import keras

    from conftest import SMALL_SPACE
    from neural_net import build_model

    space = {**SMALL_SPACE, "residual": residual, "conv_pool_res_start_idx": start, "nb_conv_pool_layers": blocks}
    units = sum(isinstance(layer, keras.layers.Add) for layer in build_model(space).layers)
    row = {name: "" if space.get(name) is None else space[name] for name in analyze_results.HYPERPARAMETERS}
    analyze_results.as_built(row)
    assert (row["residual"] != "") == (units > 0)
    assert (row["res_conv_kernel_size"] is not None) == (units > 0)
    assert (row["conv_pool_res_start_idx"] is not None) == (residual is not None)  # where units start, or do not


def test_a_hyperparameter_that_drifted_while_the_search_improved_is_not_called_significant():
    # As in a TPE search: 60 trials whose accuracy rises as the search goes on, and a batch size that drifts upwards
    # meanwhile but does nothing to accuracy (among neighbouring trials it does not go with accuracy). Shuffled across
    # the whole search, the two drifts correlated: Spearman's p 1e-6.
    rng = np.random.default_rng(0)
    progress = np.arange(60) / 60
    accuracy, batch_size = 0.3 + 0.3 * progress + rng.normal(0, 0.02, 60), 100 + 100 * progress + rng.normal(0, 30, 60)
    [ranked] = analyze_results.importance(importance_rows(accuracy, batch_size=batch_size))
    assert ranked.tendency == "(higher did better)" and ranked.p_value > 0.2


def test_the_random_draws_of_a_search_are_shuffled_among_themselves_and_tpe_trials_among_a_few_neighbours():
    kinds = {"r": "random", "t": "tpe", "e": "enqueue", "-": None}  # -: 2017's trials, which record none
    assert list(significance.exchangeable([{"suggested_by": kinds[k]} for k in "errrrrrrtttttttttttt"])) == [
        0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4]
    assert list(significance.exchangeable([{"suggested_by": None}] * 12)) == [0] * 5 + [1] * 5 + [2] * 2
    # A search of random draws alone (--algo random) is one block: its trials were drawn alike, whatever their order.
    rng = np.random.default_rng(0)
    progress = np.arange(60) / 60
    accuracy, batch_size = 0.3 + 0.3 * progress + rng.normal(0, 0.02, 60), 100 + 100 * progress + rng.normal(0, 30, 60)
    rows = [row | {"suggested_by": "random"} for row in importance_rows(accuracy, batch_size=batch_size)]
    assert analyze_results.importance(rows)[0].p_value < 0.001


def test_importance_says_no_trend_where_the_ranks_do_not_correlate():
    # Pearson's r of these ranks comes out as -2.5e-17, which would read as "lower did better".
    [ranked] = analyze_results.importance(importance_rows([0.0567, 0.0333, 0.0133], lr_rate_mult=[1.0, 2.0, 1.0]))
    assert (ranked.correlation, ranked.tendency) == (0.0, "(no trend)")


def test_importance_of_a_few_trials_is_never_significant():
    # Three trials in the same order as a hyperparameter: 2 of their 6 orderings score |rho| = 1, so p = 1/3,
    # where the usual t approximation says p = 0. A category holding the best trial alone scores as high when it
    # holds the worst instead: p = 2/3; its eta squared of 0.75 is what a two-level split of 3 trials gives half the
    # time, and its score, beyond chance, 1 - 0.25 * 2 / 1.
    ranked = analyze_results.importance(importance_rows([0.1, 0.2, 0.3], lr_rate_mult=[1, 2, 3], use_BN=[False, False, True]))
    assert [(i.hyperparameter, i.score, i.p_value) for i in ranked] == [
        ("lr_rate_mult", pytest.approx(1.0), pytest.approx(1 / 3)), ("use_BN", pytest.approx(0.5), pytest.approx(2 / 3))]


def test_a_category_and_a_number_that_split_the_trials_alike_score_alike():
    # use_BN and batch_size take two values on the same trials, one of them a network that never learned (0.01). Both
    # are scored on the accuracies' ranks: Spearman's rho of batch_size is the Pearson r of use_BN's indicator with the
    # ranks, which eta of the ranks is. eta of the accuracies themselves gave use_BN 0.53 against batch_size's 0.87:
    # the one network at 0.01 held most of the variance.
    accuracy = np.array([0.40, 0.56, 0.01, 0.53, 0.30, 0.63, 0.46, 0.33, 0.60, 0.43, 0.36, 0.50])  # in trial order
    bn = [a > 0.38 for a in accuracy]
    ranked = analyze_results.importance(importance_rows(accuracy, use_BN=bn, batch_size=[300.0 if b else 100.0 for b in bn]))
    scores = {i.hyperparameter: (i.method, i.correlation, i.score) for i in ranked}
    r = np.corrcoef(bn, np.argsort(np.argsort(accuracy)))[0, 1]  # the point-biserial correlation with the ranks
    adjusted = 1 - (1 - r ** 2) * 11 / 10  # R², less what a split of 12 trials explains by chance
    assert scores == {"use_BN": ("kruskal", pytest.approx(r), pytest.approx(adjusted)),
                      "batch_size": ("spearman", pytest.approx(r), pytest.approx(adjusted))}
    assert all(i.p_value < 0.01 for i in ranked)  # each from its own 9,999 shufflings: alike, not equal


def test_a_category_with_a_trial_per_level_explains_nothing():
    # Four trials, four pooling types: any accuracies split so fit exactly (eta 1), which scored it above a learning
    # rate that nearly orders them (rho 0.8).
    ranked = analyze_results.importance(importance_rows([0.2, 0.3, 0.4, 0.1], lr_rate_mult=[1, 3, 4, 2],
                                                        pooling_type=["max", "avg", "all_conv", "inception"]))
    assert [(i.hyperparameter, i.correlation) for i in ranked] == [("lr_rate_mult", pytest.approx(0.8)),
                                                                     ("pooling_type", pytest.approx(1.0))]
    assert ranked[1].score == 0 and ranked[1].p_value == 1


def test_a_category_scores_kruskal_wallis_eta_squared_h():
    # Tomczak & Tomczak (2014): eta squared H = (H - k + 1) / (n - k), from scipy's H (ties corrected) over 3 levels.
    from scipy.stats import kruskal

    rng = np.random.default_rng(1)
    accuracy = np.round(rng.uniform(0.3, 0.6, 15), 2)  # with ties
    optimizer = rng.choice(["Adam", "Nadam", "RMSprop"], 15)
    [ranked] = analyze_results.importance(importance_rows(accuracy, optimizer=optimizer))
    h = kruskal(*(accuracy[optimizer == level] for level in ("Adam", "Nadam", "RMSprop"))).statistic
    assert ranked.score == pytest.approx((h - 3 + 1) / (15 - 3))


def test_a_category_of_many_levels_scores_about_as_a_number_when_neither_matters(monkeypatch):
    # 300 searches of 12 trials whose accuracies are unrelated to a number and to a 4-level category. The category fits
    # 4 means to the number's line, so it correlates more by chance (eta about 0.48 against |rho| 0.24 on average);
    # scored beyond chance, each scores about 0 on average.
    monkeypatch.setattr(significance, "PERMUTATIONS", 9)  # p-values are not looked at
    rng = np.random.default_rng(0)
    scores = {"lr_rate_mult": [], "pooling_type": []}
    for _ in range(300):
        for i in analyze_results.importance(importance_rows(rng.uniform(0.3, 0.6, 12), lr_rate_mult=rng.uniform(0.6, 1.6, 12),
                                                            pooling_type=rng.choice(["max", "avg", "all_conv", "inception"], 12))):
            scores[i.hyperparameter].append(i.score)
    assert np.mean(scores["pooling_type"]) == pytest.approx(0, abs=0.04)
    assert np.mean(scores["lr_rate_mult"]) == pytest.approx(0, abs=0.04)


def test_importance_q_values_discount_chance_among_many_hyperparameters():
    # Accuracy follows the learning rate; the 18 other hyperparameters are drawn independently of it, so one of them
    # scoring p < 0.05 is what chance does among 18: its q, adjusted for testing all 19, is not a discovery.
    rng = np.random.default_rng(1)
    lr = rng.uniform(0.6, 1.6, 30)
    accuracy = 0.2 * lr + rng.normal(0, 0.02, 30)
    unrelated = {name: rng.uniform(0, 1, 30) for name in analyze_results.NUMERIC if name != "lr_rate_mult"}
    unrelated |= {name: rng.choice(["a", "b", "c"], 30) for name in analyze_results.CATEGORICAL}
    ranked = analyze_results.importance(importance_rows(accuracy, lr_rate_mult=lr, **unrelated))
    assert len(ranked) == 19
    scores = {i.hyperparameter: (i.p_value, i.q_value) for i in ranked}
    assert scores["lr_rate_mult"][1] < 0.01
    chance = min((p, q) for name, (p, q) in scores.items() if name != "lr_rate_mult")
    assert chance[0] < 0.05 < chance[1]
    assert all(q >= p for p, q in scores.values())


def trials_naming(model_names) -> Trials:
    """A hyperopt Trials whose trials are these results, in this order."""
    names = iter(model_names)
    trials = Trials()
    fmin(lambda x: {"loss": x, "status": "ok", "model_name": next(names)}, hp.uniform("x", 0, 1), tpe.suggest,
         max_evals=len(model_names), trials=trials, show_progressbar=False)
    return trials


def test_trial_order_comes_from_the_pickle_of_these_results_not_another_searchs(tmp_path, monkeypatch):
    make_results(tmp_path / "results")
    files = sorted((tmp_path / "results").glob("model_0*.json"))
    for path in files:  # as the 2017 files: no tid, so the order is the pickle's
        result = json.loads(path.read_text())
        del result["tid"]
        path.write_text(json.dumps(result))
    names = [json.loads(path.read_text())["model_name"] for path in files]
    order = names[::-1]  # not the files' (accuracy) order
    save_trials(trials_naming(order), tmp_path / "results" / "results.pkl")
    monkeypatch.chdir(tmp_path)
    save_trials(trials_naming(["model_0.5_other", "model_0.4_search"]), tmp_path / "results.pkl")  # ./results.pkl
    rows = analyze_results.load_trials_table(tmp_path / "results", ["results.pkl", tmp_path / "results" / "results.pkl"])
    ok = [row for row in rows if row["status"] == "ok"]
    assert [row["file"].removesuffix(".txt.json") for row in ok] == order
    assert [row["trial"] for row in ok] == list(range(len(order)))


def test_a_trials_file_that_is_missing_exits_2_and_one_that_is_corrupt_is_said(tmp_path, capsys):
    make_results(tmp_path / "results")
    args = ["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]
    assert analyze_results.main([*args, "--trials-file", str(tmp_path / "typo.pkl")]) == 2
    assert capsys.readouterr().err == f"error: no trials pickle {tmp_path / 'typo.pkl'}\n"
    (tmp_path / "torn.pkl").write_bytes(b"\x80\x04\x95")
    assert analyze_results.main([*args, "--trials-file", str(tmp_path / "torn.pkl")]) == 0
    warned = capsys.readouterr().err
    assert f"warning: {tmp_path / 'torn.pkl'} is corrupt or truncated" in warned
    assert "start a new search" not in warned  # the search's advice: an analysis has its order from the file times


def test_the_2017_results(tmp_path, reference_dir, capsys):
    assert analyze_results.main(["--results-dir", str(reference_dir), "--out", str(tmp_path)]) == 0
    # Its results counted no parameters and timed nothing: no cost plot.
    rows = check_outputs(tmp_path, 42, [name for name in PLOTS if name != "cost_vs_accuracy.png"])
    assert not (tmp_path / "cost_vs_accuracy.png").exists()
    assert {r["selected_on"] for r in rows if r["status"] == "ok"} == {"test"}  # 2017 selected epochs and trials on it
    # 100 epochs each, no early stopping, the exact widths
    assert {(r["max_epochs"], r["patience"], r["width_multiple"]) for r in rows} == {("100", "", "1")}
    out, err = capsys.readouterr()
    assert "more than one search" not in err
    assert "What explains test fine accuracy over" in out
    first = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert first.split()[1:3] == ["28", "0.6761"]  # trial 28 of the 2017 pickle
    assert "params" not in next(line for line in out.splitlines() if line.startswith("rank trial"))  # 2017 counted none
    assert next(r["best_epoch"] for r in rows if r["tid"] == "28") == "95"  # of its 100: its curve's peak
    assert "Their budget may have been short: 7 of the 10 best trials peaked in the last 10 epochs of 100;" in out
    # Its 67.61% is the best of 42 trials' 100 epochs on the 10,000 test images that measure it.
    assert ("Trial 28's fine accuracy, one standard error: test 0.6761 of 10,000 images ±0.0047. The test figure, "
            "the highest of many epochs and trials on those images, reads high.\n"
            "No other trial is within one standard error of it (0.6714 and up).\n") in out  # trial 6's 0.6683 is not


def test_a_folder_mixing_two_searches_is_warned_about_with_what_differs(tmp_path, capsys):
    make_results(tmp_path / "results")
    make_results(tmp_path / "other", n=3, dataset="digits.npz")
    for path in (tmp_path / "other").glob("model_0*.txt.json"):
        path.rename(tmp_path / "results" / path.name.replace("_0000", "_9999"))
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "holds trials of more than one search, whose accuracies do not compare: dataset digits.npz (3), synthetic (8)." in err
    with open(tmp_path / "out" / "trials.csv") as f:
        assert {r["dataset"] for r in csv.DictReader(f)} == {"digits.npz", "synthetic"}


def test_a_folder_mixing_trials_of_two_files_of_one_name_is_warned_about_by_their_digests(tmp_path, capsys):
    # digits.npz remade with other images or labels between two searches given one folder (an older version did not
    # refuse the resume), or results copied together from two machines.
    make_results(tmp_path / "results", n=4, dataset="digits.npz", recorded=lambda tid: {"dataset_digest": "ab" * 8 if tid < 3
                                                                                        else "cd" * 8})
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert f"whose accuracies do not compare: dataset_digest {'ab' * 8} (3), {'cd' * 8} (1)." in capsys.readouterr().err
    with open(tmp_path / "out" / "trials.csv") as f:
        assert [r["dataset_digest"] for r in csv.DictReader(f)] == ["ab" * 8] * 3 + ["cd" * 8, ""]  # the failed trial: none


def test_2017_files_beside_a_new_search_are_warned_about_as_the_cifar100_test_set_search_they_were(tmp_path, capsys,
                                                                                                    reference_dir):
    make_results(tmp_path / "results")
    for path in sorted(reference_dir.glob("model_*.txt.json"))[:2]:
        (tmp_path / "results" / path.name).write_bytes(path.read_bytes())
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "dataset cifar100 (2), synthetic (8); selected_on test (2), validation (8); train_images 2700 (8), 50000 (2)" in err


def test_a_search_of_failures_only_is_said_so_without_an_empty_leaderboard(tmp_path, capsys):
    for tid in range(2):
        save_json_result({"status": "fail", "error": "ResourceExhaustedError: OOM", "tid": tid, "model_name": f"model_failed_{tid}",
                          "space": hyperspace.DEMO_SPACE, "dataset": "synthetic"}, tmp_path / "results")
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No trial finished: 2 trials, 2 failed.\n") and "rank" not in out
    assert "no plots without a finished trial" in out
    with open(tmp_path / "out" / "trials.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["fail", "fail"]


def test_the_analysis_says_why_trials_failed_one_line_a_cause_whatever_its_numbers(tmp_path, capsys):
    make_results(tmp_path / "results", n=3)  # trial 3 failed on a NaN
    oom = "ResourceExhaustedError: OOM when allocating tensor with shape[{},256,16,16] and type float on GPU:0"
    for tid, error in [(4, oom.format(320)), (5, None), (6, oom.format(640))]:
        save_json_result({"status": "fail", "error": error, "tid": tid, "model_name": f"model_failed_{tid}",
                          "space": hyperspace.DEMO_SPACE, "dataset": "synthetic", "train_images": 2700,
                          "search_space": "full", "selected_on": "validation"}, tmp_path / "results")
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert ("Why 4 trials failed (their result files hold each traceback):\n"
            f"     2  {oom.format(640)}  (trials 4, 6)\n"
            "     1  FloatingPointError: NaN  (trial 3)\n"
            "     1  no error recorded  (trial 5)\n") in out
    with open(tmp_path / "out" / "trials.csv") as f:
        assert [r["error"] for r in csv.DictReader(f)] == ["", "", "", "FloatingPointError: NaN", oom.format(320), "",
                                                           oom.format(640)]


def test_the_failures_of_many_causes_are_summed_up_past_the_ten_commonest():
    rows = [{"trial": n, "status": "fail", "error": f"ValueError: cause {'abcdefghijklmn'[n]}"} for n in range(14)]
    rows += [{"trial": 14, "status": "fail", "error": "ValueError: cause n"}, {"trial": 15, "status": "ok", "error": None}]
    lines = analysis_notes.failures_note(rows).splitlines()
    assert lines[0] == "Why 15 trials failed (their result files hold each traceback):"
    assert lines[1] == "     2  ValueError: cause n  (trials 13, 14)" and len(lines) == 12
    assert lines[-1] == "     4  more, of 4 other causes (trials.csv's error column)"


def test_results_without_a_coarse_head_get_no_coarse_plot_nor_the_coarse_weights_importance(tmp_path, capsys):
    # A .npz without coarse labels: the model has the fine head only, coarse_labels_weight shapes nothing.
    make_results(tmp_path / "results")
    for path in (tmp_path / "results").glob("model_0*.txt.json"):
        result = json.loads(path.read_text())
        result["coarse_best_accuracy"] = None
        del result["history"]["val_coarse_outputs_accuracy"]
        result["space"]["coarse_labels_weight"] = float(len(path.name) % 3)  # varies, as TPE samples it
        path.write_text(json.dumps(result))
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "fine_vs_coarse.png").exists()
    per_epoch = matplotlib.image.imread(tmp_path / "out" / "top_trials_per_epoch.png")
    assert per_epoch.shape[1] < per_epoch.shape[0]  # one column (whole run, zoom), not a fine and an empty coarse one
    importance = (tmp_path / "out" / "importance.csv").read_text()
    assert "lr_rate_mult" in importance and "coarse_labels_weight" not in importance
    out = capsys.readouterr().out
    assert "coarse_labels_weight" not in out and "6 plots" in out and "fine_vs_coarse" not in out


@pytest.mark.parametrize("edit, wrong", [({"space": 5}, "space"), ({"loss": "-0.5"}, "loss"),
                                         ({"history": {"val_fine_outputs_accuracy": 0.5}}, "history"),
                                         ({"fine_best_accuracy": True, "tid": "7"}, "fine_best_accuracy, tid"),
                                         ({"space": hyperspace.SEED_BEST_SPACE | {"batch_size": "big", "residual": [2]}},
                                          "batch_size, residual")])
def test_a_result_file_edited_into_other_types_is_skipped_with_a_warning_and_the_rest_analysed(tmp_path, capsys, edit,
                                                                                            wrong):
    make_results(tmp_path / "results", n=4)
    edited = sorted((tmp_path / "results").glob("model_0*.json"))[0]
    edited.write_text(json.dumps(json.loads(edited.read_text()) | edit))
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipping {edited}: not a result file (its {wrong} " in captured.err
    assert "Top 3 of 4 trials (1 failed" in captured.out  # of the 5 files: the 3 finished ones left and the failed one


def test_two_trials_get_their_leaderboard_and_no_importance_ranking(tmp_path, capsys):
    make_results(tmp_path / "results", n=2)
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Top 2 of 3 trials" in out
    assert "one standard error" in out
    assert "What explains validation fine accuracy: too few finished trials to say (2 trials; it takes 3)" in out
    assert (tmp_path / "out" / "importance.csv").read_text().strip() == "hyperparameter,method,score,p_value,q_value,tendency,correlation"


def test_trials_that_all_reached_one_accuracy_are_said_to_explain_nothing_and_their_importance_plot_says_so(tmp_path,
                                                                                                             capsys):
    make_results(tmp_path / "results", n=3)
    for file in (tmp_path / "results").glob("model_0*.json"):  # three networks that never learned: each at chance
        file.write_text(json.dumps(json.loads(file.read_text()) | {"loss": -0.01, "fine_best_accuracy": 0.01}))
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert "What explains validation fine accuracy over 3 trials: nothing to say, every one reached 0.0100\n" in (
        capsys.readouterr().out)
    fig = analysis_plots.importance_ranking([], "validation")
    assert [t.get_text() for t in fig.axes[0].texts] == ["nothing to rank (see the analysis's output)"]
    assert list(fig.axes[0].get_yticks()) == []


def test_a_long_top_keeps_the_per_epoch_plots_legend_within_the_figure(tmp_path):
    make_results(tmp_path / "results", n=80)
    shapes = []
    for top in ("8", "80"):
        assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / top),
                                     "--top", top]) == 0
        shapes.append(matplotlib.image.imread(tmp_path / top / "top_trials_per_epoch.png").shape)
    assert shapes[0] == shapes[1]  # a legend taller than its panel would have grown the figure


def test_the_per_epoch_plot_zooms_on_the_last_half_where_the_leaders_part():
    rows = importance_rows([0.60, 0.62, 0.64])
    for trial, r in enumerate(rows):  # a fast rise, then a plateau where the three part
        r["trial"], r["fine_curve"] = trial, list(np.minimum(np.linspace(0.02, 2.0, 20), r["fine_accuracy"]))
        r["coarse_curve"] = []
    whole, zoomed = analysis_plots.top_trials_per_epoch(rows, 3, "validation").axes
    assert whole.get_ylim()[0] < 0.05 and whole.get_title() == "validation fine accuracy"
    assert zoomed.get_title() == "validation fine accuracy, epochs 11 to 20"
    assert 0.55 < zoomed.get_ylim()[0] < 0.60 and zoomed.get_ylim()[1] < 0.65
    for r in rows:
        r["fine_curve"] = r["fine_curve"][:analysis_plots.ZOOM_FROM - 1]
    assert len(analysis_plots.top_trials_per_epoch(rows, 3, "validation").axes) == 1  # too few epochs to zoom on


def test_empty_or_missing_results_dir_exits_2(tmp_path, capsys):
    assert analyze_results.main(["--results-dir", str(tmp_path / "none")]) == 2
    (tmp_path / "empty").mkdir()
    assert analyze_results.main(["--results-dir", str(tmp_path / "empty")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_a_file_given_as_the_results_folder_exits_2_asking_for_the_folder(tmp_path, capsys):
    (tmp_path / "model_0.5_abcde.txt.json").write_text("{}")  # one result file, where its folder was meant
    assert analyze_results.main(["--results-dir", str(tmp_path / "model_0.5_abcde.txt.json")]) == 2
    assert capsys.readouterr().err == (f"error: --results-dir {tmp_path / 'model_0.5_abcde.txt.json'} is a file: give the "
                                       "folder of the search's result files\n")


def test_an_output_folder_that_cannot_be_written_exits_2(tmp_path, capsys):
    make_results(tmp_path / "results")
    (tmp_path / "a_file").write_text("")
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "a_file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to {tmp_path / 'a_file' / 'out'}/") and len(err.splitlines()) == 1


def test_a_file_that_cannot_be_written_exits_1_with_one_line_after_the_leaderboard(tmp_path, capsys):
    make_results(tmp_path / "results")
    (tmp_path / "out" / "convergence.png").mkdir(parents=True)  # as a full disk would, for root too
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"error: cannot write the analysis: [Errno 21] Is a directory: "
                            f"'{tmp_path / 'out' / 'convergence.png'}'\n")
    assert "Top " in captured.out


@pytest.mark.slow
def test_a_reader_that_leaves_early_keeps_neither_the_files_from_being_written_nor_the_status_from_being_0(tmp_path):
    make_results(tmp_path / "results")
    with open(tmp_path / "stderr", "w") as stderr:  # as `analyze_results.py | head -1` leaves it
        analysis = subprocess.Popen([sys.executable, str(REPO / "analyze_results.py"), "--results-dir", "results"],
                                    cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert analysis.stdout.readline().startswith("Top 8 of 9 trials")
        analysis.stdout.close()  # before the importance and the plots, seconds of work, say what they wrote
        assert analysis.wait(timeout=120) == 0
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    check_outputs(tmp_path / "analysis", 9)


def test_log_uniform_hyperparameters_get_round_ticks_within_their_values():
    assert analysis_plots.log_ticks([0.05, 3.0, 20.0]) == pytest.approx([0.1, 1, 10])  # l2_weight_reg_mult's range
    assert analysis_plots.log_ticks([0.6, 1.6]) == pytest.approx([0.7, 1, 1.5])  # lr_rate_mult's
    assert analysis_plots.log_ticks([0.12, 0.5]) == pytest.approx([0.15, 0.2, 0.3, 0.5])
    assert analysis_plots.log_ticks([1.6, 2.5]) == pytest.approx([2])  # all there is


def test_the_importance_plot_labels_each_bar_beside_it_and_no_label_crosses_the_frame():
    ranked = [analyze_results.Importance("conv_pool_res_start_idx", "spearman", 1.0, 0.3, 0.6,
                                         "(higher did better), over the 3 trials that chose residual units", 1.0),
              analyze_results.Importance("optimizer", "kruskal", 0.5, 0.01, 0.02, "Nadam did best, median 0.623 of 24", 0.55),
              analyze_results.Importance("batch_size", "spearman", 0.0, 0.9, 0.9, "(no trend)", 0.02)]
    fig = analysis_plots.importance_ranking(ranked, "validation")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied": a figure too narrow for its labels
        fig.tight_layout()  # as plot_all lays it out
    fig.canvas.draw()
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    labels = {t.get_text(): t.get_window_extent() for t in ax.texts}
    assert list(labels) == ["0.000; p 0.900, q 0.900; (no trend)", "0.500; p 0.010, q 0.020; Nadam did best, median 0.623 of 24",
                            "1.000; p 0.300, q 0.600; (higher did better), over the 3 trials that chose residual units"]
    assert all(not box.x0 < frame.x1 < box.x1 for box in labels.values())
    for box, bar in zip(labels.values(), ax.patches):  # on a bar's line, lowest first as drawn
        assert (box.y0 + box.y1) / 2 == pytest.approx((bar.get_window_extent().y0 + bar.get_window_extent().y1) / 2, abs=1)


def test_the_scatter_matrix_places_categories_in_order_and_marks_them_with_their_labels():
    rows = [{"fine_accuracy": acc, "activation": act, "first_conv": conv, "lr_rate_mult": lr, "pruned": False}
            for acc, act, conv, lr in ((0.3, "relu", "", 1.0), (0.2, "elu", "3", 0.8), (0.1, "relu", "4", 1.2))]
    fig = analysis_plots.scatter_matrix(rows, {"activation": "category", "first_conv": "category", "lr_rate_mult": "log"}, "validation")
    axes = np.array(fig.axes[:16]).reshape(4, 4)  # then the colour bar
    assert [t.get_text() for t in axes[3][0].get_xticklabels()] == ["elu", "relu"]
    assert [t.get_text() for t in axes[1][3].get_yticklabels()] == ["none", "3", "4"]  # a nested choice's None
    # Accuracy against activation: relu's trials at 1, elu's at 0 (each spread a little across it).
    x, y = axes[3][0].collections[0].get_offsets().T
    assert list(np.round(x)) == [1, 0, 1] and list(y) == [0.3, 0.2, 0.1]


@pytest.mark.parametrize("pruned, accuracies, legend", [
    ([False, False], [0.3, 0.4], ["best so far", "trial"]),
    ([False, True, False], [0.3, 0.1, None], ["best so far", "trial", "pruned", "failed"]),
])
def test_the_convergence_legend_names_only_the_kinds_of_trial_the_search_had(pruned, accuracies, legend):
    rows = [{"trial": i, "status": "ok" if acc else "fail", "fine_accuracy": acc, "pruned": p}
            for i, (acc, p) in enumerate(zip(accuracies, pruned))]
    fig = analysis_plots.convergence(rows, "validation")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == legend


def test_convergence_is_also_drawn_against_the_hours_of_training_where_every_trial_recorded_them():
    # What another day of search may buy: a pruned trial costs the hours it took, a failed one too.
    rows = [{"trial": i, "status": "ok" if acc else "fail", "fine_accuracy": acc, "pruned": pruned, "train_seconds": seconds}
            for i, (acc, pruned, seconds) in enumerate(((0.3, False, 3600), (0.1, True, 900), (None, False, 1800),
                                                       (0.5, False, 5400)))]
    fig = analysis_plots.convergence(rows, "validation")
    by_trial, by_hours = fig.axes
    assert by_hours.get_xlabel().startswith("hours of training")
    marks = {c.get_label(): c.get_offsets().tolist() for c in by_hours.collections}
    assert marks == {"trial": [[1.0, 0.3], [3.25, 0.5]], "pruned": [[1.25, 0.1]], "failed": [[1.75, 0.0]]}
    assert by_hours.lines[0].get_xdata().tolist() == [1.0, 1.25, 1.75, 3.25]
    # A crashed Spark worker's trial recorded none, and costs none; the 2017 files recorded no time: the trial number alone.
    crashed = [r if r["fine_accuracy"] is not None else {**r, "train_seconds": None} for r in rows]
    assert analysis_plots.convergence(crashed, "validation").axes[1].lines[0].get_xdata().tolist() == [1.0, 1.25, 1.25, 2.75]
    assert len(analysis_plots.convergence([{**r, "train_seconds": None} for r in rows], "validation").axes) == 1


def test_convergence_marks_where_tpe_took_over_from_the_random_draws():
    rows = [{"trial": i, "status": "ok", "fine_accuracy": 0.1 * i, "pruned": False, "train_seconds": 1800, "suggested_by": by}
            for i, by in enumerate(("enqueue", "random", "tpe", "tpe"))]
    by_trial, by_hours = analysis_plots.convergence(rows, "validation").axes
    for ax, where in ((by_trial, 1.5), (by_hours, 1.0)):  # between trials 1 and 2; after an hour of training
        [line] = [line for line in ax.lines if line.get_label() == "TPE from here"]
        assert list(line.get_xdata()) == [where, where]
    assert "TPE from here" in [t.get_text() for t in by_trial.get_legend().get_texts()]
    # A search of random draws only (--algo random, or 2017's, which did not say): no such line.
    for by in ("random", None):
        fig = analysis_plots.convergence([{**r, "suggested_by": by} for r in rows], "validation")
        assert not [line for ax in fig.axes for line in ax.lines if line.get_label() == "TPE from here"]


def test_pruned_trials_are_told_apart_in_every_plot_of_accuracy_they_appear_in():
    # A pruned trial's accuracy is the one it had when stopped: it must not read as a finished trial's.
    rows = [{"trial": trial, "fine_accuracy": acc, "coarse_accuracy": acc + 0.1, "pruned": pruned, "lr_rate_mult": lr,
             "activation": act}
            for trial, (acc, pruned, lr, act) in enumerate(((0.4, False, 1.0, "relu"), (0.1, True, 0.7, "elu"),
                                                            (0.3, False, 1.4, "elu")))]
    panels = analysis_plots.hyperparameters_vs_accuracy(rows, {"lr_rate_mult": "log", "activation": "category"}, "validation")
    pairs = analysis_plots.fine_vs_coarse(rows, "validation")
    matrix = analysis_plots.scatter_matrix(rows, {"lr_rate_mult": "log"}, "validation")  # lr_rate_mult against accuracy, bottom left
    marks = {c.get_label(): (c.get_offsets().tolist(), c.get_paths()[0].vertices.shape) for c in matrix.axes[2].collections}
    assert marks["pruned"][0] == [pytest.approx([0.7, 0.1])] and len(marks["trial"][0]) == 2
    assert marks["pruned"][1] != marks["trial"][1]  # another shape, the colour saying the accuracy in both
    for ax, pruned_point in ((panels.axes[0], [0.7, 0.1]), (pairs.axes[0], [0.1, 0.2])):
        marks = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
        assert marks["pruned"] == [pytest.approx(pruned_point)] and len(marks["trial"]) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["trial", "pruned"]
    assert [c.get_label() for c in panels.axes[1].collections][:2] == ["trial", "pruned"]  # a category's panel too


def test_each_hyperparameters_trials_are_coloured_by_when_the_search_tried_them():
    # Where TPE's later trials went, against the first random ones: the colour is the trial number, on a bar of whole numbers.
    rows = [{"trial": trial, "fine_accuracy": 0.1 * trial, "pruned": trial == 3, "lr_rate_mult": 0.6 + 0.2 * trial}
            for trial in (4, 0, 3, 2)]  # in the order of the results folder
    fig = analysis_plots.hyperparameters_vs_accuracy(rows, {"lr_rate_mult": "log"}, "validation")
    fig.canvas.draw()
    panel, bar = fig.axes[0], fig.axes[-1]
    colour_of = {}
    for points in panel.collections:
        for (x, _), colour in zip(points.get_offsets(), points.get_facecolors()):
            colour_of[round((x - 0.6) / 0.2)] = tuple(colour[:3])
    viridis = matplotlib.colormaps["viridis"]
    assert colour_of == {trial: pytest.approx(viridis(trial / 4)[:3]) for trial in (0, 2, 3, 4)}
    assert bar.get_ylabel() == "trial number" and [t for t in bar.get_yticks() if 0 <= t <= 4] == [0, 1, 2, 3, 4]
    legend = panel.get_legend()  # the pruned trial told apart by its shape alone
    assert [t.get_text() for t in legend.get_texts()] == ["trial", "pruned"]
    assert {tuple(mark.get_facecolor()[0][:3]) for mark in legend.legend_handles} == {matplotlib.colors.to_rgb("grey")}


def test_a_categorys_panel_marks_each_levels_median_as_the_importance_table_gives_it():
    rows = [{"trial": i, "fine_accuracy": acc, "pruned": False, "optimizer": opt}
            for i, (acc, opt) in enumerate(((0.60, "Adam"), (0.61, "Adam"), (0.05, "Adam"), (0.5, "Nadam")))]
    ax = analysis_plots.hyperparameters_vs_accuracy(rows, {"optimizer": "category"}, "validation").axes[0]
    [medians] = [c for c in ax.collections if c.get_label() == "median"]
    assert medians.get_offsets().tolist() == [[0, 0.60], [1, 0.5]]  # Adam's mean, 0.42, would read as the worse


def test_every_hyperparameters_panel_reads_accuracy_on_one_scale_those_of_fewer_trials_too():
    # The weakest trial has no residual units: res_conv_kernel_size's panel leaves it out, and on a scale of its own
    # would stretch the others' spread over the whole panel.
    rows = [{"trial": i, "fine_accuracy": acc, "pruned": False, "lr_rate_mult": 0.6 + 0.2 * i,
             "res_conv_kernel_size": None if acc < 0.2 else 2.0 + i % 3} for i, acc in enumerate((0.1, 0.5, 0.55, 0.6))]
    fig = analysis_plots.hyperparameters_vs_accuracy(rows, {"lr_rate_mult": "log", "res_conv_kernel_size": "number"},
                                                     "validation")
    everyone, fewer = fig.axes[:2]
    assert fewer.get_title() == "res_conv_kernel_size (3 of 4 trials)"
    assert fewer.get_ylim() == everyone.get_ylim() and everyone.get_ylim()[0] < 0.1


def test_the_scatter_matrix_spreads_a_categorys_trials_across_its_place_so_that_they_do_not_hide_one_another():
    rows = [{"fine_accuracy": 0.3 + 0.01 * (i % 3), "pruned": False, "optimizer": ["Adam", "Nadam"][i % 2], "residual": i % 3}
            for i in range(12)]
    fig = analysis_plots.scatter_matrix(rows, {"optimizer": "category", "residual": "number"}, "validation")
    # optimizer (x) against residual (y): 12 trials at 6 places of the two, each seen apart, within 0.2 of its level.
    [points] = [c for c in fig.axes[3].collections if c.get_label() == "trial"]
    x, y = points.get_offsets().T
    assert len({(round(a, 6), b) for a, b in zip(x, y)}) == 12 and list(y) == [r["residual"] for r in rows]
    assert all(abs(a - ["Adam", "Nadam"].index(r["optimizer"])) <= 0.2 for a, r in zip(x, rows))
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["Adam", "Nadam"]
    counts = fig.axes[0].patches  # the diagonal's histogram counts each category at its place
    assert sorted(p.get_height() for p in counts if p.get_height()) == [6, 6]


def test_a_log_scaled_hyperparameter_is_on_a_log_axis_in_the_scatter_matrix_as_in_the_slice_plot():
    rows = [{"trial": i, "fine_accuracy": 0.1 * i, "pruned": False, "lr_rate_mult": lr, "one_more_fc": fc}
            for i, (lr, fc) in enumerate(((0.6, 0.0), (0.9, 0.7), (1.2, 0.0), (1.6, 1.5)))]
    kinds = {"lr_rate_mult": "log", "one_more_fc": "log"}  # the second with none, as 0: no log axis
    matrix, panels = analysis_plots.scatter_matrix(rows, kinds, "validation"), analysis_plots.hyperparameters_vs_accuracy(rows, kinds, "validation")
    axes = np.array(matrix.axes[:9]).reshape(3, 3)
    assert [ax.get_xscale() for ax in axes[2]] == ["log", "linear", "linear"]
    assert [ax.get_yscale() for ax in axes[:, 2]] == ["log", "linear", "linear"]
    assert axes[0][0].get_xscale() == "log"  # its histogram, over log-spaced bins
    assert list(axes[2][0].get_xticks()) == list(panels.axes[0].get_xticks())


def test_the_scatter_matrix_says_that_its_colours_are_the_accuracy_and_on_which_set():
    rows = [{"fine_accuracy": acc, "lr_rate_mult": lr, "pruned": False} for acc, lr in ((0.3, 0.7), (0.2, 1.0), (0.1, 1.4))]
    fig = analysis_plots.scatter_matrix(rows, {"lr_rate_mult": "log"}, "test")
    *panels, bar = fig.axes
    assert len(panels) == 4 and panels[3].get_xlabel() == "test fine accuracy"
    assert bar.get_ylabel() == "test fine accuracy" and bar.get_ylim() == pytest.approx((0.12, 0.3))  # from the 10th percentile
    fig.canvas.draw()
    [points] = panels[2].collections  # accuracy against lr_rate_mult: the trial at 0.1 as dark as one at 0.12 would be
    viridis = matplotlib.colormaps["viridis"]
    assert [tuple(c[:3]) for c in points.get_facecolors()] == [pytest.approx(viridis(v)[:3]) for v in (1.0, 8 / 18, 0.0)]


def test_kernel_sizes_are_marked_at_whole_numbers_in_the_scatter_matrix():
    rows = [{"fine_accuracy": acc, "conv_kernel_size": k, "pruned": False} for acc, k in ((0.3, 2), (0.2, 3), (0.1, 4))]
    fig = analysis_plots.scatter_matrix(rows, {"conv_kernel_size": "number"}, "validation")
    fig.canvas.draw()
    accuracy_by_kernel, kernel_by_accuracy = fig.axes[2], fig.axes[1]
    for ticks in (accuracy_by_kernel.get_xticks(), kernel_by_accuracy.get_yticks(), fig.axes[0].get_xticks()):
        assert [t for t in ticks if 2 <= t <= 4] == [2, 3, 4]


def test_the_trials_within_one_standard_error_of_the_best_are_named_with_the_smallest_network_among_them():
    def trial(number, acc, n_params):
        return {"trial": number, "fine_accuracy": acc, "n_params": n_params, "val_images": 2400, "file": f"m{number}.txt.json"}

    # 0.60 of 2,400 images: one standard error is 0.01.
    rows = [trial(0, 0.60, 3_000_000), trial(1, 0.595, 1_000_000), trial(2, 0.592, 2_000_000), trial(3, 0.58, 500_000),
            {**trial(4, None, None), "val_images": None}]
    assert analysis_notes.within_one_standard_error(rows, "runs/a") == (
        "Within one standard error of it (0.5900 and up) are trials 1 (0.5950), 2 (0.5920). The one-standard-error rule "
        "takes the smallest network of them: trial 1, 1,000,000 parameters against 3,000,000 (retrain it with --result "
        "runs/a/m1.txt.json).")
    rows[1]["n_params"] = 4_000_000
    note = analysis_notes.within_one_standard_error(rows[:2], "runs/a")
    assert note.endswith("is trial 1 (0.5950). Trial 0 is also the smallest network of them.")
    rows[1]["n_params"] = None  # a result that did not count them: no rule to apply
    note = analysis_notes.within_one_standard_error(rows[:2], "runs/a")
    assert note == "Within one standard error of it (0.5900 and up) is trial 1 (0.5950)."
    assert analysis_notes.within_one_standard_error([rows[0], rows[3]], "runs/a") == (
        "No other trial is within one standard error of it (0.5900 and up).")


def cost_rows() -> list[dict]:
    def trial(number, acc, n_params, seconds, pruned=False):
        return {"trial": number, "fine_accuracy": acc, "n_params": n_params, "train_seconds": seconds, "pruned": pruned}

    return [trial(0, 0.60, 3_000_000, 900), trial(1, 0.55, 1_000_000, 600), trial(2, 0.50, 2_000_000, 300),
            trial(3, 0.40, 200_000, 400), trial(4, 0.38, 200_000, 200),
            trial(5, 0.65, 100_000, 100, pruned=True),  # its accuracy is where it stopped: on no front
            trial(6, None, None, None)]  # failed


def test_the_networks_that_no_smaller_one_beats_are_named_from_the_most_accurate_down(monkeypatch):
    rows = cost_rows()
    # Trial 2 has more parameters than trial 1 for less; trial 4 as many as trial 3 for less.
    assert [r["trial"] for r in analysis_notes.cheapest_for_accuracy(rows, "n_params")] == [3, 1, 0]
    assert [r["trial"] for r in analysis_notes.cheapest_for_accuracy(rows, "train_seconds")] == [4, 2, 1, 0]
    assert analysis_notes.size_note(rows) == (
        "The networks that no smaller one beats, of the 5 trials that ran their course (parameters; cost_vs_accuracy.png): "
        "trial 0 0.6000 with 3.00 M, trial 1 0.5500 with 1.00 M, trial 3 0.4000 with 200 k.")
    monkeypatch.setattr(analysis_notes, "FRONT_SHOWN", 2)
    assert analysis_notes.size_note(rows).endswith("trial 1 0.5500 with 1.00 M, and 1 smaller, of 0.4000 or less.")
    # The most accurate network is the smallest too, or the results counted no parameters (2017's): nothing to trade.
    assert analysis_notes.size_note([rows[0], {**rows[1], "n_params": 4_000_000}]) is None
    assert analysis_notes.size_note([{**r, "n_params": None} for r in rows]) is None


def test_the_cost_plot_draws_each_front_through_its_trials_named_and_leaves_out_a_cost_not_recorded():
    rows = [r for r in cost_rows() if r["fine_accuracy"] is not None]
    fronts = {cost: analysis_notes.cheapest_for_accuracy(rows, cost) for cost in ("n_params", "train_seconds")}
    size, time = analysis_plots.cost_vs_accuracy(rows, fronts, "validation").axes
    for ax, costs, front in ((size, [200_000, 1_000_000, 3_000_000], [3, 1, 0]), (time, [200, 300, 600, 900], [4, 2, 1, 0])):
        [line] = ax.lines
        assert line.get_xdata().tolist() == costs and line.get_label().startswith("front:")
        assert [int(t.get_text()) for t in ax.texts] == front
        assert ax.get_xscale() == "log"
        marks = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
        assert len(marks["trial"]) == 5 and len(marks["pruned"]) == 1  # the pruned trial drawn apart, off the front
    assert size.get_xlabel() == "parameters" and time.get_xlabel().startswith("training time")
    assert time.get_title() == ""
    # Seconds on two GPUs do not compare: the panel says so.
    rows[1]["device"], rows[2]["device"] = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"
    time = analysis_plots.cost_vs_accuracy(rows, fronts, "validation").axes[1]
    assert time.get_title() == "trained on 2 devices, whose seconds do not compare (trials.csv's device)"
    # A trial that did not record its time (a crashed Spark worker's is a failed trial, on no front) leaves no time front.
    rows[0]["train_seconds"] = None
    assert analysis_notes.cheapest_for_accuracy(rows, "train_seconds") == []
    # Costs too close for two round numbers on a log axis (tiny networks of 72 k to 110 k parameters): labelled still.
    close = [{**r, "n_params": 72_000 + 7_000 * i} for i, r in enumerate(rows)]
    size = analysis_plots.cost_vs_accuracy(close, {"n_params": analysis_notes.cheapest_for_accuracy(close, "n_params")},
                                           "validation").axes[0]
    size.figure.canvas.draw()
    labels = [t.get_text() for t in size.xaxis.get_majorticklabels() + size.xaxis.get_minorticklabels() if t.get_text()]
    assert len(labels) >= 2 and all(label.endswith(" k") for label in labels)


def test_one_trial_gets_no_cost_plot_a_trade_off_of_one(tmp_path, capsys):
    make_results(tmp_path / "results", n=1)
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    assert "no smaller one beats" not in capsys.readouterr().out
    assert (tmp_path / "out" / "convergence.png").exists() and not (tmp_path / "out" / "cost_vs_accuracy.png").exists()


def test_the_analysis_counts_tpes_suggestions_among_the_best_trials_against_the_whole_searchs():
    def trials(*kinds):
        return [{"fine_accuracy": 0.9 - 0.1 * i, "suggested_by": by} for i, by in enumerate(kinds)]

    rows = trials("tpe", "tpe", "random", "enqueue", "random", "tpe", None) + [{"fine_accuracy": None, "suggested_by": "tpe"}]
    assert analysis_notes.suggestions_note(rows, top=3) == (
        "The 3 best trials hold 2 of the search's 3 TPE suggestions, 1 of its 2 random draws, 0 of its 1 enqueued points and "
        "0 of its 1 unmarked trials.")
    # No TPE suggestion to weigh: --algo random, a search within its random draws, or 2017's files, which did not say.
    for kinds in (("random", "enqueue"), (None, None)):
        assert analysis_notes.suggestions_note(trials(*kinds), top=3) is None


def test_the_budget_is_called_short_only_for_leaders_that_peaked_in_the_epochs_early_stopping_would_have_waited():
    def trial(acc, epochs, best, max_epochs=50, patience=10, pruned=False):
        return {"fine_accuracy": acc, "epochs": epochs, "best_epoch": best, "max_epochs": max_epochs, "patience": patience,
                "pruned": pruned}

    stopped_early, pruned, peaked_before = trial(0.5, 30, 20), trial(0.4, 5, 5, pruned=True), trial(0.3, 50, 40)
    assert analysis_notes.budget_note([stopped_early, pruned, peaked_before], top=10) is None
    # The leaders of a search whose resume changed --epochs: said in general terms. Below the top 2: not counted.
    rows = [trial(0.6, 50, 45), trial(0.5, 80, 79, max_epochs=80), trial(0.4, 50, 50)]
    assert analysis_notes.budget_note(rows, top=2) == (
        "Their budget may have been short: 2 of the 2 best trials peaked in their last --patience epochs of --epochs (the "
        "last tenth where early stopping could not end them); a larger --epochs may raise them.")
    # A budget within --patience, which early stopping could never end: a peak in its last tenth, here its last epoch.
    short = [trial(0.5, 2, 2, max_epochs=2, patience=15), trial(0.4, 2, 1, max_epochs=2, patience=15)]
    assert analysis_notes.budget_note(short, top=10) == (
        "Their budget may have been short: 1 of the 2 best trials peaked in the last epoch of 2; a larger --epochs may raise them.")



def test_the_retrains_of_the_searchs_trials_are_summed_up_per_training_over_draws_of_their_weights(tmp_path, capsys):
    make_results(tmp_path / "results", n=4)
    rows = analyze_results.load_trials_table(tmp_path / "results")
    best = max((r for r in rows if r["fine_accuracy"] is not None), key=lambda r: r["fine_accuracy"])
    source = str(tmp_path / "results" / best["file"])
    space = load_json_result(source)["space"]

    def retrain(name, weights_seed, accuracy, test, train_images=2700, retrained_from=source, network=space, **started):
        save_json_result({"status": "ok", "space": network, "model_name": name, "retrained_from": retrained_from,
                          "dataset": "synthetic", "seed": 0, "selected_on": "validation", "train_images": train_images,
                          "max_epochs": 6, "precision": "float32", "weights_seed": weights_seed,
                          "fine_best_accuracy": accuracy, "test_fine_accuracy": test, "loss": -accuracy, **started},
                         tmp_path / "weights")

    retrain("a.retrain", 1, 0.40, 0.38)  # by a version that did not record when it started
    retrain("a-2.retrain", 2, 0.54, 0.50)
    retrain("a-3.retrain", 3, 0.52, 0.46, started="2026-12-07T12:00:00+01:00")
    # The same draws again: each counts once, with its newest retrain's figures (by run, whose files sort -10 before -2
    # before the first; by when they started, where they say).
    retrain("a-10.retrain", 1, 0.50, 0.48)
    retrain("a-11.retrain", 3, 0.70, 0.70, started="2026-12-07T12:30:00+02:00")  # before a-3
    retrain("a-4.retrain", 1, 0.61, 0.60, train_images=3000)  # all the images: another training
    retrain("b.retrain", 1, 0.9, 0.9, retrained_from=str(tmp_path / "elsewhere" / "model_0.9_abcde.txt.json"),
            network=hyperspace.DEMO_SPACE)  # another search's trial
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                                 "--weights-dir", str(tmp_path / "weights")]) == 0
    out = capsys.readouterr().out
    trial = best["trial"]
    assert (f"\nRetrained in {tmp_path / 'weights'}/ (best fine accuracy; over several draws of the weights, mean ± "
            "standard deviation):\n"
            "trial draws  images epochs  validation        test\n"
            f"{trial:>5}     3   2,700      6  0.5200 ± 0.0200   0.4800 ± 0.0200\n"
            f"{trial:>5}     1   3,000      6  0.6100            0.6000\n\n") in out
    capsys.readouterr()
    (tmp_path / "other").mkdir()
    assert analyze_results.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                                 "--weights-dir", str(tmp_path / "other")]) == 0
    assert "Retrained" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # a typo, not a folder without retrains
        analyze_results.main(["--results-dir", str(tmp_path / "results"), "--weights-dir", str(tmp_path / "wieghts")])
    assert refused.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: --weights-dir {tmp_path / 'wieghts'}: no such folder (--help lists the options)\n")
