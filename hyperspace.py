"""The search space: training hyperparameters and CNN architecture, sampled together by TPE; points of it to train first.

Labels and nesting are those of the 2017 project, so its `results.pkl` resumes here.
"""

import math
import os

from hyperopt import hp, space_eval
from hyperopt.pyll import Apply, as_apply, dfs

from utils import load_best_result, load_json_result

# What the multipliers of the space scale, and the optional first convolution's width (2017's values).
STARTING_LR = 0.001
STARTING_L2_REG = 0.0007
FIRST_CONV_FILTERS = 16

space = {
    # Learning rate multiplier, log-scaled because its effect is multiplicative:
    "lr_rate_mult": hp.loguniform("lr_rate_mult", -0.5, 0.5),
    # L2 weight decay multiplier:
    "l2_weight_reg_mult": hp.loguniform("l2_weight_reg_mult", -1.3, 1.3),
    "batch_size": hp.quniform("batch_size", 100, 700, 5),
    "optimizer": hp.choice("optimizer", ["Adam", "Nadam", "RMSprop"]),
    # Weight of the coarse (20 superclasses) head in the total loss:
    "coarse_labels_weight": hp.uniform("coarse_labels_weight", 0.1, 0.7),
    "conv_dropout_drop_proba": hp.uniform("conv_dropout_proba", 0.0, 0.35),
    "fc_dropout_drop_proba": hp.uniform("fc_dropout_proba", 0.0, 0.6),
    # Batch normalisation after every convolution:
    "use_BN": hp.choice("use_BN", [False, True]),
    # An optional first 16-filter convolution before the conv+pool blocks:
    "first_conv": hp.choice("first_conv", [None, hp.choice("first_conv_size", [3, 4])]),
    # Optional residual units stacked in each block, and how many:
    "residual": hp.choice("residual", [None, hp.quniform("residual_units", 1 - 0.499, 4 + 0.499, 1)]),
    "conv_hiddn_units_mult": hp.loguniform("conv_hiddn_units_mult", -0.6, 0.6),
    "nb_conv_pool_layers": hp.choice("nb_conv_pool_layers", [2, 3]),
    # First conv+pool block that gets residual units:
    "conv_pool_res_start_idx": hp.quniform("conv_pool_res_start_idx", 0, 2, 1),
    "pooling_type": hp.choice("pooling_type", ["max", "avg", "all_conv", "inception"]),
    "conv_kernel_size": hp.quniform("conv_kernel_size", 2, 4, 1),
    "res_conv_kernel_size": hp.quniform("res_conv_kernel_size", 2, 4, 1),
    "fc_units_1_mult": hp.loguniform("fc_units_1_mult", -0.6, 0.6),
    "one_more_fc": hp.choice("one_more_fc", [None, hp.loguniform("fc_units_2_mult", -0.6, 0.6)]),
    "activation": hp.choice("activation", ["relu", "elu"]),
    # Not searched: conv filters and hidden units are rounded up to a multiple of this (63 -> 64).
    # GPU tensor cores work in multiples of 8 channels; with 63, cuDNN pads every activation and
    # the H100's step took 1.7x as long. 1 builds the 2017 widths exactly (`--width-multiple 1`).
    "width_multiple": 8,
}

# Same labels, choices and nesting as `space` (so pickles stay interchangeable), but networks
# about a hundred times smaller: for smoke tests and CPU demos (`--space tiny`), never for results.
TINY_SPACE = {
    **space,
    "batch_size": hp.quniform("batch_size", 32, 64, 8),
    "conv_hiddn_units_mult": hp.loguniform("conv_hiddn_units_mult", -2.3, -1.6),
    "fc_units_1_mult": hp.loguniform("fc_units_1_mult", -3.0, -2.3),
    "one_more_fc": hp.choice("one_more_fc", [None, hp.loguniform("fc_units_2_mult", -3.0, -2.3)]),
    "lr_rate_mult": hp.loguniform("lr_rate_mult", 0.5, 1.5),
}

SPACES = {"full": space, "tiny": TINY_SPACE}

