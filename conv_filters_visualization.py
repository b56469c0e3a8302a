"""What conv filters respond to: gradient ascent in input space, one image per filter, grids into layers/.

For each chosen layer, images start grey with a little noise (in the model's scaled input range,
[-0.5, 0.5]) and climb the gradient of the filter's mean activation with normalised steps; the
n x n filters that reach the highest activation are saved as one grid, enlarged for viewing:
layers/<layer>_best_filters_<n*n>_(<n>x<n>)_out_of_<N>.png
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import zipfile
from pathlib import Path

from precision import tensorflow_defaults, use_one_gpu

tensorflow_defaults()
# The ascent takes its gradients with tf.GradientTape; a saved .keras model loads on any backend.
os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402

from cli import ArgumentParser, SEED, SignalGuard, at_least, plural, positive, run  # noqa: E402
from utils import check_writable, replacing  # noqa: E402

BATCH = 32  # filters climbed at once
TILE_PIXELS = 128  # the smallest side of one filter's image in the PNGs, by default


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--model", default=None, help="a saved .keras model, or a folder: its newest (default: weights/)")
    parser.add_argument("--layers", default=None, help="regex of layer names; a dense layer climbs each unit, a head each class "
                        "(default: the residual add layers, else the conv layers)")
    parser.add_argument("--steps", type=at_least(1), default=40, help="gradient ascent steps per filter")
    parser.add_argument("--step-size", type=positive, default=0.01, help="size of one normalised step, in input units")
    parser.add_argument("--max-filters", type=at_least(1), default=64, help="filters tried per layer (the first ones)")
    parser.add_argument("--zoom", type=at_least(1, 64), default=None,
                        help="enlarge each pixel to ZOOM x ZOOM, 1 to 64, in the PNGs (default: tiles of at least 128 pixels, 4 for CIFAR)")
    parser.add_argument("--out", default="layers", help="folder for the PNG grids")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed of the starting images")
    args = parser.parse_args(argv)
    if args.layers is not None:
        try:
            re.compile(args.layers)
        except re.error as err:
            parser.error(f"--layers is not a regular expression: {err}")
    return args


def newest_model(folder: str = "weights") -> Path | None:
    # Not the hidden temporary file of a save in progress (or killed): utils.replacing.
    models = sorted((p for p in Path(folder).glob("*.keras") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    return models[-1] if models else None


def climbable_layers(model) -> list:
    """The layers after the model's input scaling, whose images the ascent climbs; none without a Rescaling layer."""
    import keras

    scalings = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.layers.Rescaling)]
    return model.layers[scalings[0] + 1:] if scalings else []


def chosen_layers(layers: list, pattern: str | None) -> list:
    """The layers (climbable_layers) matching `pattern`; by default the residual adds, else the convolutions."""
    import keras

    if pattern:
        return [layer for layer in layers if re.search(pattern, layer.name)]
    adds = [layer for layer in layers if isinstance(layer, keras.layers.Add)]
    return adds or [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]


def feature_model(model, layer):
    """From the scaled float input (after Rescaling) to the layer's output."""
    import keras

    scaled = next(each for each in model.layers if isinstance(each, keras.layers.Rescaling))
    return keras.Model(scaled.output, layer.output)


