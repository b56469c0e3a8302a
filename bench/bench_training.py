"""Training throughput, memory and FLOP utilisation of the project's networks on CIFAR-shaped data.

    KERAS_BACKEND=jax python3 bench/bench_training.py --precision mixed_bfloat16 --peak-tflops 989

Throughput is the median of several timed epochs after a warm-up epoch (compilation), through
the same `build_model`, batch feeding and `model.fit` path as a search trial: uint8 images
gathered per batch, sparse labels; with --callbacks trial, also with a trial's callbacks and progress log.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precision import backend_version, device_name, tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fast_layers  # noqa: E402
import hyperspace  # noqa: E402
import pruning  # noqa: E402
import trial_backup  # noqa: E402
from cli import ArgumentParser, at_least  # noqa: E402
from batches import Batches  # noqa: E402
from neural_net import build_model, default_steps_per_execution  # noqa: E402
from precision import PRECISIONS, resolve_precision  # noqa: E402

SPACES = {"demo": hyperspace.DEMO_SPACE, "best": hyperspace.SEED_BEST_SPACE,
          # SEED_BEST_SPACE's layers with a fraction of its widths and one residual unit: for the tests.
          "tiny": {**hyperspace.SEED_BEST_SPACE, "conv_hiddn_units_mult": 0.2, "fc_units_1_mult": 0.05, "residual": 1.0},
          # The largest network that a search in the full space trains: every width, count, kernel and the batch at the
          # space's top, batch-norm, and inception pooling, whose three branches hold the most (what a GPU must fit).
          "largest": {**hyperspace.SEED_BEST_SPACE, "first_conv": 4, "residual": 4.0, "nb_conv_pool_layers": 3,
                      "conv_pool_res_start_idx": 0.0, "conv_hiddn_units_mult": math.exp(0.6), "conv_kernel_size": 4.0,
                      "res_conv_kernel_size": 4.0, "use_BN": True, "pooling_type": "inception",
                      "fc_units_1_mult": math.exp(0.6), "one_more_fc": math.exp(0.6), "batch_size": 700.0,
                      "width_multiple": 8}}
CIFAR_IMAGES = 60_000


# Changes to a network, one at a time, to find what its training time goes to. The spaces are
# 2017's, with its exact widths; filters-x8 rounds them as a search does (hyperspace's width_multiple).
# The others change the architecture: diagnostics, never used by a search.
VARIANTS = {
    "as-is": lambda space: space,
    "filters-x8": lambda space: {**space, "width_multiple": 8},
    "no-dropout": lambda space: {**space, "conv_dropout_drop_proba": 0.0, "fc_dropout_drop_proba": 0.0},
    "no-bn": lambda space: {**space, "use_BN": False},
    "no-residual": lambda space: {**space, "residual": None},
    "max-pool": lambda space: {**space, "pooling_type": "max"},
    "relu": lambda space: {**space, "activation": "relu"},
}


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def conv_flops(layer: keras.layers.Conv2D) -> int:
    """Multiply-adds x 2 of one convolution's forward pass, per image."""
    _, h, w, c_out = layer.output.shape
    k_h, k_w = layer.kernel_size
    return 2 * h * w * c_out * k_h * k_w * layer.input.shape[-1]


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers, per image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested network (the 2017 recipe's body)
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            total += conv_flops(layer)
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def device_peak_mb() -> float | None:
    """Peak accelerator memory in MB, where the backend reports it."""
    try:
        if keras.backend.backend() == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 1e6 or None
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1e6
    except Exception:  # noqa: BLE001 -- memory figures are best effort
        return None
    return None


COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                  "/jax/core/compile/backend_compile_duration": "xla_compile_s"}


class CompileTimes:
    """Seconds JAX spends tracing, lowering and compiling (XLA, its autotuning included), from JAX's own events.

    Each kind's seconds are the time its events cover, not their sum: JAX before 0.10 also reports
    a trace nested in another (a jitted function inside a jitted one), whose time the outer one holds.
    """

    def __init__(self):
        self.on_jax = keras.backend.backend() == "jax"
        self.spans = {kind: [] for kind in COMPILE_EVENTS.values()}
        if self.on_jax:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, seconds: float, **_) -> None:
        if event in COMPILE_EVENTS:  # reported as the event ends
            end = time.perf_counter()
            self.spans[COMPILE_EVENTS[event]].append((end - seconds, end))

    def take(self) -> dict:
        """The seconds since the last take (None off JAX)."""
        taken = {kind: round(covered(spans), 2) if self.on_jax else None for kind, spans in self.spans.items()}
        self.spans = {kind: [] for kind in COMPILE_EVENTS.values()}
        return taken


