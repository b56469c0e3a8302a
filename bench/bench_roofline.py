"""Roofline of a training step: its FLOPs and memory traffic as XLA compiles it, by layer kind.

    KERAS_BACKEND=jax python3 bench/bench_roofline.py --precision mixed_bfloat16 --peak-tflops 989 --bandwidth-tbs 3.35
    KERAS_BACKEND=jax python3 bench/bench_roofline.py --target-config bench/h100_sxm.txtpb ...   # no GPU needed

XLA compiles the project's own Keras train step (JAX backend) for this machine's device, and its
cost analysis gives the FLOPs and the bytes the step moves. No step can be faster than
FLOPs / peak or bytes / bandwidth, whichever is larger: that is its floor. The step is then
timed on the device as compiled, without `fit` around it, and the bytes of each compiled
operation are credited to the Keras layer it comes from, to show where the traffic is. With
--profile-steps, JAX's profiler also times each kernel on the device (GPU), credited the same way.
"step GiB" is the device memory that XLA assigns the step (`--spaces largest`: what a GPU must hold for the largest
network a search trains).

With --target-config, XLA compiles the step for the GPU that config describes instead (with
`pip install "jax[cuda12]"`; no GPU is needed, nothing runs): the same figures but the step's
time, with the bytes counted kernel by kernel, as such a compile has no cost analysis.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from precision import tensorflow_defaults  # noqa: E402

tensorflow_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bench_training  # noqa: E402
import hyperspace  # noqa: E402
from cli import SEED, ArgumentParser, at_least  # noqa: E402
from neural_net import activations_per_image, build_model  # noqa: E402
from precision import PRECISIONS, resolve_precision  # noqa: E402
from trial import activation_bytes  # noqa: E402

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8}
SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*?)\)(.*)$")
COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$")
# Keras names each layer's scope in the traced step: jvp(conv2d_3), transpose(jvp(dropout)) ...
LAYER = re.compile(r"jvp\(([a-z][a-z0-9_]*?)(?:_\d+)?\)")
FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
# Kernels that only move or convert data: the compiler's layout changes and precision casts.
MOVES = FREE | {"convert", "transpose", "copy", "reshape", "broadcast"}
# Names of cuDNN's and cuBLAS's own kernels, for a kernel the profile does not tie to an HLO instruction.
LIBRARY_KERNEL = re.compile(r"xmma|cudnn|conv|fprop|dgrad|wgrad|implicit_gemm|gemm|cutlass|cublas", re.IGNORECASE)
# A fusion's kernel is named after its HLO instruction, with '.' and '-' made '_'.
KERNEL_NAME = str.maketrans(".-", "__")
# Lines the profiler derives from the kernels (modules, ops, steps): the streams alone hold each kernel once.
DERIVED_LINES = {"XLA Modules", "XLA Ops", "XLA TraceMe", "Steps", "Framework Name Scope", "Framework Ops",
                 "Source code", "TensorFlow Name Scope", "TensorFlow Ops", "Launch Stats"}


def shape_bytes(text: str) -> int:
    """Bytes of every array shape written in `text` (an HLO type, tuples included)."""
    return sum(DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in SHAPE.findall(text))


def _opcode(instruction: str) -> str | None:
    match = INSTRUCTION.match(instruction)
    return match.group(3) if match else None


def kernel_traffic(hlo: str) -> list[tuple[str, int, str]]:
    """(layer kind, bytes read and written, instruction) for each kernel of a compiled HLO module.

    Fusions and library calls count as one kernel each; `call`s (GPU command buffers) are
    followed into. Kernels that only move or cast data are "casts and transposes"; what no layer
    owns (the optimizer, the loss) is "other".
    """
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        if match := COMPUTATION.match(line):
            current = computations[match.group(2)] = []
            entry = match.group(2) if match.group(1) else entry
        elif current is not None and line.startswith("  "):
            current.append(line)

    def named(line: str, depth: int = 0) -> collections.Counter:
        """The layers named in an instruction's metadata, or in its fused computation's."""
        if op_name := re.search(r'op_name="([^"]*)"', line):
            return collections.Counter(LAYER.findall(op_name.group(1))[-1:])
        called = re.search(r"calls=%([\w.\-]+)", line)
        if not called or depth > 2:
            return collections.Counter()
        return sum((named(inner, depth + 1) for inner in computations.get(called.group(1), [])), collections.Counter())

    def owner(line: str) -> str:
        if layers := named(line):
            return layers.most_common(1)[0][0]
        called = re.search(r"calls=%([\w.\-]+)", line)
        opcodes = {_opcode(inner) for inner in computations.get(called.group(1), [])} if called else {_opcode(line)}
        # XLA drops the names of some gradient kernels: a convolution is a conv2d's.
        if "convolution" in opcodes:
            return "conv2d"
        return "casts and transposes" if opcodes <= MOVES else "other"

    sizes, kernels = {}, []

    def walk(name: str) -> None:
        for line in computations.get(name, []):
            if not (match := INSTRUCTION.match(line)):
                continue
            result, kind, op, operands = match.group(1), match.group(2), match.group(3), match.group(4)
            # A library call's result tuple ends with its scratch space: not traffic.
            sizes[result] = shape_bytes(SHAPE.search(kind).group(0) if op == "custom-call" and SHAPE.search(kind) else kind)
            if op in FREE:
                continue
            if op == "call" and (target := re.search(r"to_apply=%([\w.\-]+)", line)):
                walk(target.group(1))
                continue
            moved = sizes[result] + sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))
            kernels.append((owner(line), moved, line.strip()))

    walk(entry)
    return kernels


def totals_by_kind(pairs) -> dict[str, float]:
    """The values of (kind, value) pairs summed per kind, largest first."""
    totals = collections.Counter()
    for kind, value in pairs:
        totals[kind] += value
    return dict(totals.most_common())


def bytes_by_layer_kind(kernels: list[tuple[str, int, str]]) -> dict[str, int]:
    """Bytes each Keras layer kind reads and writes, from `kernel_traffic`'s kernels, largest first."""
    return totals_by_kind((kind, moved) for kind, moved, _ in kernels)