def ascend(features, filters: list[int], input_shape, steps: int, step_size: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Images maximising each filter's mean activation, and the activation at every step (steps+1 x filters)."""
    import tensorflow as tf

    n = len(filters)
    images = tf.Variable(rng.normal(0.0, 0.02, (n, *input_shape)).astype("float32"))
    one_hot = tf.one_hot(filters, features.output.shape[-1])  # picks filter i for image i

    def activation():
        out = tf.cast(features(images, training=False), tf.float32)
        means = tf.reduce_mean(out, axis=list(range(1, len(out.shape) - 1))) if len(out.shape) > 2 else out
        return tf.reduce_sum(means * one_hot, axis=-1)  # a feature map's mean, or a dense unit's value

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            climbed = activation()
        grads = tape.gradient(climbed, images)
        # Normalise per image, so that every filter climbs at the same pace.
        grads /= tf.sqrt(tf.reduce_mean(tf.square(grads), axis=[1, 2, 3], keepdims=True)) + 1e-8
        images.assign(tf.clip_by_value(images + step_size * grads, -0.5, 0.5))
        return climbed

    trace = [step().numpy() for _ in range(steps)]
    trace.append(activation().numpy())
    return images.numpy(), np.stack(trace)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Back from the model's [-0.5, 0.5] to 0-255, contrast stretched for viewing."""
    low, high = np.percentile(image, 1), np.percentile(image, 99)
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def grid(images: list[np.ndarray], n: int, margin: int = 2) -> np.ndarray:
    h, w, c = images[0].shape
    canvas = np.full((n * h + (n - 1) * margin, n * w + (n - 1) * margin, c), 255, np.uint8)
    for i, image in enumerate(images[: n * n]):
        row, col = divmod(i, n)
        canvas[row * (h + margin): row * (h + margin) + h, col * (w + margin): col * (w + margin) + w] = image
    return canvas


def visualize_layer(model, layer, args, rng) -> tuple[str, np.ndarray]:
    """Climb every chosen filter of one layer: the grid of the best n x n, enlarged, and its file name."""
    from tqdm import tqdm

    features = feature_model(model, layer)
    n_filters = min(features.output.shape[-1], args.max_filters)
    input_shape = tuple(features.input.shape[1:])
    images, scores = [], []
    with tqdm(total=n_filters, desc=layer.name, unit="filter", disable=None) as bar:  # None: only on a terminal
        for start in range(0, n_filters, BATCH):
            chunk = list(range(start, min(start + BATCH, n_filters)))
            climbed, trace = ascend(features, chunk, input_shape, args.steps, args.step_size, rng)
            images.extend(climbed)
            scores.extend(trace[-1])
            bar.update(len(chunk))
    n = math.isqrt(n_filters)
    best = np.argsort(scores)[::-1][: n * n]
    picture = grid([to_uint8(images[i]) for i in best], n)
    if picture.shape[-1] == 1:
        picture = np.repeat(picture, 3, axis=-1)
    zoom = args.zoom or max(1, TILE_PIXELS // max(input_shape[:2]))
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)  # 32-pixel images are too small to look at
    return f"{layer.name}_best_filters_{n * n}_({n}x{n})_out_of_{n_filters}.png", picture


def save_grid(path: Path, picture: np.ndarray) -> None:
    """Write one grid whole or not at all: a kill leaves no torn PNG under its name."""
    import matplotlib.image

    with replacing(path) as tmp:
        matplotlib.image.imsave(tmp, picture, format="png")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model and not Path(args.model).is_dir():
        path, where = Path(args.model), args.model
    else:  # the newest model of a folder: weights/, or the one --model gives
        folder = args.model or "weights"
        path, where = newest_model(folder), os.path.join(folder, "*.keras")
    if path is None or not path.is_file():
        print(f"error: no model to load ({where}); run retrain_best_with_tensorboard.py first or pass --model PATH",
              file=sys.stderr)
        return 2
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        print(f"error: {path} is not a whole .keras model: a .keras file is a zip archive, this one is not "
              "(cut short, or another file)", file=sys.stderr)
        return 2
    if path.suffix not in (".keras", ".h5"):  # Keras would explain its SavedModel layer at length
        print(f"error: {path} is not a saved Keras model: give a .keras file (or a legacy .h5)", file=sys.stderr)
        return 2
    if gpu_line := use_one_gpu():
        print(gpu_line)
    import keras

    import fast_layers  # noqa: F401 -- registers the project's layers, which saved models hold

    try:
        model = keras.saving.load_model(path, compile=False)  # no training here: the optimizer's state can stay
    except Exception as err:  # noqa: BLE001 -- any load failure is a bad file for the user
        print(f"error: cannot load {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 2
    climbable = climbable_layers(model)
    if not climbable:
        print(f"error: {path} has no Rescaling layer after its input: not a network of this project", file=sys.stderr)
        return 2
    layers = chosen_layers(climbable, args.layers)
    if not layers:
        print(f"error: no layer of {path} after its input's scaling matches {args.layers!r}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        check_writable(out)  # before minutes of climbing
    except OSError as err:
        print(f"error: cannot write to {out}/: {err}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    print(f"{path}: {plural(len(layers), 'layer')}: {', '.join(layer.name for layer in layers)}")
    guard = SignalGuard()  # a scheduler's SIGTERM stops it as a Ctrl-C does
    try:
        for layer in layers:
            name, picture = visualize_layer(model, layer, args, rng)
            with guard.saving():  # a signal waits until the grid is written and said to be
                save_grid(out / name, picture)
                print(f"  wrote {out / name}")
            guard.stop_if_signalled()  # one came mid-climb, and TensorFlow swallowed its KeyboardInterrupt
    except KeyboardInterrupt:
        guard.stopping()
        signum = guard.signum or signal.SIGINT
        print(f"\n{signal.Signals(signum).name}: stopped; the grids written above are complete", file=sys.stderr)
        return 128 + signum
    except OSError as err:  # a full disk, a file's name taken by a folder
        print(f"error: cannot write a grid ({err}); the grids written above are complete", file=sys.stderr)
        return 1
    finally:
        guard.restore()
    return 0


if __name__ == "__main__":
    run(main)
