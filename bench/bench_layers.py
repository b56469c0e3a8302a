"""One layer's training step: Keras's batch-norm and dropout against `fast_layers`', at the networks' shapes.

    python3 bench/bench_layers.py                        # SEED_BEST_SPACE (2017 widths and x8), DEMO_SPACE
    python3 bench/bench_layers.py --precision float32

Builds each network, takes every distinct (layer, input shape, rate) of its batch-norm and dropout
layers at the space's own batch size, and times one such layer's forward and backward pass, in
a tf.function with a weighted sum as the loss around it: the median of --repeats steps after a
warm-up, for Keras's layer and for `fast_layers`' (which differ on TensorFlow only). The loss
costs the same on both sides (15-20 ms at 320x32x32x64 on a 2-core CPU).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402

import fast_layers  # noqa: E402
from bench_training import SPACES, VARIANTS  # noqa: E402
from cli import ArgumentParser, at_least  # noqa: E402
from neural_net import build_model  # noqa: E402
from precision import PRECISIONS, resolve_precision  # noqa: E402

NETWORKS = {"best": ("best", "as-is"), "best-x8": ("best", "filters-x8"), "demo": ("demo", "as-is")}


def layer_shapes(space: dict, batch: int | None = None) -> list[tuple[str, tuple[int, ...], float | None, int]]:
    """The distinct (kind, input shape, dropout rate) of a network's batch-norm and dropout layers, and how many."""
    model = build_model(space, (32, 32, 3), 100, 20)
    batch = batch or int(space["batch_size"])
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization | keras.layers.Dropout):
            kind = "batch-norm" if isinstance(layer, keras.layers.BatchNormalization) else "dropout"
            key = (kind, (batch, *layer.input.shape[1:]), getattr(layer, "rate", None))
            found[key] = found.get(key, 0) + 1
    keras.backend.clear_session()
    return [(*key, count) for key, count in found.items()]


def step_ms(layer: keras.layers.Layer, shape: tuple[int, ...], repeats: int) -> float:
    """Median milliseconds of one forward and backward pass of `layer` on a batch of `shape`."""
    import tensorflow as tf

    layer.build(shape)
    x = tf.Variable(tf.cast(tf.random.normal(shape), layer.compute_dtype))
    weights = tf.random.normal(shape)  # a loss whose gradient is not constant

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x.value(), training=True), tf.float32) * weights)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()[0].numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def make_layer(kind: str, rate: float | None, fast: bool) -> keras.layers.Layer:
    """Keras's or fast_layers' batch-norm or dropout, in the global dtype policy."""
    module = fast_layers if fast else keras.layers
    return module.BatchNormalization() if kind == "batch-norm" else module.Dropout(rate)


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated: {', '.join(NETWORKS)}")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as hyperopt_optimize.py's")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: the space's own batch size")
    parser.add_argument("--repeats", type=at_least(1), default=9, help="timed steps per layer")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    networks = args.networks.split(",")
    if unknown := set(networks) - set(NETWORKS):
        parser.error(f"unknown networks: {', '.join(sorted(unknown))}")
    if keras.backend.backend() != "tensorflow":
        parser.error("fast_layers differ from Keras's layers on the TensorFlow backend only")

    precision = resolve_precision(args.precision)
    print(f"backend tensorflow, precision {precision}, median of {args.repeats} steps, forward and backward")
    print(f"{'network':8} {'layer':10} {'input shape':18} {'rate':>5} {'count':>5} {'Keras ms':>9} {'fast ms':>8} {'speed-up':>8}")
    rows = []
    for network in networks:
        space_name, variant = NETWORKS[network]
        shapes = layer_shapes(VARIANTS[variant](SPACES[space_name]), args.batch_size)
        keras.config.set_dtype_policy(precision)  # after layer_shapes: clear_session() resets it to float32
        for kind, shape, rate, count in shapes:
            keras_ms, fast_ms = (step_ms(make_layer(kind, rate, fast), shape, args.repeats) for fast in (False, True))
            rows.append({"network": network, "layer": kind, "shape": list(shape), "rate": rate, "count": count,
                         "dtype_policy": keras.config.dtype_policy().name,
                         "keras_ms": round(keras_ms, 1), "fast_ms": round(fast_ms, 1)})
            rate_text = "" if rate is None else f"{rate:.2f}"
            print(f"{network:8} {kind:10} {'x'.join(map(str, shape)):18} {rate_text:>5} {count:>5} "
                  f"{keras_ms:9.1f} {fast_ms:8.1f} {keras_ms / fast_ms:7.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"precision": precision, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