def device_kernel_times(events: list[dict], steps: int) -> list[tuple[str, str, float]]:
    """(kernel, HLO instruction or "", microseconds per step) of each device kernel in a profiler trace, longest first."""
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    lines = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = {pid for pid, name in processes.items() if "/device:" in name}
    streams = {key for key, name in lines.items() if key[0] in devices and name.startswith("Stream")}
    if not streams:
        streams = {key for key, name in lines.items() if key[0] in devices and name not in DERIVED_LINES}
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams:
            times[e["name"], e.get("args", {}).get("hlo_op", "")] += e.get("dur", 0.0)
    return [(name, op, us / steps) for (name, op), us in times.most_common()]


def profile_kernels(compiled, state, data, steps: int, keep_trace: Path | None = None) -> list[tuple[str, str, float]]:
    """Each kernel's device time per step over `steps` steps, read from JAX's profiler (perfetto trace)."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(steps):
            _, state = compiled(state, data)
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        trace = next(Path(trace_dir).rglob("perfetto_trace.json.gz"))
        if keep_trace:
            shutil.copyfile(trace, keep_trace)
        return device_kernel_times(json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"], steps)


def time_by_layer_kind(times: list[tuple[str, str, float]], kernels: list[tuple[str, int, str]]) -> list[dict]:
    """Each profiled kernel with the layer kind and the bytes of its HLO instruction (from `kernel_traffic`), longest first."""
    owners = {}
    for kind, moved, line in kernels:
        name = INSTRUCTION.match(line).group(1)
        owners[name] = owners[name.translate(KERNEL_NAME)] = (kind, moved)
    rows = []
    for kernel, op, us in times:
        kind, moved = owners.get(op) or owners.get(kernel) or owners.get(kernel.translate(KERNEL_NAME)) or (None, None)
        if kind is None:
            kind = "memory copies" if "memcpy" in kernel.lower() or "memset" in kernel.lower() else (
                "conv2d or dense (library kernel)" if LIBRARY_KERNEL.search(kernel) else "unattributed")
        rows.append({"kernel": kernel, "instruction": op, "kind": kind, "us": round(us, 2),
                     "mb": None if moved is None else round(moved / 1e6, 2),
                     "gb_per_s": None if moved is None or not us else round(moved / us / 1e3, 1)})
    return rows


def compile_only_device(target_config: str):
    """A GPU that XLA can compile for without it: the one an XLA GPU target config describes."""
    import jax
    from jax.experimental import topologies

    # The CUDA plugin checks the installed CUDA against a GPU's driver unless told not to.
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    jax.config.update("jax_platforms", "cpu")  # what does run (one step to build the model) runs here
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=target_config)
    except NotImplementedError as error:
        raise SystemExit(f'error: compiling for a GPU without one needs JAX\'s CUDA plugin: pip install "jax[cuda12]" ({error})')
    return topology.devices[0]


def compiled_train_step(space: dict, batch: int, target=None):
    """The model's train step compiled by XLA (for `target`, a compile-only device, if given), its state and one batch."""
    import jax

    model = build_model(space)
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    y = {"fine_outputs": np.arange(batch) % 100, "coarse_outputs": np.arange(batch) % 20}
    # The optimizer's and the metrics' variables, built as `fit` builds them before its first step
    # (Keras's own, private, helper): a step through `fit` would compile the step once more, as
    # long as the compile below (22 s for the tiny space on a 2-core CPU).
    model._symbolic_build(data_batch=(x[:2], {k: v[:2] for k, v in y.items()}))
    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables, model.metrics_variables))
    data = jax.device_put((x, y))
    if target is not None:
        sharding = jax.sharding.SingleDeviceSharding(target)
        state, data = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), (state, data))
    start = time.perf_counter()
    compiled = jax.jit(model.train_step).lower(state, data).compile()
    return model, compiled, state, data, time.perf_counter() - start


