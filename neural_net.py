"""The two-headed CNN built from a point of the hyperspace, and one trial: train, select, test."""

from __future__ import annotations

import contextlib
import gc
import math
import re
import time
import traceback
import uuid

import keras
from hyperopt import STATUS_FAIL, STATUS_OK

import fast_layers
from batches import batches, evaluation_batch_size, stop_feeding
from datasets import Dataset
from hyperspace import FIRST_CONV_FILTERS, STARTING_L2_REG, STARTING_LR, rounded_width, width_multiple
from precision import backend_version, device_name, resolve_precision
from pruning import MONITOR, Progress, trial_callbacks
from utils import best_epoch

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Each trial's new model traces its steps anew. TensorFlow counts those traces across trials,
    # by the step function's code, as retraces of one function, and after a few short trials warns
    # of "excessive retracing" where nothing retraces within a trial.
    tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())

OPTIMIZERS = {"Adam": keras.optimizers.Adam, "Nadam": keras.optimizers.Nadam, "RMSprop": keras.optimizers.RMSprop}


def _keras_settings() -> None:
    """Keras's settings that the networks assume, whatever ~/.keras/keras.json says."""
    # Images are height x width x channels, which each layer reads from Keras's setting as it is
    # made: a keras.json of channels_first would have them read rows as channels. Its floatx too:
    # --precision's policy sets the layers' dtypes, but the losses and metrics add up in floatx,
    # and float16 there failed every training step; and where no policy is set, Keras's is floatx.
    keras.config.set_image_data_format("channels_last")
    keras.config.set_floatx("float32")


