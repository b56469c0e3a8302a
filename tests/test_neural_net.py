"""The two-headed CNN: shapes over the space, parameter counts by the 2017 rules, real trials."""

import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from hyperopt.pyll import stochastic

import hyperspace
from conftest import REPO, SMALL_SPACE
from neural_net import build_and_train, build_model
from precision import cpu_name


def count_params_2017(space, input_shape=(32, 32, 3), num_fine=100, num_coarse=20, double_bn=False):
    """Parameters of the network the 2017 rules describe, counted by hand from shapes.

    `double_bn` adds the extra batch-norm that 2017 put after each residual stack.
    """
    h, w, c = input_shape
    total = 0

    def conv(cin, cout, k):
        return k * k * cin * cout + cout

    def bn(ch):
        return 4 * ch

    multiple = space.get("width_multiple", 1)

    def width(units):
        return -(-int(units) // multiple) * multiple

    use_bn = space["use_BN"]
    k = int(round(space["conv_kernel_size"]))
    if space["first_conv"] is not None:
        total += conv(c, 16, space["first_conv"])
        c = 16
    n = width(40 * space["conv_hiddn_units_mult"])
    for block in range(space["nb_conv_pool_layers"]):
        total += conv(c, n, k) + (bn(n) if use_bn else 0)
        c = n
        if space["residual"] is not None and block >= space["conv_pool_res_start_idx"]:
            units = int(round(space["residual"]))
            rk = int(round(space["res_conv_kernel_size"]))
            total += units * (conv(n, n, 1) + conv(n, n, rk) + (bn(n) if use_bn else 0))
            total += bn(n) if (not use_bn or double_bn) else 0
            if double_bn and not use_bn:
                total += bn(n)
        pooling = space["pooling_type"]
        if pooling == "all_conv":
            total += conv(c, n, 3) + (bn(n) if use_bn else 0)
        elif pooling == "inception":  # strided conv | 1x1 -> 3x3 -> strided conv | 1x1 -> max pool
            na, nb = int(n * 0.33 + 1), int(n * 0.4 + 1)
            total += conv(c, nb, 3) + (bn(nb) if use_bn else 0)
            total += conv(c, na, 1) + conv(na, nb, 3) + conv(nb, nb, 3) + (bn(nb) if use_bn else 0)
            total += conv(c, nb, 1)
            c = 3 * nb
        h, w = math.ceil(h / 2), math.ceil(w / 2)  # every pooling type, odd sizes rounded up
        n *= 2
    features = h * w * c
    fc = width(1000 * space["fc_units_1_mult"])
    total += features * fc + fc
    if space["one_more_fc"] is not None:
        fc2 = width(750 * space["one_more_fc"])
        total += fc * fc2 + fc2
        fc = fc2
    total += fc * num_fine + num_fine
    if num_coarse:
        total += fc * num_coarse + num_coarse
    return total


def head_shapes(model):
    return {name: tuple(tensor.shape) for name, tensor in model.output.items()}


def sampled_points(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [stochastic.sample(hyperspace.space, rng=rng) for _ in range(n)]


def pooling_points():
    return [
        {**hyperspace.DEMO_SPACE, "pooling_type": pooling, "residual": residual}
        for pooling in ("max", "avg", "all_conv", "inception")
        for residual in (None, 2)
    ]


ALL_POINTS = sampled_points() + [hyperspace.DEMO_SPACE, hyperspace.SEED_BEST_SPACE] + pooling_points()


@pytest.mark.slow
def test_every_sampled_point_builds_two_heads_with_the_2017_parameter_count():
    for space in ALL_POINTS:
        model = build_model(space)
        assert head_shapes(model) == {"fine_outputs": (None, 100), "coarse_outputs": (None, 20)}
        assert model.count_params() == count_params_2017(space), space


@pytest.mark.parametrize("space", [hyperspace.DEMO_SPACE, hyperspace.SEED_BEST_SPACE] + pooling_points()[:4])
def test_parameter_count_matches_the_2017_rules(space):
    assert build_model(space).count_params() == count_params_2017(space)


@pytest.mark.parametrize("pooling", ["max", "avg", "all_conv", "inception"])
def test_every_pooling_type_takes_small_and_odd_images_to_the_full_depth(pooling):
    space = {**hyperspace.SEED_BEST_SPACE, "pooling_type": pooling}
    for input_shape in [(1, 1, 3), (7, 5, 1)]:
        model = build_model(space, input_shape, num_fine=10, num_coarse=None)
        assert model.count_params() == count_params_2017(space, input_shape, num_fine=10, num_coarse=None)


def test_the_trial_line_names_the_layers_and_widths_that_are_built():
    space = {**hyperspace.SEED_BEST_SPACE, "width_multiple": 8}
    assert hyperspace.describe(space) == (
        "conv3 16 > 3 blocks of conv3 64/128/256 + BN + 3 residual units conv2 + avg pooling > FC 1312; "
        "elu, Nadam lr 0.00065, L2 0.00029, batch 320, dropout 0.26 conv, 0.43 FC, coarse weight 0.31")
    layers = build_model(space).layers
    assert {layer.filters for layer in layers if layer.__class__.__name__ == "Conv2D"} == {16, 64, 128, 256}
    assert {layer.units for layer in layers if layer.__class__.__name__ == "Dense"} == {1312, 100, 20}

    # Residual units from a block past the last are none.
    late = {**space, "nb_conv_pool_layers": 2, "conv_pool_res_start_idx": 2.0, "first_conv": None}
    assert hyperspace.describe(late, coarse_head=False).startswith("2 blocks of conv3 64/128 + BN + avg pooling > FC")
    assert not [layer for layer in build_model(late).layers if layer.__class__.__name__ == "Add"]


def test_best_2017_network_size_is_within_2_percent_of_the_original():
    ours = build_model(hyperspace.SEED_BEST_SPACE).count_params()
    original = count_params_2017(hyperspace.SEED_BEST_SPACE, double_bn=True)
    assert abs(ours - original) / original < 0.02
    assert 6_500_000 < ours < 7_500_000


def test_a_keras_config_of_channels_first_builds_the_same_network():
    import keras

    keras.config.set_image_data_format("channels_first")  # as a ~/.keras/keras.json can say
    try:
        model = build_model(hyperspace.SEED_BEST_SPACE)
    finally:
        keras.config.set_image_data_format("channels_last")
    assert model.count_params() == 7_059_352
    assert model.get_layer("fine_outputs").output.shape == (None, 100)


@pytest.mark.parametrize("floatx", ["float16", "float64"])
def test_a_keras_config_of_another_floatx_trains_in_float32(synthetic, floatx):
    import keras

    keras.config.set_floatx(floatx)  # as a ~/.keras/keras.json can say
    try:
        model, result = build_and_train(SMALL_SPACE, synthetic, epochs=1, precision="float32")
    finally:
        keras.config.set_floatx("float32")
    assert result["status"] == "ok", result.get("error")
    assert {layer.compute_dtype for layer in model.layers if layer.weights} == {"float32"}


def test_a_keras_config_of_another_floatx_does_not_become_the_policy_a_trial_leaves_behind(tmp_path):
    # A fresh process, where Keras has no dtype policy yet: it then reads floatx's, keras.json's float64 here, and a
    # trial that restored the policy it read left every network built after it (a model plot) in float64.
    (tmp_path / "keras.json").write_text('{"floatx": "float64"}')
    code = ("import keras\nfrom conftest import SMALL_SPACE\nfrom datasets import load_dataset\n"
            "from neural_net import build_and_train, build_model\n"
            "build_and_train(SMALL_SPACE, load_dataset('synthetic', synthetic_size=300), epochs=1, precision='float32')\n"
            "print(keras.config.dtype_policy().name, build_model(SMALL_SPACE).weights[0].dtype)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "KERAS_HOME": str(tmp_path), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert done.stdout.split() == ["float32", "float32"], done.stderr[-2000:]


def test_searched_networks_round_filters_and_hidden_units_up_to_multiples_of_8():
    def widths(space):
        layers = build_model(space).layers
        return ([layer.filters for layer in layers if hasattr(layer, "filters")],
                [layer.units for layer in layers if hasattr(layer, "units")])

    assert widths(hyperspace.SEED_BEST_SPACE) == ([16, 63, 63, 63, 63, 63, 63, 63, 126, 126, 126, 126, 126, 126, 126,
                                                   252, 252, 252, 252, 252, 252, 252], [1308, 20, 100])
    assert widths({**hyperspace.SEED_BEST_SPACE, "width_multiple": 8}) == (
        [16, 64, 64, 64, 64, 64, 64, 64, 128, 128, 128, 128, 128, 128, 128, 256, 256, 256, 256, 256, 256, 256],
        [1312, 20, 100])  # the heads keep one unit per label
    assert all(point["width_multiple"] == 8 for point in sampled_points(5))


def test_fine_head_only_without_coarse_labels():
    model = build_model(SMALL_SPACE, (20, 24, 1), num_fine=10, num_coarse=None)
    assert head_shapes(model) == {"fine_outputs": (None, 10)}


def test_flip_only_while_training():
    model = build_model(SMALL_SPACE)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    np.testing.assert_allclose(first["fine_outputs"], second["fine_outputs"], rtol=1e-6)


def test_a_trial_on_synthetic_data_learns(synthetic):
    # Three epochs: threads make training differ from run to run, and one run in many learned the
    # coarse head too slowly for two (0.085 on 200 validation images; usually 0.2-0.3 by then).
    model, result = build_and_train(SMALL_SPACE, synthetic, epochs=3)
    assert result["status"] == "ok"
    assert result["fine_best_accuracy"] > 0.05  # chance is 0.01
    assert result["coarse_best_accuracy"] > 0.10  # chance is 0.05
    assert result["test_fine_accuracy"] > 0.05
    assert result["loss"] == -result["fine_best_accuracy"]
    assert result["epochs_trained"] == 3 and result["pruned"] is False
    curve = result["history"]["val_fine_outputs_accuracy"]
    assert result["best_epoch"] == 1 + curve.index(max(curve))  # the epoch whose weights the model keeps
    assert result["n_params"] == model.count_params()
    assert len(result["history"]["val_fine_outputs_accuracy"]) == 3
    # What each accuracy is a fraction of, which the analysis states its standard error by.
    assert (result["val_images"], result["test_images"]) == (len(synthetic.x_val), len(synthetic.x_test))
    for accuracy, n in ((result["fine_best_accuracy"], result["val_images"]), (result["test_fine_accuracy"], result["test_images"])):
        assert accuracy * n == pytest.approx(round(accuracy * n), abs=1e-3)
    for key in ("real_loss", "fine_best_loss", "fine_end_accuracy", "fine_end_loss", "coarse_best_loss",
                "coarse_end_accuracy", "coarse_end_loss", "model_name", "space", "train_seconds",
                "dataset", "selected_on", "keras_backend", "tid", "test_coarse_accuracy"):
        assert key in result
    # What train_seconds were measured on and with (the tests hide any GPU).
    assert (result["device"], result["keras_version"]) == (f"CPU ({cpu_name()})", keras.__version__)


def test_the_returned_model_holds_the_best_epochs_weights(synthetic):
    from batches import targets

    model, result = build_and_train(SMALL_SPACE, synthetic, epochs=3, seed=1)
    scores = model.evaluate(synthetic.x_val, targets(synthetic, "val"), verbose=0, return_dict=True)
    assert scores["fine_outputs_accuracy"] == pytest.approx(result["fine_best_accuracy"], abs=1e-6)


def test_a_continued_training_counts_the_epochs_before_and_keeps_their_best_epochs_weights(synthetic):
    from neural_net import build_model
    from pruning import MONITOR, Progress

    _, first = build_and_train(SMALL_SPACE, synthetic, epochs=1)
    untrained = build_model(SMALL_SPACE).get_weights()
    # Two epochs before, the first better than any to come (a claimed 0.99) and its weights the untrained ones.
    before = Progress({**{key: values * 2 for key, values in first["history"].items()}, MONITOR: [0.99, 0.5]}, untrained)
    model, result = build_and_train(SMALL_SPACE, synthetic, epochs=2, before=before)
    assert result["epochs_trained"] == 4 and result["history"][MONITOR][:2] == [0.99, 0.5]
    assert result["fine_best_accuracy"] == 0.99 and result["fine_end_accuracy"] == result["history"][MONITOR][3]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), untrained, strict=True))