def covered(spans: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reached = 0.0, -math.inf
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return total


COMPILE_TIMES = CompileTimes()


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []
        COMPILE_TIMES.take()  # what compiled before is the model's build, not its steps


def step_callbacks(kind: str) -> list[keras.callbacks.Callback]:
    """A search trial's callbacks less early stopping (the benchmark has no validation), or those with Keras's NaN check, or none.
    The trial's backup is among them; it writes into a temporary folder, and rarely: every minute, every 5 minutes.

    On JAX, a callback with a per-step hook makes Keras wait for every step's logs before it
    dispatches the next step (TensorFlow's trainer always waits, once per `steps_per_execution`
    steps): "per-step-nan" times Keras's TerminateOnNaN, which a trial used until the twelfth session.
    """
    if kind == "none":
        return []
    nan_check = keras.callbacks.TerminateOnNaN() if kind == "per-step-nan" else pruning.StopOnNaN()
    identity = {"tid": 0, "space": {}, "suggested_by": None, "precision": None, "code_version": None}
    folder = tempfile.TemporaryDirectory(prefix="bench_training_")
    backup = trial_backup.TrialBackup(Path(folder.name) / trial_backup.BACKUP_FILE, identity)
    backup.folder = folder  # removed with the callback
    return [nan_check, pruning.MedianStoppingRule([]), backup]


CALLBACK_KINDS = ("none", "trial", "per-step-nan")


def with_keras_layers(model: keras.Model) -> keras.Model:
    """The same network with Keras's own batch-norm and dropout in place of `fast_layers`' (weights not copied)."""
    def clone(layer):
        if isinstance(layer, (fast_layers.BatchNormalization, fast_layers.Dropout)):
            return layer.__class__.__base__.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())
    return keras.models.clone_model(model, clone_function=clone)


def model_2017(space) -> keras.Model:
    """The same network fed as in 2017: float32 input, per-image flip with tf.map_fn, one-hot labels.

    It trains with Keras's own batch-norm and dropout layers, as a port of the 2017 code would.
    """
    import tensorflow as tf

    ours = build_model(space)
    keras_layers = with_keras_layers(ours)
    after_flip = next(layer for layer in keras_layers.layers if isinstance(layer, keras.layers.RandomFlip))
    body = keras.Model(after_flip.output, keras_layers.output)
    inputs = keras.Input((32, 32, 3), dtype="float32")
    flipped = keras.layers.Lambda(lambda batch: tf.map_fn(tf.image.random_flip_left_right, batch))(inputs)
    model = keras.Model(inputs, body(flipped))
    model.compile(optimizer=ours.optimizer.from_config(ours.optimizer.get_config()),
                  loss={"fine_outputs": "categorical_crossentropy", "coarse_outputs": "categorical_crossentropy"},
                  loss_weights={"fine_outputs": 1.0, "coarse_outputs": space["coarse_labels_weight"]},
                  metrics={"fine_outputs": ["accuracy"], "coarse_outputs": ["accuracy"]}, jit_compile=False)
    return model


RECIPES = ("project", "2017")


def recipe_settings(recipe: str, args) -> tuple[str, int]:
    """The precision and steps per call a recipe trains with: 2017 trained in float32 and fused no steps."""
    if recipe == "2017":
        return "float32", 1
    return resolve_precision(args.precision), args.steps_per_execution or default_steps_per_execution()


