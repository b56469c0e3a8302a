"""How much a hyperparameter explains the trials' accuracies, and how likely by chance: rank correlations, their
share beyond chance, and p-values from shufflings of the accuracies among trials drawn alike."""

from __future__ import annotations

import itertools
import math

import numpy as np

PERMUTATIONS = 9_999  # shufflings behind each p-value
NEIGHBOURS = 5  # TPE's trials' accuracies are shuffled within blocks of this many consecutive ones


def exchangeable(trials: list[dict]) -> np.ndarray:
    """Each trial's block (in trial order) of trials drawn alike, among which a p-value shuffles their accuracies: a run
    of random draws is one block; other trials (TPE's, enqueued ones, 2017's unrecorded ones) go NEIGHBOURS at a time."""
    blocks, block, size, random_run = [], -1, 0, False
    for trial in trials:
        random = trial.get("suggested_by") == "random"
        if block < 0 or random != random_run or (not random and size == NEIGHBOURS):
            block, size, random_run = block + 1, 0, random
        blocks.append(block)
        size += 1
    return np.array(blocks)


def shuffled_p(ranks: np.ndarray, blocks: np.ndarray, statistic) -> tuple[float, float]:
    """A statistic of the accuracies' ranks (in trial order) and its p-value: the share of shufflings within `blocks`
    whose |statistic| is as high; every such ordering where there are no more than PERMUTATIONS, else that many drawn at
    random, the unshuffled ranks counted among them."""
    observed = float(statistic(ranks))
    sizes = np.bincount(blocks)
    orderings = math.prod(math.factorial(size) for size in sizes)
    if orderings <= PERMUTATIONS:  # a few trials: every ordering, the unshuffled one among them
        every = itertools.product(*(itertools.permutations(np.flatnonzero(blocks == b)) for b in range(len(sizes))))
        shuffles = [np.array([np.concatenate(ordering) for ordering in every])]
    else:  # drawn a few thousand at a time: 8 MB of orderings, whatever the trials
        rng, rows = np.random.default_rng(0), max(1, 1_000_000 // len(ranks))
        shuffles = (np.argsort(blocks + rng.random((min(rows, PERMUTATIONS - start), len(ranks))), axis=1)
                    for start in range(0, PERMUTATIONS, rows))
    as_high = sum(int((np.abs(statistic(ranks[each])) >= abs(observed) - 1e-12).sum()) for each in shuffles)
    return observed, as_high / orderings if orderings <= PERMUTATIONS else (as_high + 1) / (PERMUTATIONS + 1)


def pearson_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of x with each row of y (last axis)."""
    x, y = x - x.mean(), y - y.mean(axis=-1, keepdims=True)
    return (y @ x) / np.sqrt((y * y).sum(axis=-1) * (x @ x))


def beyond_chance(correlation: float, n: int, fitted: int) -> float:
    """The share of the variance that a correlation over n trials explains beyond chance: its adjusted R², for a fit of
    these parameters (a line's 2, or a category's k means); below 0 where less than chance.

    k means fitted to n trials explain (k - 1) / (n - 1) of the variance by chance alone, and adjusted R² takes that
    off: for a category, it is Kruskal-Wallis's effect size, eta squared H (Tomczak & Tomczak 2014).
    """
    if n <= fitted:  # a category with a trial per level: the fit is exact whatever the accuracies
        return 0.0
    return 1 - (1 - correlation ** 2) * (n - 1) / (n - fitted)


def correlation_ratio(members: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """eta: the square root of the share of the accuracies' variance (last axis) between the categories' means; members:
    trials x categories, 0 or 1."""
    counts = members.sum(axis=0)
    mean = acc.mean(axis=-1, keepdims=True)
    between = (counts * (acc @ members / counts - mean) ** 2).sum(axis=-1)
    return np.sqrt(between / ((acc - mean) ** 2).sum(axis=-1))