def test_an_absurd_learning_rate_fails_the_trial_without_raising(synthetic):
    model, result = build_and_train({**SMALL_SPACE, "lr_rate_mult": 1e35}, synthetic, epochs=2)
    assert model is None
    assert result["status"] == "fail"
    assert "NaN" in result["error"]


def test_a_network_that_diverges_after_learning_counts_with_its_best_epoch_before(synthetic):
    import keras

    class Diverge(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:  # after two epochs that learned
                self.model.optimizer.learning_rate.assign(1e35)

    model, result = build_and_train({**SMALL_SPACE, "lr_rate_mult": 3.0}, synthetic, epochs=6, callbacks=[Diverge()])
    history = result["history"]
    assert result["status"] == "ok" and result["diverged_at_epoch"] == 3 and result["epochs_trained"] == 3
    assert not math.isfinite(history["loss"][2])  # stopped at the end of the epoch that diverged
    assert result["fine_best_accuracy"] == max(history["val_fine_outputs_accuracy"][:2]) > 0.05
    assert result["fine_best_loss"] == min(history["val_fine_outputs_loss"][:2])
    # Its best epoch's weights, restored, are what the test set measured.
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert result["test_fine_accuracy"] > 0.05


def test_a_diverged_network_stops_at_the_end_of_its_first_nan_epoch():
    import keras

    from pruning import StopOnNaN

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    x = np.ones((64, 4), "float32")
    history = model.fit(x, 1e20 * x[:, :1], batch_size=8, epochs=5, verbose=0, callbacks=[StopOnNaN()]).history
    assert len(history["loss"]) == 1 and not math.isfinite(history["loss"][0])


def test_an_exception_fails_the_trial_without_raising(synthetic):
    model, result = build_and_train({**SMALL_SPACE, "optimizer": "SGD-that-does-not-exist"}, synthetic, epochs=1)
    assert model is None and result["status"] == "fail" and "KeyError" in result["error"]


def test_a_training_that_fails_midway_keeps_the_epochs_it_finished_and_its_line_says_how_far_it_got(synthetic):
    import keras

    from pruning import MONITOR
    from trial import trial_line

    class DeviceLost(keras.callbacks.Callback):  # hours into a trial, the GPU falls off the bus
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("device lost")

    _, result = build_and_train(SMALL_SPACE, synthetic, epochs=4, callbacks=[DeviceLost()])
    assert result["status"] == "fail" and result["error"] == "RuntimeError: device lost"
    curve = result["history"][MONITOR]
    assert result["epochs_trained"] == len(curve) == 2 and len(result["history"]["loss"]) == 2
    assert trial_line({**result, "tid": 7}, None, "validation").startswith(
        f"Trial 7 FAILED after 2 epochs (best {max(curve):.4f}): RuntimeError: device lost (")
    # One that failed before an epoch ended says nothing of epochs.
    _, result = build_and_train({**SMALL_SPACE, "optimizer": "SGD-that-does-not-exist"}, synthetic, epochs=1)
    assert "history" not in result and trial_line({**result, "tid": 8}, None, "validation").startswith("Trial 8 FAILED: ")


def test_a_training_that_fails_mid_pass_leaves_no_thread_feeding_it(synthetic):
    # Keras's threads that gather the batches stop at the end of a pass; one that an error ended kept them, with
    # their queued batches, for the rest of the search: six threads a failed trial.
    import threading

    class DeviceLost(keras.callbacks.Callback):
        def __init__(self, when):
            super().__init__()
            setattr(self, when, self.fail)

        def fail(self, batch, logs=None):
            raise RuntimeError("device lost")

    def ours():  # not TensorFlow's own threads, which Python sees while they run Python code
        return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}

    before = ours()
    for when in ("on_train_batch_end", "on_test_batch_end"):  # in a training pass, in a validation pass
        _, result = build_and_train(SMALL_SPACE, synthetic, epochs=2, callbacks=[DeviceLost(when)])
        assert result["error"] == "RuntimeError: device lost"
        assert not ours() - before, when  # threads of earlier tests may end meanwhile