def step_flops(model: keras.Model, state, data) -> float:
    """XLA's FLOPs of one train step, from the step as lowered (before optimisation) for the CPU.

    The step before optimisation is the same for any device, and JAX 0.11's GPU client has no cost
    analysis for it (None on an H200).
    """
    import jax

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    state, data = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=cpu), (state, data))
    cost = jax.jit(model.train_step).lower(state, data).cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def step_gib(compiled) -> float:
    """The device memory that the compiled step holds, in GiB: its inputs (weights, optimizer and metric state, a batch),
    its outputs (their new values) and its temporaries (activations kept for the backward pass, workspaces), as XLA
    assigns its buffers; a runtime holds some more around it."""
    memory = compiled.memory_analysis()
    held = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes)
    return round(held / 2**30, 6)


def time_steps(compiled, state, data, steps: int) -> float:
    """Seconds per step of the compiled train step, run back to back on the device."""
    import jax

    for _ in range(2):
        _, state = compiled(state, data)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        _, state = compiled(state, data)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps


def drawn(count: int, seed: int) -> list[tuple[str, dict]]:
    """`count` networks drawn at random from the full space, as a search's first trials are: draw0, draw1, ..."""
    from hyperopt.pyll import stochastic

    rng = np.random.default_rng(seed)
    return [(f"draw{i}", stochastic.sample(hyperspace.SPACES["full"], rng)) for i in range(count)]


