"""Where a TensorFlow training step's time goes on a CPU: by op type, and each convolution's three kernels.

    python3 bench/bench_tf_ops.py                               # SEED_BEST_SPACE with a search's widths
    python3 bench/bench_tf_ops.py --space demo --variant as-is --steps 16

Trains the network through the same `build_model`, batch feed and `fit` as a search trial, then
runs --steps more steps under TensorFlow's profiler and sums every op's time from its trace.
TensorFlow's executor runs independent ops at once, so the ops' times add up to more than the
wall time; the shares are of their sum. Each convolution has a forward, an input-gradient and a
filter-gradient kernel, which do the same arithmetic: their GFLOP/s say which one is slow.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench_training import SPACES, VARIANTS, conv_flops  # noqa: E402
from cli import ArgumentParser, at_least  # noqa: E402
from batches import Batches  # noqa: E402
from neural_net import build_model, default_steps_per_execution  # noqa: E402
from precision import PRECISIONS, resolve_precision  # noqa: E402

OP_EVENT = re.compile(r"^(?P<name>[^:]+):(?P<type>\w+)$")  # TensorFlow names an op's trace event "name:Type"
CONTAINERS = {"While", "StatelessWhile", "If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"}
CONV_KERNELS = ("forward", "input gradient", "filter gradient")


def conv_kernel(op_type: str) -> str:
    """Which of a convolution's kernels an op type is ("" if none): oneDNN's fused variants included."""
    if "Conv2DBackpropFilter" in op_type:
        return "filter gradient"
    if "Conv2DBackpropInput" in op_type:
        return "input gradient"
    return "forward" if "Conv2D" in op_type else ""


def layer_of(op_name: str, layer_names: set[str]) -> str | None:
    """The Keras layer an op belongs to: TensorFlow scopes a layer's ops as "<layer name>_<call>"."""
    for segment in op_name.split("/"):
        base, _, call = segment.rpartition("_")
        if call.isdigit() and base in layer_names:
            return base
    return None


def profile_fit(model: keras.Model, feed: Batches, logdir: str) -> float:
    """Seconds of one epoch of `fit` under TensorFlow's profiler, its trace written under `logdir`."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    model.fit(feed, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    return seconds


def op_times(logdir: str, layer_names: set[str]) -> tuple[collections.Counter, collections.Counter]:
    """Milliseconds by op type, and by (layer, convolution kernel), summed over the trace's host threads."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trace = xplane_pb2.XSpace()
    trace.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    by_type, by_conv = collections.Counter(), collections.Counter()
    for plane in trace.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                match = OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                if not match or match["type"] in CONTAINERS:
                    continue
                ms = event.duration_ps / 1e9
                by_type[match["type"]] += ms
                if (kernel := conv_kernel(match["type"])) and (layer := layer_of(match["name"], layer_names)):
                    by_conv[(layer, kernel)] += ms
    return by_type, by_conv


def conv_rows(model: keras.Model, by_conv: collections.Counter, steps: int, batch: int) -> list[dict]:
    """Each convolution's shapes, arithmetic and its three kernels' ms a step and GFLOP/s."""
    rows = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        gflop = batch * conv_flops(layer) / 1e9
        row = {"layer": layer.name, "kernel": "x".join(map(str, layer.kernel_size)),
               "input": "x".join(map(str, layer.input.shape[1:])), "filters": layer.filters, "gflop": round(gflop, 2)}
        for kernel in CONV_KERNELS:
            ms = by_conv[(layer.name, kernel)] / steps
            row[kernel] = {"ms": round(ms, 1), "gflop_per_s": round(gflop / ms * 1e3, 1) if ms else None}
        rows.append(row)
    return rows


def print_report(report: dict, top: int) -> None:
    r = report
    print(f"{r['space']} ({r['variant']}), {r['dtype_policy']}, batch {r['batch_size']}: {r['steps']} steps in "
          f"{r['wall_s']:.1f} s, {r['step_ms']:.0f} ms a step ({r['images_per_s']:.1f} images/s); the ops add up to "
          f"{r['op_ms_per_step']:.0f} ms a step")
    print(f"\n{'op type':45} {'ms/step':>9} {'share':>6}")
    for op_type, ms in list(r["op_types"].items())[:top]:
        print(f"{op_type:45} {ms:>9.1f} {100 * ms / r['op_ms_per_step']:>5.1f}%")
    print(f"\n{'convolution':12} {'kernel':6} {'input':>10} {'filters':>7} {'GFLOP':>6}  "
          + "  ".join(f"{kernel + ' ms (GFLOP/s)':>28}" for kernel in CONV_KERNELS))
    for c in r["convolutions"]:
        # The first convolution has no input gradient: the images need none.
        cells = [f"{c[k]['ms']:.1f} ({c[k]['gflop_per_s']:.0f})" if c[k]["ms"] else "-" for k in CONV_KERNELS]
        print(f"{c['layer']:12} {c['kernel']:6} {c['input']:>10} {c['filters']:>7} {c['gflop']:>6.2f}  "
              + "  ".join(f"{cell:>28}" for cell in cells))
    totals = {k: sum(c[k]["ms"] for c in r["convolutions"]) for k in CONV_KERNELS}
    flops = sum(c["gflop"] for c in r["convolutions"])
    print("all convolutions: " + ", ".join(f"{k} {ms:.0f} ms ({flops / ms * 1e3:.0f} GFLOP/s)" for k, ms in totals.items() if ms))


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--space", choices=list(SPACES), default="best", help="the network")
    parser.add_argument("--variant", choices=list(VARIANTS), default="filters-x8",
                        help="a change to the network, as bench_training.py's (filters-x8: the widths a search builds)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as hyperopt_optimize.py's")
    parser.add_argument("--steps", type=at_least(1), default=8, help="training steps profiled, after a warm-up epoch as long")
    parser.add_argument("--top", type=at_least(1), default=15, help="op types to list")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        parser.error("this reads TensorFlow's profiler; for JAX, bench_roofline.py --profile-steps")
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        parser.error("this times the ops that run on the CPU: on a GPU its host trace holds only their launches")

    keras.config.set_dtype_policy(resolve_precision(args.precision))
    space = VARIANTS[args.variant](SPACES[args.space])
    batch = int(space["batch_size"])
    model = build_model(space, steps_per_execution=default_steps_per_execution())
    rng = np.random.default_rng(0)
    n = args.steps * batch
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    feed = Batches(x, {"fine_outputs": rng.integers(0, 100, n), "coarse_outputs": rng.integers(0, 20, n)}, batch, shuffle=True)
    model.fit(feed, epochs=1, verbose=0)  # compiles; the profile is of the steps after
    with tempfile.TemporaryDirectory() as logdir:
        wall = profile_fit(model, feed, logdir)
        by_type, by_conv = op_times(logdir, {layer.name for layer in model.layers})

    op_ms = sum(by_type.values()) / args.steps
    report = {"space": args.space, "variant": args.variant, "dtype_policy": model.dtype_policy.name, "batch_size": batch,
              "steps": args.steps, "wall_s": round(wall, 2), "step_ms": round(1e3 * wall / args.steps, 1),
              "images_per_s": round(n / wall, 1), "op_ms_per_step": round(op_ms, 1),
              "op_types": {t: round(ms / args.steps, 1) for t, ms in by_type.most_common()},
              "convolutions": conv_rows(model, by_conv, args.steps, batch)}
    print_report(report, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
