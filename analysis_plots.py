"""The analysis's figures: what each hyperparameter did to accuracy, how the search converged, the leaders' epochs, what
accuracy cost, the ranking.

Each function draws one figure from the rows of `analyze_results.load_trials_table`; `plot_all` writes them all as PNGs.
Hyperparameters are drawn by their kind: "category", "log" (log-uniform in the space) or "number".
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display to open
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from analysis_notes import cheapest_for_accuracy  # noqa: E402
from leaderboard import training_seconds  # noqa: E402

# What a trial's network cost, as its result file records it: the axis, and its front in the legend.
COST_LABELS = {"n_params": ("parameters", "no smaller network is more accurate"),
               "train_seconds": ("training time (s: the trial's train_seconds)", "no quicker trial is more accurate")}
LEGEND_ENTRIES = 10  # trials named in the per-epoch plot's legend
ZOOM_FROM = 6  # epochs from which the per-epoch plot adds its last half, zoomed
# How every plot marks a trial that ran its course, and one that was pruned (drawn at its accuracy when stopped).
MARKS = {False: dict(label="trial", marker="o", s=14, color="C0"), True: dict(label="pruned", marker="v", s=20, color="C1")}


def p_text(p: float) -> str:
    """A p- or q-value as the analysis writes it."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def log_ticks(values: list[float]) -> list[float]:
    """Round numbers to mark a log axis over these values: at least three where they allow."""
    low, high = min(values), max(values)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**d for d in decades for m in steps if low <= m * 10.0**d <= high]
        if len(ticks) >= 3:
            break
    return ticks


def on_log_axis(kind: str, values: np.ndarray) -> bool:
    """Whether a hyperparameter's axis is logarithmic: log-uniform in the space, and every value drawn positive."""
    shown = values[~np.isnan(values)]
    return kind == "log" and len(shown) > 0 and shown.min() > 0


def log_axis(ax, which: str, values: np.ndarray) -> list[float]:
    """Make the `which` ("x" or "y") axis of `ax` logarithmic over these values, marked at round numbers; those numbers."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    ticks = log_ticks(list(values[~np.isnan(values)]))
    axis.set_ticks(ticks, [f"{t:g}" for t in ticks])
    axis.set_minor_formatter(ticker.NullFormatter())
    return ticks


def plot_all(rows: list[dict], ranked: list, kinds: dict[str, str], out: Path,
             top: int, split: str) -> list[Path]:
    """Write every PNG into `out`, accuracies labelled as on `split`, of the hyperparameters in `kinds`; return their paths."""
    ok = [r for r in rows if r["fine_accuracy"] is not None]
    figures = {
        "hyperparameters_vs_accuracy.png": hyperparameters_vs_accuracy(ok, kinds, split),
        "scatter_matrix.png": scatter_matrix(ok, {name: kinds[name] for name, *_ in ranked[:4]}, split),
        "convergence.png": convergence(rows, split),
        "top_trials_per_epoch.png": top_trials_per_epoch(ok, top, split),
    }
    if both := [r for r in ok if r["coarse_accuracy"] is not None]:
        figures["fine_vs_coarse.png"] = fine_vs_coarse(both, split)
    # A trial's cost against another's, at least: one alone is no trade-off.
    if fronts := {cost: front for cost in COST_LABELS if len({r[cost] for r in ok if r[cost]}) > 1
                  and (front := cheapest_for_accuracy(ok, cost))}:
        figures["cost_vs_accuracy.png"] = cost_vs_accuracy(ok, fronts, split)
    figures["importance.png"] = importance_ranking(ranked, split)
    written = []
    for name, fig in figures.items():
        if fig.get_layout_engine() is None:  # a figure with a colour bar lays itself out
            fig.tight_layout()
        fig.savefig(out / name, dpi=90, bbox_inches="tight")  # long tick labels push an axis label past the edge
        plt.close(fig)
        written.append(out / name)
    return written


def _levels(ok: list[dict], name: str) -> list[str]:
    """A categorical hyperparameter's labels among the trials, in the order of its axis."""
    return sorted({str(r[name]) for r in ok})


def _positions(ok: list[dict], name: str, kind: str) -> np.ndarray:
    """A hyperparameter's values along an axis: numbers as they are (none as 0; NaN, drawn nowhere, where it shaped
    nothing of the network: analyze_results.as_built), categories by their label's place."""
    if kind == "category":
        levels = _levels(ok, name)
        return np.array([levels.index(str(r[name])) for r in ok], dtype=float)
    return np.array([np.nan if r[name] is None else 0.0 if r[name] == "" else float(r[name]) for r in ok])