def roofline(name: str, space: dict, variant: str, args: argparse.Namespace) -> dict:
    """One network's figures: FLOPs, bytes, floors, the measured step and its traffic by layer kind."""
    keras.config.set_dtype_policy(args.precision)  # per model: clear_session() resets it
    space = bench_training.VARIANTS[variant](space)
    batch = args.batch_size or int(space["batch_size"])
    model, compiled, state, data, compile_s = compiled_train_step(space, batch, args.target)
    hlo = compiled.as_text()
    kernels = kernel_traffic(hlo)
    counted = sum(moved for _, moved, _ in kernels)
    # A compile-only executable has no cost analysis, and a GPU one leaves out the cuDNN and cuBLAS
    # calls (on the H100, 0.10 of 1.35 GFLOP per image): count those steps' bytes kernel by kernel.
    xla_costs = args.target is None and args.device.platform == "cpu"
    if xla_costs:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops, moved = float(cost["flops"]), float(cost["bytes accessed"])
    else:
        flops, moved = step_flops(model, state, data), float(counted)
    row = {"space": name, "variant": variant, "batch_size": batch, "dtype_policy": model.dtype_policy.name,
           "n_params": model.count_params(), "step_gib": step_gib(compiled),
           # What a search counts a network's step to need (trial.step_bytes), to set beside what XLA assigns.
           "activations_gib": round(
               activation_bytes(activations_per_image(model), batch, model.dtype_policy.name) / 2**30, 6),
           "compile_s": round(compile_s, 1), "kernels": len(kernels), "gflop_per_image": round(flops / batch / 1e9, 3),
           "mb_per_image": round(moved / batch / 1e6, 2), "flop_per_byte": round(flops / moved, 1),
           "traffic_counted_of_xla": round(counted / moved, 3) if xla_costs else None}
    if args.target is None:
        step_s = time_steps(compiled, state, data, args.steps)
        row |= {"step_ms": round(1e3 * step_s, 3), "images_per_s": round(batch / step_s, 1),
                "achieved_tflops": round(flops / step_s / 1e12, 3)}
        if args.profile_steps:
            trace = Path(args.hlo_dir, f"{name}-{variant}-{model.dtype_policy.name}.trace.json.gz") if args.hlo_dir else None
            profiled = time_by_layer_kind(profile_kernels(compiled, state, data, args.profile_steps, trace), kernels)
            by_kind = totals_by_kind((k["kind"], k["us"]) for k in profiled)
            busy = sum(by_kind.values())
            row |= {"kernel_ms_per_step": round(busy / 1e3, 3), "kernels_profiled": len(profiled),
                    "time_share": {kind: round(us / busy, 4) for kind, us in by_kind.items()} if busy else {},
                    "top_kernels": profiled[:25]}
    if args.peak_tflops:
        row["compute_floor_ms"] = round(1e3 * flops / (args.peak_tflops * 1e12), 3)
        if "step_ms" in row:
            row["of_peak"] = round(flops / step_s / (args.peak_tflops * 1e12), 4)
    if args.bandwidth_tbs:
        row["memory_floor_ms"] = round(1e3 * moved / (args.bandwidth_tbs * 1e12), 3)
        if "step_ms" in row:
            row["of_bandwidth"] = round(moved / step_s / (args.bandwidth_tbs * 1e12), 4)
    if args.peak_tflops and args.bandwidth_tbs:
        # The most of the peak any step that moves these bytes can reach: the compute floor over the larger floor.
        row["ceiling_of_peak"] = round(min(1.0, flops / args.peak_tflops / (moved / args.bandwidth_tbs)), 4)
    row["traffic_share"] = {kind: round(b / counted, 4) for kind, b in bytes_by_layer_kind(kernels).items()} if counted else {}
    if args.hlo_dir:
        Path(args.hlo_dir, f"{name}-{variant}-{model.dtype_policy.name}.hlo.txt").write_text(hlo)
    keras.backend.clear_session()
    return row