# The "quite normal (or a bit more huge)" model that the 2017 project plotted as its demo.
DEMO_SPACE = {
    "lr_rate_mult": 1.0,
    "l2_weight_reg_mult": 1.0,
    "batch_size": 300,
    "optimizer": "Nadam",
    "coarse_labels_weight": 0.2,
    "conv_dropout_drop_proba": 0.175,
    "fc_dropout_drop_proba": 0.3,
    "use_BN": True,
    "first_conv": 4,
    "residual": 4,
    "conv_hiddn_units_mult": 1.0,
    "nb_conv_pool_layers": 3,
    "conv_pool_res_start_idx": 0.0,
    "pooling_type": "inception",
    "conv_kernel_size": 3.0,
    "res_conv_kernel_size": 3.0,
    "fc_units_1_mult": 1.0,
    "one_more_fc": 1.0,
    "activation": "elu",
}

# The best point of the 2017 search: 67.61% fine / 77.31% coarse test accuracy after 100 epochs
# (reference-results/model_0.676100010872_6066e.txt.json).
SEED_BEST_SPACE = {
    "activation": "elu",
    "batch_size": 320.0,
    "coarse_labels_weight": 0.3067103474295116,
    "conv_dropout_drop_proba": 0.25923531175521264,
    "conv_hiddn_units_mult": 1.5958302613876916,
    "conv_kernel_size": 3.0,
    "conv_pool_res_start_idx": 0.0,
    "fc_dropout_drop_proba": 0.4322253354921089,
    "fc_units_1_mult": 1.3083964454436132,
    "first_conv": 3,
    "l2_weight_reg_mult": 0.41206755600055983,
    "lr_rate_mult": 0.6549347353077412,
    "nb_conv_pool_layers": 3,
    "one_more_fc": None,
    "optimizer": "Nadam",
    "pooling_type": "avg",
    "res_conv_kernel_size": 2.0,
    "residual": 3.0,
    "use_BN": True,
}


# Points a search can be told to train first (`--enqueue NAME`).
NAMED_POINTS = {"2017-best": SEED_BEST_SPACE, "demo": DEMO_SPACE}


class NotInSpace(ValueError):
    """A point that the search space cannot sample."""


def point_named(name: str, what: str | None = None) -> dict:
    """A point of NAMED_POINTS, the space of a result JSON file, or that of a results folder's best trial (another
    search's: a pilot on fewer images, say); NotInSpace, naming `what` (default: `name`), if none."""
    what = what or name
    if name in NAMED_POINTS:
        return NAMED_POINTS[name]
    if os.path.isdir(name):
        if (best := load_best_result(name)) is None:
            raise NotInSpace(f"{what}: a results folder without a finished trial")
        name = str(best[0])
    if not os.path.isfile(name):
        raise NotInSpace(f"{what}: neither {', '.join(NAMED_POINTS)}, a result file nor a results folder")
    try:
        point = load_json_result(name).get("space")
    except (OSError, ValueError, AttributeError) as err:
        raise NotInSpace(f"{what}: not a result file of the search ({err})") from None
    if not isinstance(point, dict):
        raise NotInSpace(f"{what}: a result without a network (its space is {point!r})")
    return point


def encode(point: dict, space: dict, what: str = "the point") -> dict[str, list]:
    """hyperopt's encoding of a point of `space`, which `space_eval` decodes: label -> [value], a choice by its index.

    Labels that the point does not use (a branch of a choice it did not take) are [], as in hyperopt's own trials.

    Raises NotInSpace, naming `what`, where the point lacks a hyperparameter or holds a value the space cannot sample.
    """
    vals = unused(space)
    try:
        for key, node in space.items():
            if isinstance(node, Apply):
                if key not in point:
                    raise NotInSpace(f"it has no {key}")
                _encode(node, point[key], key, vals)
    except NotInSpace as err:
        raise NotInSpace(f"{what}: {err}") from None
    return vals


def unused(space: dict) -> dict[str, list]:
    """hyperopt's encoding of a point that uses none of `space`'s hyperparameters: each label, []."""
    return {node.arg["label"].obj: [] for node in dfs(as_apply(space)) if node.name == "hyperopt_param"}