def test_a_batch_that_fails_while_its_feed_stops_does_not_replace_the_trials_own_error(synthetic, monkeypatch):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetEnqueuer

    class DeviceLost(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("device lost")

    def stop_then_fail(self, drain_queue_and_join=True):  # a batch it waited for had run out of memory
        waits = self.running and drain_queue_and_join
        original(self, drain_queue_and_join)
        if waits:
            raise MemoryError("gathering a batch")

    original = PyDatasetEnqueuer.stop
    monkeypatch.setattr(PyDatasetEnqueuer, "stop", stop_then_fail)
    model, result = build_and_train(SMALL_SPACE, synthetic, epochs=2, callbacks=[DeviceLost()])
    assert model is None and result["error"] == "RuntimeError: device lost"


def test_a_failed_training_step_records_what_went_wrong_not_tensorflows_preamble(synthetic):
    import dataclasses

    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's errors in a compiled step")
    # A head of 50 classes for labels up to 99: the loss's kernel refuses them inside the compiled step.
    assert synthetic.y_train_fine.max() >= 50
    _, result = build_and_train(SMALL_SPACE, dataclasses.replace(synthetic, num_fine=50), epochs=1)
    assert result["status"] == "fail" and "Graph execution error" in result["traceback"]
    assert result["error"].startswith("InvalidArgumentError: Received a label value of ")
    assert "which is outside the valid range of [0, 50)" in result["error"] and "\n" not in result["error"]


def test_a_failed_trial_records_the_settings_a_resume_compares():
    from datasets import load_dataset

    # A search of only failures, selected on the test set, must refuse a resume selecting on validation.
    data = load_dataset("synthetic", synthetic_size=300, select_on="test")
    _, result = build_and_train({**SMALL_SPACE, "optimizer": "SGD-that-does-not-exist"}, data, epochs=1)
    assert (result["status"], result["dataset"], result["selected_on"], result["train_images"]) == ("fail", "synthetic", "test", 300)


@pytest.mark.slow
@pytest.mark.parametrize("precision, compute_dtype", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_a_mixed_precision_trial_learns_keeps_float32_weights_and_restores_the_policy(synthetic, precision, compute_dtype):
    import keras

    # Half SMALL_SPACE's filters: float16 is emulated on most CPUs, 30 s an epoch at its width.
    model, result = build_and_train({**SMALL_SPACE, "conv_hiddn_units_mult": 0.2}, synthetic, epochs=2, precision=precision)
    assert result["status"] == "ok" and result["precision"] == precision
    assert result["fine_best_accuracy"] > 0.05  # chance is 0.01
    assert {w.dtype for w in model.trainable_weights} == {"float32"}
    assert model.get_layer("fine_outputs").compute_dtype == "float32"
    assert next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).compute_dtype == compute_dtype
    # float16's gradients would underflow without loss scaling, which Keras adds for this policy.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    assert keras.config.dtype_policy().name == "float32"


def test_tensorflow_fuses_8_steps_per_call_its_progress_bar_counts_each_jax_runs_one(synthetic, capsys, monkeypatch):
    import keras

    import neural_net

    # 1,800 images at batch 30: 60 steps an epoch, in calls of 8 steps, the last one of 4.
    model, result = build_and_train({**SMALL_SPACE, "batch_size": 30}, synthetic, epochs=1, verbose=1)
    assert result["status"] == "ok" and model.steps_per_execution == 8
    counts = re.findall(r"(\d+)/60\b", capsys.readouterr().out)
    assert counts[-1] == "60" and max(map(int, counts)) == 60, counts  # Keras's own bar ended at 64/60
    # Keras's JAX trainer would only loop over the steps in Python: nothing to fuse.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert neural_net.default_steps_per_execution() == 1


def test_training_batches_are_full_and_each_epoch_leaves_out_other_images():
    from batches import Batches

    x = np.arange(70, dtype=np.uint8).reshape(70, 1, 1, 1)
    train = Batches(x, {"fine_outputs": np.arange(70)}, 32, shuffle=True, seed=0)
    seen = set()
    for _ in range(10):
        assert len(train) == 2
        for index in range(len(train)):
            images, labels = train[index]
            assert len(images) == 32 and (images.ravel() == labels["fine_outputs"]).all()
            seen.update(labels["fine_outputs"].tolist())
        train.on_epoch_end()
    assert seen == set(range(70))
    tiny = Batches(x[:20], {"fine_outputs": np.arange(20)}, 32, shuffle=True)
    assert len(tiny) == 1 and len(tiny[0][0]) == 20
    # Evaluation keeps every image, the last batch smaller.
    val = Batches(x, {"fine_outputs": np.arange(70)}, 32, shuffle=False)
    assert [len(val[i][0]) for i in range(len(val))] == [32, 32, 6]


def test_evaluation_batches_divide_the_splits_evenly_where_a_batch_at_least_half_as_big_does():
    from batches import evaluation_batch_size

    assert evaluation_batch_size(320, 5000, 10000) == 250  # CIFAR's validation and test sets
    assert evaluation_batch_size(700, 5000, 10000) == 625
    assert evaluation_batch_size(100, 10000, 10000) == 100  # --select-on test
    assert evaluation_batch_size(320, 300, 600) == 300
    assert evaluation_batch_size(320, 301, 600) == 320  # only 1 divides both: keep the batch, with remainders


@pytest.mark.slow
def test_on_jax_a_trial_compiles_its_training_and_evaluation_steps_once():
    # JAX compiles a step for every batch shape it meets: a smaller last batch costs one more compile.
    script = """
import keras
from conftest import SMALL_SPACE
from datasets import load_dataset
from neural_net import build_and_train

traces = {"train": 0, "test": 0}
train_step, test_step = keras.Model.train_step, keras.Model.test_step
keras.Model.train_step = lambda self, *args: (traces.update(train=traces["train"] + 1), train_step(self, *args))[1]
keras.Model.test_step = lambda self, *args: (traces.update(test=traces["test"] + 1), test_step(self, *args))[1]
data = load_dataset("synthetic", synthetic_size=1000)
batch = SMALL_SPACE["batch_size"]
assert all(len(x) % batch for x in (data.x_train, data.x_val, data.x_test)), "the test needs partial last batches"
model, result = build_and_train(SMALL_SPACE, data, epochs=2)
assert result["status"] == "ok" and result["keras_backend"] == "jax", result
print("traces", traces["train"], traces["test"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})
    assert done.returncode == 0, done.stderr
    assert "traces 1 1" in done.stdout


# Batch-norm of 12 and 24 channels trains through fast_layers' custom gradient (rows of pixels).
@pytest.mark.slow
@pytest.mark.parametrize("space", [SMALL_SPACE, {**SMALL_SPACE, "use_BN": True, "residual": 1, "conv_hiddn_units_mult": 0.3}],
                         ids=["plain", "batch-norm"])
def test_a_finished_trial_leaves_no_training_graph_behind(synthetic, space):
    # Each surviving graph of a training step holds tens of MB: a long search would run out of memory.
    import gc

    import keras

    def graphs():
        gc.collect()
        return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())

    before = graphs()
    for _ in range(2):
        model, result = build_and_train(space, synthetic, epochs=1)
        assert result["status"] == "ok"
        del model
        keras.backend.clear_session()
    assert graphs() == before