def _cell(row: dict, key: str, percent: bool = False) -> str:
    if row.get(key) is None:
        return "-"
    return f"{100 * row[key]:.1f}%" if percent else f"{row[key]:g}"


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--spaces", default="demo,best", help=f"comma-separated: {', '.join(bench_training.SPACES)}")
    parser.add_argument("--variants", default="as-is",
                        help=f"comma-separated, as in bench_training.py: {', '.join(bench_training.VARIANTS)}, or all")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as hyperopt_optimize.py's")
    parser.add_argument("--draws", type=at_least(0), default=0,
                        help="also this many networks drawn at random from the full space, as a search's first trials "
                             "are")
    parser.add_argument("--seed", type=SEED, default=0, help="of the --draws")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: the space's own batch size")
    parser.add_argument("--steps", type=at_least(1), default=20, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (H100 SXM dense bf16: 989)")
    parser.add_argument("--bandwidth-tbs", type=float, default=None, help="device memory bandwidth in TB/s (H100 SXM: 3.35)")
    parser.add_argument("--target-config", default=None,
                        help="compile for the GPU this XLA target config describes (bench/h100_sxm.txtpb) "
                             "instead of this machine's device; nothing is timed")
    parser.add_argument("--profile-steps", type=at_least(0), default=0,
                        help="also time each kernel over this many steps with JAX's profiler (GPU: CUDA's CUPTI)")
    parser.add_argument("--hlo-dir", default=None,
                        help="also write each compiled step's HLO text (and profiler trace) into this folder")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        parser.error("the roofline reads XLA's compiled step: run it with KERAS_BACKEND=jax")
    spaces = [s for s in args.spaces.split(",") if s]
    if unknown := set(spaces) - set(bench_training.SPACES):
        parser.error(f"unknown spaces: {', '.join(sorted(unknown))}")
    variants = list(bench_training.VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(bench_training.VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.target_config and args.precision == "auto":
        parser.error("--target-config: say which --precision the GPU would train in")
    args.precision = resolve_precision(args.precision)
    if args.target_config:
        if not Path(args.target_config).is_file():
            parser.error(f"--target-config: no such file: {args.target_config}")
        args.target = compile_only_device(Path(args.target_config).read_text())
    else:
        args.target = None
    if args.hlo_dir:
        Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)

    import jax

    device = args.device = args.target or jax.devices()[0]
    networks = [(name, bench_training.SPACES[name]) for name in spaces] + drawn(args.draws, args.seed)
    rows = [roofline(name, space, variant, args) for name, space in networks for variant in variants]
    mode = "compiled for it, not run" if args.target else "compiled and run"
    print(f"device {device.device_kind} ({mode}), precision {args.precision}")
    print(f"{'space':7} {'variant':11} {'batch':>5} {'params':>10} {'step GiB':>8} {'act GiB':>7} {'kernels':>7} "
          f"{'GFLOP/img':>9} "
          f"{'MB/img':>7} {'FLOP/B':>7} {'step ms':>8} {'img/s':>9} {'of peak':>7} {'floor ms (compute/memory)':>26} "
          f"{'ceiling':>7} {'of bandwidth':>12}")
    for r in rows:
        floors = f"{_cell(r, 'compute_floor_ms')} / {_cell(r, 'memory_floor_ms')}"
        print(f"{r['space']:7} {r['variant']:11} {r['batch_size']:>5} {r['n_params']:>10,} {r['step_gib']:>8.2f} "
              f"{r['activations_gib']:>7.2f} "
              f"{r['kernels']:>7} {r['gflop_per_image']:>9.3f} "
              f"{r['mb_per_image']:>7.1f} {r['flop_per_byte']:>7.1f} {_cell(r, 'step_ms'):>8} {_cell(r, 'images_per_s'):>9} "
              f"{_cell(r, 'of_peak', True):>7} {floors:>26} {_cell(r, 'ceiling_of_peak', True):>7} "
              f"{_cell(r, 'of_bandwidth', True):>12}")
    for r in rows:
        shares = ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in r["traffic_share"].items() if share >= 0.005)
        counted = "" if r["traffic_counted_of_xla"] is None else f" ({100 * r['traffic_counted_of_xla']:.0f}% of XLA's bytes counted)"
        print(f"{r['space']} {r['variant']}: memory traffic by layer kind{counted}: {shares}")
        if r.get("kernels_profiled") == 0:
            print(f"{r['space']} {r['variant']}: the profile holds no device kernels (a CPU's has none)")
        elif "time_share" in r:
            shares = ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in r["time_share"].items() if share >= 0.005)
            print(f"{r['space']} {r['variant']}: kernel time {r['kernel_ms_per_step']} ms of the {r['step_ms']} ms step "
                  f"({r['kernels_profiled']} kernels), by layer kind: {shares}")
            print(f"  {'kernel':60} {'layer kind':24} {'us':>8} {'MB':>7} {'GB/s':>7}")
            for k in r["top_kernels"][:12]:
                print(f"  {k['kernel'][:60]:60} {k['kind'][:24]:24} {k['us']:>8.1f} {k['mb'] or '-':>7} {k['gb_per_s'] or '-':>7}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": device.device_kind, "run": args.target is None, "precision": args.precision, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
