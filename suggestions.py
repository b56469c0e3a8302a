"""What each trial of a search trains: the points asked for first (--enqueue), then hyperopt's random draws and TPE's
suggestions; each trial marked with which it was, and never a point that a trial has already, but an enqueued point whose
trials failed."""

from __future__ import annotations

import inspect
import math

from hyperopt import rand, tpe
from hyperopt.base import miscs_update_idxs_vals

from cli import plural
from hyperspace import active
from trial import report

REDRAWS = 10  # a suggestion drawn again, each time with another seed, while a finished or running trial has its point


def tried(trials) -> list[dict]:
    """The points (hyperopt's encoding, the hyperparameters in use) of every trial, finished or running."""
    return [active(t["misc"]["vals"]) for t in trials.trials]


def suggesting_first(points: list[tuple[dict, str | None]], algo):
    """hyperopt's suggestion algorithm `algo`, but suggesting `points` first, each once: (hyperopt's encoding, how it was
    suggested: "enqueue", or as it was in the run that a resumed trial stopped in)."""
    if not points:
        return algo
    queue = list(points)  # a point may have a failed trial already: it is tried again

    def suggest(new_ids, domain, trials, seed):
        docs = []
        for new_id, (vals, by) in zip(new_ids, queue):
            docs.append(trial_doc(trials, new_id, vals, domain.new_result(), by, domain.cmd, domain.workdir))
        del queue[:len(docs)]
        rest = new_ids[len(docs):]
        return docs + (algo(rest, domain, trials, seed) if rest else [])

    return suggest


def telling(algo, objective):
    """`algo`, setting `objective.suggested_by` to how the trial it suggests was suggested, for a one-at-a-time search,
    whose trial's backup records it."""
    def suggest(new_ids, domain, trials, seed):
        docs = algo(new_ids, domain, trials, seed)
        for doc in docs:
            objective.suggested_by = doc["misc"].get("suggested_by")
        return docs

    return suggest


def trial_doc(trials, tid: int, vals: dict, result: dict, suggested_by: str | None,
              cmd=("domain_attachment", "FMinIter_Domain"), workdir=None) -> dict:
    """hyperopt's document of a trial of the point `vals` (hyperopt's encoding), as its own generate_trials_to_calculate
    builds one (`cmd`: fmin's domain), marked with how it was suggested."""
    misc = {"tid": tid, "cmd": cmd, "workdir": workdir, "suggested_by": suggested_by}
    miscs_update_idxs_vals([misc], {label: [tid] * len(v) for label, v in vals.items()}, vals)
    [doc] = trials.new_trial_docs([tid], [None], [result], [misc])
    return doc


def marked(algo: str, startup_trials: int | None):
    """hyperopt's suggestion algorithm `algo` ("tpe" or "random"), TPE after `startup_trials` random draws (None: hyperopt's
    20), marking each trial "random" or "tpe" in its `misc["suggested_by"]`, and drawing a point that a trial has again."""
    if algo == "random":
        startup = math.inf
    elif startup_trials is None:
        startup = inspect.signature(tpe.suggest).parameters["n_startup_jobs"].default
    else:
        startup = startup_trials
    said = False

    def draw(new_ids, domain, trials, seed):
        nonlocal said
        # TPE's own rule, made here so that each trial can say which it was: random draws until `startup` trials
        # have been suggested, resumed and enqueued ones included.
        if (suggested := len({t["misc"].get("from_tid", t["tid"]) for t in trials.trials})) < startup:
            return rand.suggest(new_ids, domain, trials, seed), "random"
        if not said:
            report(f"TPE suggests the trials from here on, modelling the {plural(suggested, 'trial')} before" if suggested
                   else "TPE suggests every trial (--startup-trials 0): the first from the space alone, as no trial has "
                        "finished to model")
            said = True
        return tpe.suggest(new_ids, domain, trials, seed, n_startup_jobs=0), "tpe"

    def suggest(new_ids, domain, trials, seed):
        trained = tried(trials)
        # Searches of one --seed draw the same random points in the same order: a trial of another one, enqueued
        # here, would come again at its place, and train twice.
        for retry in range(REDRAWS):
            docs, by = draw(new_ids, domain, trials, seed + retry)
            if not any(active(doc["misc"]["vals"]) in trained for doc in docs):
                break
        for doc in docs:
            doc["misc"]["suggested_by"] = by
        return docs

    return suggest