def _pruned(rows: list[dict]) -> np.ndarray:
    """Which of these trials were pruned, for MARKS."""
    return np.array([r["pruned"] for r in rows], dtype=bool)


def _trials(ax, x, y, pruned: np.ndarray, colours: np.ndarray | None = None, **style) -> None:
    """Scatter trials, the pruned ones apart (MARKS), or by their shape alone where `colours` colour each point;
    each kind labelled only where there is one, for a legend."""
    for kept in (False, True):
        if (these := pruned == kept).any():
            marks = MARKS[kept] | style
            if colours is not None:
                marks = {key: value for key, value in marks.items() if key != "color"} | {"c": colours[these]}
            ax.scatter(np.asarray(x)[these], np.asarray(y)[these], **marks)


def _whole_numbers(values: np.ndarray) -> bool:
    """Whether an axis shows a few whole numbers (kernel sizes, unit counts), to be marked 2, 3, 4 rather than 2.5."""
    values = values[~np.isnan(values)]  # of networks that it did not shape
    return len(values) > 0 and all(v == int(v) for v in values) and np.ptp(values) <= 10


def hyperparameters_vs_accuracy(ok: list[dict], kinds: dict[str, str], split: str):
    """One panel per hyperparameter: each trial's fine accuracy against its value, coloured by its trial number
    (categories: their medians too)."""
    acc = np.array([r["fine_accuracy"] for r in ok])
    pruned = _pruned(ok)
    # As Optuna's slice plot: where the search went as it learned, TPE's later trials against its first random ones.
    order = np.array([r["trial"] for r in ok])
    when = dict(colours=order, cmap="viridis", norm=plt.Normalize(order.min(), order.max()), alpha=0.8)
    rng = np.random.default_rng(0)
    cols, lines = 5, math.ceil(len(kinds) / 5)
    # One accuracy scale for every panel, those of a residual unit's hyperparameters (fewer trials) too: panels compare.
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.6 * lines), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (name, kind) in zip(axes.flat, kinds.items()):
        x = _positions(ok, name, kind)
        if kind == "category":
            levels = _levels(ok, name)
            _trials(ax, x + rng.uniform(-0.2, 0.2, len(x)), acc, pruned, **when)
            # The median, as the importance table gives it: one network that never learned drags a mean down.
            ax.scatter(range(len(levels)), [np.median(acc[x == i]) for i in range(len(levels))], marker="_", s=600,
                       color="red", label="median")
            ax.set_xticks(range(len(levels)), [level or "none" for level in levels], fontsize=7)
        else:
            _trials(ax, x, acc, pruned, **when)  # a NaN, of a network that it did not shape, is drawn nowhere
            shown = x[~np.isnan(x)]
            if len(shown) < len(x):
                name = f"{name} ({len(shown)} of {len(x)} trials)"
            if on_log_axis(kind, x):
                log_axis(ax, "x", x)
            elif _whole_numbers(shown):
                ax.xaxis.set_major_locator(ticker.MultipleLocator(1))
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{split} fine accuracy", fontsize=8)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(when["norm"], "viridis"), ax=axes, label="trial number", fraction=0.015,
                       pad=0.01)
    bar.ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if pruned.any():  # a pruned trial's accuracy is where it stopped: told apart once, for every panel
        legend = axes[0][0].legend(*axes[0][0].get_legend_handles_labels(), fontsize=6)
        for mark in legend.legend_handles:  # by its shape: the colour says the trial number
            mark.set_array(None)
            mark.set_color("grey")
    return fig