def bench_space(name, space, x, y, args, callbacks: str = "none", recipe: str = "project") -> dict:
    precision, steps_per_execution = recipe_settings(recipe, args)
    keras.config.set_dtype_policy(precision)  # per model: clear_session() resets it to float32
    batch = args.batch_size or int(space["batch_size"])
    timer = EpochTimer()
    fit_callbacks = [timer, *step_callbacks(callbacks)]
    verbose = 0 if callbacks == "none" else 2  # a search trial logs a line per epoch
    n = args.steps * batch
    with contextlib.redirect_stdout(io.StringIO()):  # the table stays readable
        start = time.perf_counter()  # the build: what a trial pays once before its first epoch
        if recipe == "2017":
            model = model_2017(space)
            build_s = time.perf_counter() - start
            # 2017 fed float32 copies scaled to [-0.5, 0.5] and one-hot labels.
            x32 = x[:n].astype("float32") / 255.0 - 0.5
            y_hot = {"fine_outputs": np.eye(100, dtype="float32")[y[0][:n]], "coarse_outputs": np.eye(20, dtype="float32")[y[1][:n]]}
            model.fit(x32, y_hot, batch_size=batch, epochs=1 + args.windows, verbose=verbose,
                      callbacks=fit_callbacks, shuffle=True)
        else:
            model = build_model(space, steps_per_execution=steps_per_execution,
                                jit_compile={"auto": "auto", "on": True, "off": False}[args.xla])
            build_s = time.perf_counter() - start
            feed = Batches(x[:n], {"fine_outputs": y[0][:n], "coarse_outputs": y[1][:n]}, batch, shuffle=True)
            model.fit(feed, epochs=1 + args.windows, verbose=verbose, callbacks=fit_callbacks)
    window = statistics.median(timer.times[1:])
    images_per_s = n / window
    flops = forward_flops(model)
    achieved = 3 * flops * images_per_s / 1e12  # forward + backward ~ 3x forward
    row = {
        "space": name, "recipe": recipe, "dtype_policy": model.dtype_policy.name, "steps_per_execution": steps_per_execution,
        "params": model.count_params(), "batch_size": batch,
        "images_per_s": round(images_per_s, 1), "build_s": round(build_s, 2), "first_epoch_s": round(timer.times[0], 2),
        "gflops_per_image_fwd": round(flops / 1e9, 3), "achieved_tflops": round(achieved, 3),
        "peak_fraction": round(achieved / args.peak_tflops, 4) if args.peak_tflops else None,
        "device_peak_mb": device_peak_mb(), **COMPILE_TIMES.take(),
    }
    keras.backend.clear_session()
    return row


def data_memory(args) -> dict:
    """Process memory that a CIFAR-100-sized uint8 dataset costs while a model trains on it.

    The model is built and its train and evaluation steps compiled on a small dataset first, so
    what is measured is the dataset: its arrays and whatever feeding it to `fit` adds.
    """
    precision, steps_per_execution = recipe_settings("project", args)
    keras.config.set_dtype_policy(precision)
    space = {**hyperspace.SEED_BEST_SPACE, "conv_hiddn_units_mult": 0.1, "fc_units_1_mult": 0.05, "residual": None}
    model = build_model(space, steps_per_execution=steps_per_execution)

    def fit(n_train: int, n_val: int) -> tuple[int, float]:
        """Train a few steps on a new random dataset; its size and the process memory while it lives."""
        rng = np.random.default_rng(n_train)
        x = rng.integers(0, 256, (n_train + n_val, 32, 32, 3), dtype=np.uint8)
        y = {"fine_outputs": rng.integers(0, 100, len(x)), "coarse_outputs": rng.integers(0, 20, len(x))}
        train = Batches(x[:n_train], {k: v[:n_train] for k, v in y.items()}, 500, shuffle=True)
        val = Batches(x[n_train:], {k: v[n_train:] for k, v in y.items()}, 500, shuffle=False)
        model.fit(train, epochs=1, steps_per_epoch=4, verbose=0, validation_data=val, validation_steps=2)
        return x.nbytes, rss_mb()

    _, base = fit(2_000, 1_000)
    dataset_bytes, during = fit(CIFAR_IMAGES - 10_000, 10_000)
    return {"dataset_images": CIFAR_IMAGES, "dataset_mb": round(dataset_bytes / 1e6, 1),
            "process_mb_above_baseline": round(during - base, 1)}


