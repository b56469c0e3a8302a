"""How a retrain reads: its figures beside its trial's, what it trained with that its trial did not, and the spread of
retrains that differ in their weights seed alone."""

from __future__ import annotations

import datetime
import math
import re

from trial import how_it_stopped
from utils import best_epoch, iter_results, setting, validation_curve, weights_seed


def figures(result: dict) -> str:
    """A finished training's best fine accuracies, its epochs and its training images, 2017's results' too."""
    split, test, images = setting(result, "selected_on"), result.get("test_fine_accuracy"), setting(result, "train_images")
    text = f"{split} fine accuracy {result['fine_best_accuracy']:.4f}"
    if split != "test" and test is not None:
        text += f", test {test:.4f}"
    if "epochs_trained" in result:
        text += f" ({how_it_stopped(result)})"
    elif curve := validation_curve(result):
        text += f" (best epoch {best_epoch(curve)} of {len(curve)})"
    return f"{text}, {images:,} training images" if images else text


# What else sets a training's figures: the code, its software, its precision, and where it ran (another GPU, or a CPU's
# other number of cores, sums in another order: a Spark trial trains on its share of the cores).
SETUP = ("code_version", "keras_backend", "keras_version", "backend_version", "precision", "device")


def trained_otherwise(trial: dict, retrained: dict) -> str | None:
    """What a retrain trained with that its trial did not (another commit of the code, backend, version, precision or
    device), which may set their figures apart; None where the trial recorded the same, or nothing (2017's)."""
    differ = [f"{key} {retrained.get(key)} (the trial's: {trial[key]})" for key in SETUP
              if trial.get(key) is not None and trial[key] != retrained.get(key)]
    return f"Trained with other software or hardware than the trial: {', '.join(differ)}" if differ else None


def training_of(retrain: dict) -> str:
    """What retrains must share to be draws of one training, differing in their weights seed alone: the network, data,
    budget and precision."""
    import json

    keys = ("space", "dataset", "seed", "selected_on", "train_images", "max_epochs", "precision")
    return json.dumps([retrain.get(k) for k in keys], sort_keys=True)


def draws_of_one_training(folder: str) -> dict[str, list[dict]]:
    """The retrains in `folder` by their `training_of`: for each, one retrain per weights seed, the newest."""
    groups: dict[str, dict[int, dict]] = {}
    for _, retrain in iter_results(folder):
        measured = all(isinstance(retrain.get(k), (int, float)) for k in ("fine_best_accuracy", "test_fine_accuracy"))
        if retrain.get("retrained_from") and measured:
            # Retrains from before --weights-seed drew the trial's own.
            seed = retrain.get("weights_seed", weights_seed(retrain.get("seed", 0), retrain["space"]))
            draws = groups.setdefault(training_of(retrain), {})
            if seed not in draws or newness(retrain) > newness(draws[seed]):
                draws[seed] = retrain | {"weights_seed": seed}
    return {training: list(draws.values()) for training, draws in groups.items()}


def newness(retrain: dict) -> tuple[float, int]:
    """What orders retrains by age: when they started (older versions did not record it), then their run's number (a later
    retrain of a model is its -2, -3...), which their file names do not sort by (-10 before -2 before the first)."""
    try:
        started = datetime.datetime.fromisoformat(retrain["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        started = -math.inf
    run = re.search(r"-(\d+)\.retrain$", str(retrain.get("model_name")))
    return started, int(run[1]) if run else 1


def same_but_the_draw(retrained: dict, folder: str) -> list[dict]:
    """The retrains in `folder` (this saved one among them) that differ from it in their weights seed alone."""
    return draws_of_one_training(folder).get(training_of(retrained), [retrained])


def mean_and_spread(values: list[float]) -> str:
    """Accuracies as their mean ± their (sample) standard deviation, "0.6188 ± 0.0041"; one alone as it is."""
    import statistics

    return f"{values[0]:.4f}" if len(values) == 1 else f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def over_draws(retrains: list[dict]) -> str | None:
    """The mean and spread of the best fine accuracies of retrains that differ in their weights seed alone; None for one."""
    if len(retrains) < 2:
        return None
    split = retrains[0]["selected_on"]

    def spread(key: str) -> str:
        return mean_and_spread([r[key] for r in retrains])

    test = f", test {spread('test_fine_accuracy')}" if split != "test" else ""
    seeds = ", ".join(str(seed) for seed in sorted(r["weights_seed"] for r in retrains))
    return (f"Over {len(retrains)} draws of its weights and batches (--weights-seed {seeds}) on these images: {split} fine "
            f"accuracy {spread('fine_best_accuracy')}{test} (mean ± standard deviation)")