def scatter_matrix(ok: list[dict], chosen: dict[str, str], split: str):
    """Every pair of the chosen hyperparameters (name: kind) and fine accuracy, points coloured by accuracy, as a colour
    bar says; histograms on the diagonal."""
    acc = np.array([r["fine_accuracy"] for r in ok])
    pruned = _pruned(ok)
    columns = [_positions(ok, name, kind) for name, kind in chosen.items()] + [acc]
    labels = [*chosen, f"{split} fine accuracy"]
    # From the tenth percentile up: a network or two that never learned would spread the colours over the gap to them.
    shade = dict(cmap="viridis", norm=plt.Normalize(np.percentile(acc, 10), acc.max()))
    # A category's axis is marked with its labels at their places.
    levels = [_levels(ok, name) if kind == "category" else None for name, kind in chosen.items()] + [None]
    # Trials of one category would hide one another at its place: spread them a little across it, as the slice plot does.
    rng = np.random.default_rng(0)
    jitter = [rng.uniform(-0.2, 0.2, len(ok)) if level else 0.0 for level in levels]
    # On a log axis where the slice plot has one (a learning rate's multiplier, say), where every value is positive.
    logs = [on_log_axis(kind, column) for kind, column in zip(chosen.values(), columns)] + [False]
    k = len(columns)
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k, 2.3 * k), squeeze=False, layout="constrained")
    for i in range(k):
        for j in range(k):
            ax = axes[i][j]
            if i == j:
                shown = columns[i][~np.isnan(columns[i])]
                ax.hist(shown, bins=np.geomspace(shown.min(), shown.max(), 13) if logs[i] else 12)
            else:
                _trials(ax, columns[j] + jitter[j], columns[i] + jitter[i], pruned, colours=acc, s=8, **shade)
                if levels[i]:
                    ax.set_yticks(range(len(levels[i])), [level or "none" for level in levels[i]])
            if logs[j]:
                log_axis(ax, "x", columns[j])
            if logs[i] and i != j:
                log_axis(ax, "y", columns[i])
            if levels[j]:
                ax.set_xticks(range(len(levels[j])), [level or "none" for level in levels[j]])
            elif _whole_numbers(columns[j]):
                ax.xaxis.set_major_locator(ticker.MultipleLocator(1))
            if i != j and not levels[i] and _whole_numbers(columns[i]):
                ax.yaxis.set_major_locator(ticker.MultipleLocator(1))
            if i == k - 1:
                ax.set_xlabel(labels[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=7)
            ax.tick_params(labelsize=6)
    fig.colorbar(matplotlib.cm.ScalarMappable(**shade), ax=axes, label=labels[-1], fraction=0.02, pad=0.01, extend="min")
    return fig


def convergence(rows: list[dict], split: str):
    """The best fine accuracy so far against the trial number, each trial marked (pruned and failed ones apart), and where
    TPE took over from the random draws; beside it, where every trial's training time is known, against the hours of
    training the search had spent by its end."""
    best, curve = -np.inf, []
    for r in rows:
        if r["fine_accuracy"] is not None:
            best = max(best, r["fine_accuracy"])
        curve.append(best if np.isfinite(best) else np.nan)
    seconds = training_seconds(rows)
    # GPU hours, not wall time: trials in parallel add theirs up. Pruned trials show there as the few hours they took.
    axes_x = {"trial": [r["trial"] for r in rows]}
    if seconds is not None:
        axes_x["hours of training (the trials' train_seconds added up)"] = list(np.cumsum(seconds) / 3600)
    fig, axes = plt.subplots(1, len(axes_x), figsize=(7 * len(axes_x), 4), squeeze=False)
    tpe = next((i for i, r in enumerate(rows) if r.get("suggested_by") == "tpe"), None)
    for ax, (label, x) in zip(axes[0], axes_x.items()):
        ax.step(x, curve, where="post", color="black", label="best so far")
        if tpe is not None:  # where TPE's model took over from the random draws
            before = x[tpe] - 0.5 if label == "trial" else x[tpe] - seconds[tpe] / 3600
            ax.axvline(before, color="grey", linestyle=":", label="TPE from here")
        # Each kind of trial marked and in the legend only where the search has one: a "pruned" entry would say it pruned.
        ok = [i for i, r in enumerate(rows) if r["fine_accuracy"] is not None]
        _trials(ax, [x[i] for i in ok], [rows[i]["fine_accuracy"] for i in ok], _pruned([rows[i] for i in ok]))
        if failed := [x[i] for i, r in enumerate(rows) if r["fine_accuracy"] is None]:
            ax.scatter(failed, [0] * len(failed), s=30, marker="x", color="red", label="failed")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{split} fine accuracy")
    axes[0][0].legend()
    return fig


def top_trials_per_epoch(ok: list[dict], top: int, split: str):
    """The per-epoch accuracy of the `top` trials: a fine panel, and a coarse one where they had a coarse head; below
    each, from `ZOOM_FROM` epochs on, its last half with the accuracy axis fit to it, where the leaders part (on the
    whole run's axis the first epochs' rise squeezes them into a sliver)."""
    leaders = sorted(ok, key=lambda r: -r["fine_accuracy"])[:top]
    heads = ["fine", "coarse"] if any(r["coarse_curve"] for r in leaders) else ["fine"]
    longest = max(len(r["fine_curve"]) for r in leaders)
    starts = [1, longest // 2 + 1] if longest >= ZOOM_FROM else [1]
    fig, axes = plt.subplots(len(starts), len(heads), figsize=(5.5 * len(heads), 4 * len(starts)), squeeze=False)
    for row, start in enumerate(starts):
        for ax, head in zip(axes[row], heads):
            for rank, r in enumerate(leaders):
                curve = r[f"{head}_curve"][start - 1:]
                # A trial of one epoch is a point, which a line alone does not draw.
                ax.plot(range(start, start + len(curve)), curve, marker="." if len(curve) == 1 else None,
                        label=f"trial {r['trial']}" if rank < LEGEND_ENTRIES else None)
            ax.set_title(f"{split} {head} accuracy" + (f", epochs {start} to {longest}" if start > 1 else ""))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
    more = len(leaders) > LEGEND_ENTRIES  # a --top of hundreds would make the legend taller than the figure
    axes[0][0].legend(fontsize=6, title=f"best {LEGEND_ENTRIES} of {len(leaders)}" if more else None, title_fontsize=6)
    return fig


def fine_vs_coarse(both: list[dict], split: str):
    """Each trial's coarse accuracy against its fine accuracy."""
    fig, ax = plt.subplots(figsize=(5, 5))
    pruned = _pruned(both)
    _trials(ax, [r["fine_accuracy"] for r in both], [r["coarse_accuracy"] for r in both], pruned)
    ax.set_xlabel(f"{split} fine accuracy")
    ax.set_ylabel(f"{split} coarse accuracy")
    if pruned.any():
        ax.legend()
    return fig


def cost_vs_accuracy(ok: list[dict], fronts: dict[str, list[dict]], split: str):
    """A panel per cost (COST_LABELS) with a front: each trial's fine accuracy against it, on a log axis, and the front
    of the trials that no cheaper one beats (`analysis_notes.cheapest_for_accuracy`), each named by its number."""
    fig, axes = plt.subplots(1, len(fronts), figsize=(6 * len(fronts), 4.5), squeeze=False)
    for ax, (cost, front) in zip(axes[0], fronts.items()):
        shown = [r for r in ok if r[cost]]  # a pruned trial, not on the front, may not have recorded it
        x = np.array([r[cost] for r in shown], dtype=float)
        _trials(ax, x, [r["fine_accuracy"] for r in shown], _pruned(shown))
        axis, line = COST_LABELS[cost]
        ax.step([r[cost] for r in front], [r["fine_accuracy"] for r in front], where="post", color="red",
                label=f"front: {line}")
        for r in front:
            ax.annotate(str(r["trial"]), (r[cost], r["fine_accuracy"]), xytext=(2, 3), textcoords="offset points",
                        fontsize=6, color="red")
        ticks = log_axis(ax, "x", x)
        # 200 k, 1 M rather than 200000, 1e+06; where the costs span too little for two round numbers, the minor ticks too.
        label = ticker.EngFormatter() if cost == "n_params" else ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(label)
        if len(ticks) < 2:
            ax.xaxis.set_minor_formatter(label)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"{split} fine accuracy")
        ax.legend(fontsize=7)
        if cost == "train_seconds" and len(devices := {r.get("device") for r in shown} - {None}) > 1:
            ax.set_title(f"trained on {len(devices)} devices, whose seconds do not compare (trials.csv's device)", fontsize=8)
    return fig


def importance_ranking(ranked: list, split: str):
    """The importance scores (`analyze_results.Importance`) as bars, highest on top, each with its p- and q-value."""
    fig, ax = plt.subplots(figsize=(11, 0.3 * max(len(ranked), 1) + 1))  # wide enough for its names, bars and labels
    ax.barh([f"{i.hyperparameter} ({i.method})" for i in ranked][::-1], [i.score for i in ranked][::-1])
    ax.set_xlim(min([0, *(i.score for i in ranked)]), 1)  # below 0: explained less than chance
    if not ranked:  # as the analysis's output says: too few trials, or nothing that varies
        ax.set_yticks([])
        ax.text(0.5, 0.5, "nothing to rank (see the analysis's output)", transform=ax.transAxes, ha="center", va="center")
    # Beside the frame, in a column, rather than at a bar's end: a long one on a high bar would cross the frame.
    for y, i in enumerate(reversed(ranked)):
        ax.annotate(f"{i.score:.3f}; p {p_text(i.p_value)}, q {p_text(i.q_value)}; {i.tendency}", (1, y),
                    xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"the share of the trials' ranking by {split} fine accuracy it explains beyond chance (adjusted R²)\n"
                  "p: so much by chance; q: p adjusted for testing them all")
    return fig