def build_model(
    space: dict,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_fine: int = 100,
    num_coarse: int | None = 20,
    *,
    horizontal_flip: bool = True,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """A compiled Keras model built by the 2017 rules from one point of the hyperspace.

    Widths are rounded up to the space's `width_multiple` (absent, as in 2017's spaces: 1).
    """
    _keras_settings()
    net = _Builder(space)
    inputs = keras.Input(input_shape, dtype="uint8", name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, offset=-0.5)(inputs)
    if horizontal_flip:
        x = keras.layers.RandomFlip("horizontal")(x)  # active while training only

    if space["first_conv"] is not None:
        x = net.conv(x, FIRST_CONV_FILTERS, int(space["first_conv"]))

    n_filters = net.width(40 * space["conv_hiddn_units_mult"])
    for block in range(int(space["nb_conv_pool_layers"])):
        x = net.conv(x, n_filters)
        if space["use_BN"]:
            x = fast_layers.BatchNormalization()(x)
        if space["residual"] is not None and block >= int(space["conv_pool_res_start_idx"]):
            x = net.residual_units(x, n_filters)
        x = net.pooling(x, n_filters)
        x = fast_layers.Dropout(space["conv_dropout_drop_proba"])(x)
        n_filters *= 2

    x = keras.layers.Flatten()(x)
    x = net.dense(x, net.width(1000 * space["fc_units_1_mult"]))
    x = fast_layers.Dropout(space["fc_dropout_drop_proba"])(x)
    if space["one_more_fc"] is not None:
        x = net.dense(x, net.width(750 * space["one_more_fc"]))
        x = fast_layers.Dropout(space["fc_dropout_drop_proba"])(x)

    # Heads in float32 so that softmax and the loss stay accurate under mixed precision.
    outputs = {"fine_outputs": net.dense(x, num_fine, "softmax", name="fine_outputs", dtype="float32")}
    losses = {"fine_outputs": "sparse_categorical_crossentropy"}
    weights = {"fine_outputs": 1.0}
    if num_coarse:
        outputs["coarse_outputs"] = net.dense(x, num_coarse, "softmax", name="coarse_outputs", dtype="float32")
        losses["coarse_outputs"] = "sparse_categorical_crossentropy"
        weights["coarse_outputs"] = float(space["coarse_labels_weight"])

    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=OPTIMIZERS[space["optimizer"]](learning_rate=STARTING_LR * space["lr_rate_mult"]),
        loss=losses,
        loss_weights=weights,
        metrics=_metrics(outputs),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def _metrics(outputs: dict) -> dict:
    """Accuracy per head, logged as `<head>_accuracy` (and `<head>_loss`) with one head or two."""
    if len(outputs) > 1:
        return {name: ["accuracy"] for name in outputs}
    # With a single output Keras drops the output name from the logs: name the metrics ourselves.
    return {name: [keras.metrics.SparseCategoricalAccuracy(name=f"{name}_accuracy"),
                   keras.metrics.SparseCategoricalCrossentropy(name=f"{name}_loss")] for name in outputs}


class _Builder:
    """Layer factories that share the space's activation, kernel size and L2 penalty."""

    def __init__(self, space: dict):
        self.space = space
        self.activation = space["activation"]
        self.l2 = STARTING_L2_REG * space["l2_weight_reg_mult"]
        self.multiple = width_multiple(space)

    def width(self, units: float) -> int:
        return rounded_width(units, self.multiple)

    def conv(self, x, filters, kernel_size=None, strides=1, activation=None):
        k = int(round(self.space["conv_kernel_size"])) if kernel_size is None else kernel_size
        return keras.layers.Conv2D(
            filters, k, strides=strides, padding="same",
            activation=self.activation if activation is None else activation,
            kernel_initializer=fast_layers.GlorotUniform(), kernel_regularizer=keras.regularizers.L2(self.l2),
        )(x)

    def dense(self, x, units, activation=None, **kwargs):
        return keras.layers.Dense(
            units, activation=self.activation if activation is None else activation,
            kernel_initializer=fast_layers.GlorotUniform(), kernel_regularizer=keras.regularizers.L2(self.l2), **kwargs,
        )(x)

    def residual_units(self, x, n_filters):
        """Units of: linear 1x1 shortcut + (dropout -> conv), added; batch-normalised once each."""
        use_bn = self.space["use_BN"]
        for _ in range(int(round(self.space["residual"]))):
            shortcut = self.conv(x, n_filters, 1, activation="linear")
            branch = fast_layers.Dropout(self.space["conv_dropout_drop_proba"])(x)
            branch = self.conv(branch, n_filters, int(round(self.space["res_conv_kernel_size"])))
            x = keras.layers.add([shortcut, branch])
            if use_bn:
                x = fast_layers.BatchNormalization()(x)
        # Without use_BN, 2017 still normalised each residual stack: once here (it did it twice).
        return x if use_bn else fast_layers.BatchNormalization()(x)

    def pooling(self, x, n_filters):
        kind = self.space["pooling_type"]
        if kind == "all_conv":
            return self.strided_conv(x, n_filters)
        if kind == "inception":
            return self.inception_reduction(x, n_filters)
        # Padded, as the strided convolutions are: every pooling type halves H and W rounding up,
        # so that images of any size, down to 1x1, pass every depth (2017's "valid" cut 7 to 3, 1 to 0).
        if kind == "avg":
            return keras.layers.AveragePooling2D(2, padding="same")(x)
        return keras.layers.MaxPooling2D(2, padding="same")(x)

    def strided_conv(self, x, n_filters):
        """Pooling by a linear stride-2 3x3 convolution (https://arxiv.org/abs/1412.6806)."""
        x = self.conv(x, n_filters, 3, strides=2, activation="linear")
        return fast_layers.BatchNormalization()(x) if self.space["use_BN"] else x

    def inception_reduction(self, x, n_filters):
        """Three-branch reduction loosely after Inception-v4 (https://arxiv.org/abs/1602.07261)."""
        # Branch widths stay 2017's: rounded up (17 -> 24 of 40 filters), they made an H100's step slower.
        n_a, n_b = int(n_filters * 0.33 + 1), int(n_filters * 0.4 + 1)
        branch1 = self.strided_conv(x, n_b)
        branch2 = self.conv(x, n_a, 1)
        branch2 = self.conv(branch2, n_b, 3)
        branch2 = self.strided_conv(branch2, n_b)
        branch3 = self.conv(x, n_b, 1)
        branch3 = keras.layers.MaxPooling2D(3, strides=2, padding="same")(branch3)
        return keras.layers.concatenate([branch1, branch2, branch3])


def activations_per_image(model: keras.Model) -> int:
    """The values that every layer's outputs hold for one image: times the batch, what a training step keeps for its
    backward pass (for networks whose step holds over 1 GiB, 0.7 to 1.1 times what XLA's compile for an H100 assigns
    the whole step, bench/README.md)."""
    return sum(math.prod(output.shape[1:]) for layer in model.layers for output in keras.tree.flatten(layer.output))


def default_steps_per_execution() -> int:
    """Training steps per compiled call: 8 on TensorFlow, 1 on other backends.

    TensorFlow runs the 8 steps as one graph call, fewer host round trips (+5% on a CPU). Keras's
    JAX trainer only calls its one-step function 8 times in a Python loop, so nothing is fused,
    and on an H100 it measured 12% slower than one step per call.
    """
    return 8 if keras.backend.backend() == "tensorflow" else 1


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar (`verbose=1`), counting an epoch's last call of several steps as the steps it ran.

    Keras counts every call as `steps_per_execution` steps: an epoch of 10 steps at 8 a call ended
    at "16/10", with a negative time left (keras-team/keras#20861).
    """

    async_safe = True  # as Keras's own progress bar, which it dispatches asynchronously

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        super().on_train_batch_end(min(batch, self.target - 1) if self.target else batch, logs)


def build_and_train(
    space: dict,
    data: Dataset,
    *,
    epochs: int,
    callbacks=(),
    patience: int | None = None,
    verbose: int = 0,
    precision: str = "auto",
    seed: int | None = None,
    before: Progress | None = None,
) -> tuple[keras.Model | None, dict]:
    """Train one network; return it (best epoch's weights) and its result dict, or (None, failure).

    `before`, with a `callbacks` entry that restores the interrupted training's state (trial_backup.TrialBackup),
    continues that training: the result covers its epochs and seconds too.
    """
    start = time.time()
    model = train = validation = test = None
    size = {}  # the network's, once built: a failure records it too
    precision = resolve_precision(precision)
    _keras_settings()  # before Keras's policy is read: unset, it is floatx's, which it would then keep
    previous_policy = keras.config.dtype_policy()
    try:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        keras.config.set_dtype_policy(precision)
        batch_size = int(space["batch_size"])
        # A resumed training goes on in the order of its epochs as an unbroken one would.
        done = len(before.history.get(MONITOR, [])) if before else 0
        train = batches(data, "train", batch_size, seed, first_epoch=done)
        evaluation = evaluation_batch_size(batch_size, len(data.x_val), len(data.x_test))
        model = build_model(
            space, data.input_shape, data.num_fine, data.num_coarse,
            horizontal_flip=data.horizontal_flip,
            steps_per_execution=min(default_steps_per_execution(), len(train)),
        )
        size = {"n_params": model.count_params(), "activations_per_image": activations_per_image(model)}
        validation = batches(data, "val", evaluation)
        with _unregistering_custom_gradients():
            history = model.fit(
                train, epochs=epochs, verbose=verbose,
                # The batches shuffle themselves, by the seed and the epoch: Keras would also shuffle their order, from
                # Python's global random state, which a resumed training does not share with the one it goes on from.
                shuffle=False,
                validation_data=validation,
                callbacks=trial_callbacks(epochs, patience, callbacks, before) + ([ProgressBar()] if verbose == 1 else []),
            ).history
        history = _with_earlier_epochs(history, before)
        diverged = next((i + 1 for i, v in enumerate(history.get("loss", [])) if not math.isfinite(v)), None)
        # A network that diverges after learning counts with its best epoch before, whose weights
        # early stopping restored: hours of a long trial are not thrown away, and TPE learns from them.
        if diverged is not None and diverged <= 1 + history[MONITOR].index(max(history[MONITOR])):
            raise FloatingPointError(f"loss is NaN or infinite at epoch {diverged}")
        test = batches(data, "test", evaluation)
        scores = model.evaluate(test, verbose=0, return_dict=True)
        result = _result(space, data, history, scores, callbacks) | size | {"diverged_at_epoch": diverged}
    except Exception as err:  # noqa: BLE001 -- a trial must never crash the search
        # The epochs it finished, as Keras's History callback holds them: how far it got before it failed.
        history = _with_earlier_epochs(getattr(getattr(model, "history", None), "history", None) or {}, before)
        del model
        model = None
        result = failure(space, data, err, history) | size
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if model is None:
            stop_feeding(train, validation, test)
            keras.backend.clear_session()
            gc.collect()
    result["train_seconds"] = round(time.time() - start + (before.seconds if before else 0.0), 2)
    result["max_epochs"] = epochs
    result |= {"keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
               "backend_version": backend_version(), "device": device_name(),
               "precision": precision}
    return model, result


@contextlib.contextmanager
def _unregistering_custom_gradients():
    """Forget the gradient functions that TensorFlow registers while the block traces training steps.

    Each traced step registers one (tf.distribute's all_reduce is a custom gradient) in a global
    registry that nothing clears, and it holds on to the step's whole graph: about 52 MB a trial
    that clear_session() cannot free, tens of GB over a long search. The registry is private to
    TensorFlow; where it is not found, this does nothing.
    """
    registry = None
    if keras.backend.backend() == "tensorflow":
        from tensorflow.python.framework import ops

        registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    before = set(registry) if isinstance(registry, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for name in [n for n in registry if n not in before and n.startswith("CustomGradient-")]:
                del registry[name]


def _result(space, data, history, test, callbacks) -> dict:
    fine_acc = history[MONITOR]
    best_fine = max(fine_acc)
    has_coarse = data.has_coarse

    def column(name):
        return history.get(name) if has_coarse else None

    coarse_acc, coarse_loss = column("val_coarse_outputs_accuracy"), column("val_coarse_outputs_loss")
    return {
        "loss": -best_fine,
        "real_loss": history["val_loss"][-1],
        "fine_best_accuracy": best_fine,
        "fine_best_loss": _finite_min(history["val_fine_outputs_loss"]),
        "fine_end_accuracy": fine_acc[-1],
        "fine_end_loss": history["val_fine_outputs_loss"][-1],
        "coarse_best_accuracy": max(coarse_acc) if has_coarse else None,
        "coarse_best_loss": _finite_min(coarse_loss) if has_coarse else None,
        "coarse_end_accuracy": coarse_acc[-1] if has_coarse else None,
        "coarse_end_loss": coarse_loss[-1] if has_coarse else None,
        "test_fine_accuracy": float(test["fine_outputs_accuracy"]),
        "test_coarse_accuracy": float(test["coarse_outputs_accuracy"]) if has_coarse else None,
        "model_name": f"model_{best_fine}_{uuid.uuid4().hex[:5]}",
        "space": space,
        "history": history,
        "status": STATUS_OK,
        "epochs_trained": len(fine_acc),
        "best_epoch": best_epoch(fine_acc),  # whose weights the model keeps
        "pruned": any(getattr(cb, "pruned", False) for cb in callbacks),
        "dataset": data.name,
        **({"dataset_digest": data.digest} if data.digest else {}),  # a .npz's images and labels, which a resume compares
        "train_images": len(data.x_train),
        # What each accuracy is a fraction of, which says how closely it is measured.
        "val_images": len(data.x_val),
        "test_images": len(data.x_test),
        "selected_on": data.selects_on,
        "tid": None,
    }


def _with_earlier_epochs(history: dict, before: Progress | None) -> dict[str, list[float]]:
    """A training's history, after that of the training it resumed (`before`), as floats."""
    earlier = before.history if before else {}
    return {key: earlier.get(key, []) + [float(v) for v in history.get(key, [])] for key in earlier | history}


def _finite_min(values: list[float]) -> float | None:
    """The smallest finite value (a diverged epoch's NaN loss is none), or None."""
    return min((v for v in values if math.isfinite(v)), default=None)


# The lines of TensorFlow's "Graph execution error:" that say where, not what: the failing node, its stack, a count.
GRAPH_ERROR_FRAME = re.compile(r'Detected at node |<stack traces unavailable>|File "|\[\[|\d+ root error\(s\) found\.')


def error_line(err: BaseException) -> str:
    """The error in one line: its type and the line of its message that says what went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines[:1] == ["Graph execution error:"]:
        # TensorFlow's error in a compiled step: where the failing node was defined comes first, what went wrong
        # (an out-of-memory, a label out of range) after it, for each root error if there are several.
        said = [line for line in lines[1:] if not GRAPH_ERROR_FRAME.match(line)]
        lines = [re.sub(r"^\(\d+\) ", "", said[0])] if said else lines
    return f"{type(err).__name__}: {' '.join(lines[0].split()) if lines else ''}".rstrip(": ")


def failure(space: dict, data: Dataset | None, err: BaseException, history: dict | None = None) -> dict:
    """The result of a trial that could not train, with the epochs it finished (`history`): never a candidate for best."""
    finished = {"history": history, "epochs_trained": len(history[MONITOR])} if history and history.get(MONITOR) else {}
    return finished | {
        "status": STATUS_FAIL,
        "error": error_line(err),
        # Its own, where it was raised: none for an error made to record a failure (trial.ProcessDied).
        "traceback": "".join(traceback.format_exception(err)) if err.__traceback__ else None,
        "space": space,
        "model_name": f"model_failed_{uuid.uuid4().hex[:5]}",
        "dataset": None if data is None else data.name,
        **({"dataset_digest": data.digest} if data is not None and data.digest else {}),
        "train_images": None if data is None else len(data.x_train),
        "selected_on": None if data is None else data.selects_on,
        "pruned": False,
        "tid": None,
    }