def _encode(node: Apply, value, key: str, vals: dict) -> None:
    if node.name == "float":  # quniform's value, cast
        node = node.pos_args[0]
    if node.name == "switch":  # hp.choice: its index, then what the chosen option holds
        label = node.pos_args[0].arg["label"].obj
        for index, option in enumerate(node.pos_args[1:]):
            if option.name == "literal":
                if option.obj == value and isinstance(option.obj, bool) == isinstance(value, bool):
                    vals[label] = [index]
                    return
            elif value is not None:
                _encode(option, value, key, vals)
                vals[label] = [index]
                return
        raise NotInSpace(f"{key} {value!r} is not one of its choices")
    label, dist = node.arg["label"].obj, node.arg["obj"]
    low, high = dist.arg["low"].obj, dist.arg["high"].obj
    if dist.name == "loguniform":
        low, high = math.exp(low), math.exp(high)
    elif dist.name == "quniform":
        q = dist.arg["q"].obj
        low, high = round(low / q) * q, round(high / q) * q
    elif dist.name != "uniform":
        raise NotImplementedError(f"{key}: {dist.name} hyperparameters cannot be encoded")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low - 1e-9 <= value <= high + 1e-9 \
            or (dist.name == "quniform" and value != round(value / q) * q):
        steps = f" in steps of {q}" if dist.name == "quniform" else ""
        raise NotInSpace(f"{key} {value!r} is not in the space ({low:.4g} to {high:.4g}{steps})")
    vals[label] = [float(value)]


def decode(vals: dict[str, list], space: dict) -> dict:
    """The point of `space` that hyperopt's encoding `vals` stands for (the inverse of `encode`)."""
    return space_eval(space, {label: v[0] for label, v in active(vals).items()})


def active(vals: dict) -> dict:
    """A trial's point in hyperopt's encoding, without the hyperparameters that it does not use."""
    return {label: v for label, v in vals.items() if v}


def width_multiple(point: dict) -> int:
    """What a point's widths are rounded up to a multiple of: its `width_multiple`, or 1 (2017's spaces, exact widths)."""
    return int(point.get("width_multiple", 1))


def rounded_width(units: float, multiple: int = 1) -> int:
    """The 2017 width, int(units), rounded up to a multiple of the space's `width_multiple`."""
    return -(-int(units) // multiple) * multiple


def describe(point: dict, *, coarse_head: bool = True) -> str:
    """One line of the network a point of the space builds and how it trains, for the search's log."""
    multiple = width_multiple(point)
    blocks = int(point["nb_conv_pool_layers"])
    filters = rounded_width(40 * point["conv_hiddn_units_mult"], multiple)
    k = int(round(point["conv_kernel_size"]))
    layers = [] if point["first_conv"] is None else [f"conv{point['first_conv']} {FIRST_CONV_FILTERS}"]
    block = [f"{blocks} blocks of conv{k} {'/'.join(str(filters * 2**b) for b in range(blocks))}"]
    if point["use_BN"]:
        block.append("BN")
    start = int(point["conv_pool_res_start_idx"])
    if point["residual"] is not None and start < blocks:
        units = int(round(point["residual"]))
        first = "" if start == 0 else f" from block {start + 1}"
        block.append(f"{units} residual unit{'s' * (units > 1)} conv{int(round(point['res_conv_kernel_size']))}{first}")
    block.append(f"{point['pooling_type']} pooling")
    layers.append(" + ".join(block))
    fc = [rounded_width(1000 * point["fc_units_1_mult"], multiple)]
    if point["one_more_fc"] is not None:
        fc.append(rounded_width(750 * point["one_more_fc"], multiple))
    layers.append(f"FC {'/'.join(map(str, fc))}")
    return (f"{' > '.join(layers)}; {point['activation']}, {point['optimizer']} lr {STARTING_LR * point['lr_rate_mult']:.2g}, "
            f"L2 {STARTING_L2_REG * point['l2_weight_reg_mult']:.2g}, batch {int(point['batch_size'])}, "
            f"dropout {point['conv_dropout_drop_proba']:.2f} conv, {point['fc_dropout_drop_proba']:.2f} FC"
            + (f", coarse weight {point['coarse_labels_weight']:.2f}" if coarse_head else ""))