def print_speedups(rows: list[dict]) -> None:
    """Each network's mean images/s under the project's recipe against the 2017 recipe's, over the rounds."""
    means: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        key = (r["space"], r["variant"], r["callbacks"])
        means.setdefault(key, {}).setdefault(r["recipe"], []).append(r["images_per_s"])
    for (space, variant, kind), by_recipe in means.items():
        if {"project", "2017"} <= set(by_recipe):
            ours, theirs = (statistics.mean(by_recipe[recipe]) for recipe in ("project", "2017"))
            print(f"{space} {variant} ({kind} callbacks): project {ours:.1f} images/s against 2017's {theirs:.1f}, "
                  f"{ours / theirs:.2f}x (mean of {len(by_recipe['project'])} rounds)")


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--spaces", default="demo,best", help=f"comma-separated: {', '.join(SPACES)} (empty: memory only)")
    parser.add_argument("--variants", default="as-is",
                        help=f"comma-separated changes to each network, or all: {', '.join(VARIANTS)}")
    parser.add_argument("--callbacks", default="none",
                        help="comma-separated: none, trial (a search trial's callbacks and progress log), per-step-nan (the same with Keras's per-step TerminateOnNaN)")
    parser.add_argument("--recipe", default="project",
                        help="comma-separated: project, 2017 (float32 data, one-hot labels, tf.map_fn flip, float32, no fused "
                             "steps, Keras's own batch-norm and dropout; TensorFlow only). project,2017: side by side")
    parser.add_argument("--rounds", type=at_least(1), default=1,
                        help="times to run every row; every other round in reverse order, so that the machine's drift hits all rows alike")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as hyperopt_optimize.py's")
    parser.add_argument("--steps", type=at_least(1), default=20, help="training steps per timed epoch")
    parser.add_argument("--windows", type=at_least(1), default=3, help="timed epochs after the warm-up epoch")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: the space's own batch size")
    parser.add_argument("--steps-per-execution", type=at_least(1), default=None, help="default: as a search trains (8 on TensorFlow, 1 on JAX)")
    parser.add_argument("--xla", choices=["auto", "on", "off"], default="auto", help="compiled training step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak, for the utilisation column (H100 SXM dense bf16: 989)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 60,000-image data memory measurement")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    recipes = args.recipe.split(",")
    if unknown := set(recipes) - set(RECIPES):
        parser.error(f"unknown recipes: {', '.join(sorted(unknown))}")
    if "2017" in recipes and keras.backend.backend() != "tensorflow":
        parser.error("--recipe 2017 needs the TensorFlow backend")
    if recipes == ["2017"] and args.precision.startswith("mixed"):
        parser.error("--recipe 2017 trains in float32, as 2017 did")
    spaces = [name for name in args.spaces.split(",") if name]
    if unknown := set(spaces) - set(SPACES):
        parser.error(f"unknown spaces: {', '.join(sorted(unknown))}")
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    callbacks = args.callbacks.split(",")
    if unknown := set(callbacks) - set(CALLBACK_KINDS):
        parser.error(f"unknown callbacks: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(0)
    n = args.steps * max(int(s["batch_size"]) for s in SPACES.values()) if args.batch_size is None else args.steps * args.batch_size
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, n), rng.integers(0, 20, n)

    report = {"backend": keras.backend.backend(), "backend_version": backend_version(), "keras_version": keras.__version__,
              "device": device_name(), "xla": args.xla, "rows": []}
    if not args.skip_memory:
        report["memory"] = data_memory(args)
    rows = [(name, variant, kind, recipe) for name in spaces for variant in variants for kind in callbacks for recipe in recipes]
    for round_ in range(args.rounds):
        for name, variant, kind, recipe in rows if round_ % 2 == 0 else reversed(rows):
            row = bench_space(name, VARIANTS[variant](SPACES[name]), x, y, args, kind, recipe)
            report["rows"].append({**row, "variant": variant, "callbacks": kind, "round": round_ + 1})
            # Progress on stderr (a run of several networks and rounds takes many minutes on a CPU); the table at the end.
            print(f"{name} {variant} ({kind} callbacks), {recipe} recipe, round {round_ + 1} of {args.rounds}: "
                  f"{row['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)

    # Figures mean little apart from their machine and software.
    print(f"Keras {report['keras_version']} on {report['backend']} {report['backend_version']}, XLA {args.xla}, "
          f"{report['device']}")
    print(f"{'space':6} {'variant':11} {'callbacks':12} {'recipe':7} {'precision':14} {'spe':>3} {'round':>5} {'params':>10} "
          f"{'batch':>5} {'img/s':>9} {'fwd GFLOP':>9} {'TFLOP/s':>8} {'of peak':>7} {'dev MB':>8} {'build s':>7} {'1st epoch s':>11} "
          f"{'trace+lower, XLA s':>18}")
    for r in report["rows"]:
        frac = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "-"
        dev = f"{r['device_peak_mb']:.0f}" if r["device_peak_mb"] else "-"
        compile_s = "-" if r["xla_compile_s"] is None else f"{r['trace_s'] + r['lower_s']:.1f}, {r['xla_compile_s']:.1f}"
        print(f"{r['space']:6} {r['variant']:11} {r['callbacks']:12} {r['recipe']:7} {r['dtype_policy']:14} "
              f"{r['steps_per_execution']:>3} {r['round']:>5} {r['params']:>10} {r['batch_size']:>5} {r['images_per_s']:>9.1f} "
              f"{r['gflops_per_image_fwd']:>9.3f} {r['achieved_tflops']:>8.3f} {frac:>7} {dev:>8} {r['build_s']:>7.1f} {r['first_epoch_s']:>11.1f} "
              f"{compile_s:>18}")
    print_speedups(report["rows"])
    if "memory" in report:
        m = report["memory"]
        print(f"data memory: {m['dataset_images']} uint8 images ({m['dataset_mb']} MB) cost the process "
              f"{m['process_mb_above_baseline']} MB above its baseline while training")
    print(f"peak RSS {report['peak_rss_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
