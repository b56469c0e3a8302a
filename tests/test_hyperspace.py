"""Points of the search space in hyperopt's own encoding: named points, result files, and trained first."""

import json

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, rand, tpe
from hyperopt.exceptions import AllTrialsFailed

import hyperspace
from hyperspace import NotInSpace, active, decode, encode, point_named
from suggestions import suggesting_first
from utils import finished_copy, load_trials, save_json_result


def sampled_trials(space, n=60):
    """Trials of hyperopt's own sampling of `space`: its encoding of each point."""
    trials = Trials()
    fmin(lambda point: {"loss": 0.0, "status": STATUS_OK}, space, algo=rand.suggest, max_evals=n, trials=trials,
         rstate=np.random.default_rng(0), show_progressbar=False)
    return trials


@pytest.mark.parametrize("name", ["full", "tiny"])
def test_every_sampled_point_encodes_as_hyperopt_itself_encoded_it(name):
    space = hyperspace.SPACES[name]
    for trial in sampled_trials(space).trials:
        vals = trial["misc"]["vals"]
        assert encode(decode(vals, space), space) == vals


def test_the_2017_best_encodes_as_the_2017_pickle_holds_it(reference_dir):
    trials = finished_copy(load_trials(reference_dir / "results.pkl"))
    best = min((t for t in trials.trials if t["result"]["status"] == "ok"), key=lambda t: t["result"]["loss"])
    assert active(encode(hyperspace.NAMED_POINTS["2017-best"], hyperspace.space)) == active(best["misc"]["vals"])


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 48}, "batch_size 48 is not in the space (100 to 700 in steps of 5)"),
    ({"batch_size": 321}, "batch_size 321 is not in the space (100 to 700 in steps of 5)"),
    ({"residual": 7}, "residual 7 is not in the space (1 to 4 in steps of 1)"),
    ({"lr_rate_mult": 2.0}, "lr_rate_mult 2.0 is not in the space (0.6065 to 1.649)"),
    ({"optimizer": "SGD"}, "optimizer 'SGD' is not one of its choices"),
    ({"use_BN": 1}, "use_BN 1 is not one of its choices"),
    ({"first_conv": 5}, "first_conv 5 is not one of its choices"),
    ({"activation": None}, "activation None is not one of its choices"),
])
def test_a_point_the_space_cannot_sample_is_refused_with_what_and_why(change, message):
    with pytest.raises(NotInSpace) as err:
        encode({**hyperspace.SEED_BEST_SPACE, **change}, hyperspace.space, "--enqueue x")
    assert str(err.value) == f"--enqueue x: {message}"


def test_a_point_without_a_hyperparameter_is_refused():
    point = {k: v for k, v in hyperspace.SEED_BEST_SPACE.items() if k != "pooling_type"}
    with pytest.raises(NotInSpace, match="the point: it has no pooling_type"):
        encode(point, hyperspace.space)


def test_a_point_is_named_or_read_from_a_result_file(tmp_path):
    assert point_named("demo") is hyperspace.DEMO_SPACE
    result = tmp_path / "model_0.5_abcde.txt.json"
    result.write_text(json.dumps({"loss": -0.5, "space": hyperspace.SEED_BEST_SPACE}))
    assert point_named(str(result)) == hyperspace.SEED_BEST_SPACE
    (tmp_path / "failed.json").write_text(json.dumps({"status": "fail", "space": None}))
    (tmp_path / "notes.txt").write_text("not JSON")
    # A results folder (another search's, a pilot on fewer images): its best finished trial's.
    pilot = tmp_path / "pilot"
    pilot.mkdir()
    with pytest.raises(NotInSpace, match="^--enqueue pilot: a results folder without a finished trial$"):
        point_named(str(pilot), "--enqueue pilot")
    save_json_result({"loss": -0.4, "status": "ok", "model_name": "model_0.4_aaaaa", "space": hyperspace.DEMO_SPACE}, pilot)
    save_json_result({"loss": -0.6, "status": "ok", "model_name": "model_0.6_bbbbb", "space": hyperspace.SEED_BEST_SPACE},
                     pilot)
    save_json_result({"status": "fail", "model_name": "model_failed_ccccc", "space": hyperspace.DEMO_SPACE}, pilot)
    assert point_named(str(pilot)) == hyperspace.SEED_BEST_SPACE
    for name, message in ((str(tmp_path / "nothing.json"), "neither 2017-best, demo, a result file nor a results folder"),
                          (str(tmp_path / "notes.txt"), "not a result file of the search (Expecting value"),
                          (str(tmp_path / "failed.json"), "a result without a network (its space is None)")):
        with pytest.raises(NotInSpace) as err:
            point_named(name)
        assert str(err.value).startswith(f"{name}: {message}")


def test_the_points_are_suggested_first_each_once_even_where_a_trial_of_them_failed():
    trained = []

    def objective(point):
        trained.append(point)
        return {"loss": 0.0, "status": STATUS_OK} if len(trained) > 1 else {"status": STATUS_FAIL}

    first = [encode(hyperspace.SEED_BEST_SPACE, hyperspace.space), encode(hyperspace.DEMO_SPACE, hyperspace.space)]
    trials = Trials()
    with pytest.raises(AllTrialsFailed):  # fmin's closing argmin, as in a search
        fmin(objective, hyperspace.space, algo=suggesting_first([(first[0], "enqueue")], tpe.suggest), max_evals=1,
             trials=trials, rstate=np.random.default_rng(0), show_progressbar=False)
    # A resume that tries the failed point again (the search enqueues it once more), then the other.
    fmin(objective, hyperspace.space, algo=suggesting_first([(p, "enqueue") for p in first], tpe.suggest), max_evals=5,
         trials=trials, rstate=np.random.default_rng(1), show_progressbar=False)
    without_width = [{k: v for k, v in point.items() if k != "width_multiple"} for point in trained]
    assert without_width[:3] == [hyperspace.SEED_BEST_SPACE, hyperspace.SEED_BEST_SPACE, hyperspace.DEMO_SPACE]
    assert len(trained) == 5 and all(p not in without_width[:3] for p in without_width[3:])
    assert [t["misc"]["vals"] for t in trials.trials[:3]] == [first[0], *first]
