"""The search space: training hyperparameters and CNN architecture, sampled together by TPE.

Labels and nesting are those of the 2017 project, so its `results.pkl` resumes here.
"""

from hyperopt import hp

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
