"""The paper's figures from saved runs (PNG, matplotlib's object API with the Agg canvas: no pyplot state).

Each ``*_figure`` function takes run groups (see :func:`mimmo.report.runs.group_runs`), writes one PNG and
returns its path, or returns None when the groups hold nothing to plot. :func:`make_figures` makes every
figure the given runs support. A method has the same colour and marker in every figure
(:mod:`mimmo.report.style`); several groups of one method in a figure (other M, other settings) differ in line
style and are named in the legend or next to their point.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter
from matplotlib.transforms import offset_copy

from mimmo.data.shifts import SHIFTS, set_name
from mimmo.report.runs import Run, RunGroup, group_runs, mean_std
from mimmo.report.style import display_name, method_colour, method_marker, method_rank, tabulated_by_members
from mimmo.report.tables import (
    SETTING_NAMES,
    build_tables,
    context_slug,
    format_setting,
)

METRICS = (("accuracy", "Accuracy"), ("nll", "NLL [nats]"), ("ece", "ECE"), ("brier", "Brier"))
MEMBER_COLOURS = {1: "tab:grey", 2: "tab:red", 4: "tab:green", 8: "tab:blue"}  # as the paper's Fig. 5/6
MARKERS = ("o", "s", "v", "^", "D", "*", "X", "P", "h", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")
# What the level of each shift is, for the shifted-data figure's x-axes.
SHIFT_LEVELS = {"translate": "shift [fraction of the image size]", "rotate": "angle [°]",
                "brightness": "brightness factor f (x·f)", "contrast": "contrast factor f",
                "pixelate": "resolution factor f"}
DPI = 120


def _label(group: RunGroup) -> str:
    """A label unique across tables: the display name, M for ensemble-size methods, the ablation settings."""
    extras = [f"M={group.num_members}"] if tabulated_by_members(group.method) else []
    extras += [f"{SETTING_NAMES.get(k, k)}={format_setting(v)}" for k, v in group.variant]
    return f"{display_name(group.method)} ({', '.join(extras)})" if extras else display_name(group.method)


def _linestyles(groups: Sequence[RunGroup]) -> list[str]:
    """Per group: solid for a method's first group in the figure, then dashed, dotted, ... for its others
    (the colour and marker say the method)."""
    seen: dict[str, int] = {}
    styles = []
    for group in groups:
        styles.append(LINESTYLES[seen.get(group.method, 0) % len(LINESTYLES)])
        seen[group.method] = seen.get(group.method, 0) + 1
    return styles


def _exit_colours(num_exits: int) -> list[Any]:
    """Exits from shallow (dark) to deep (light), apart from the method palette."""
    cmap = colormaps["viridis"]
    return [cmap(i / max(1, num_exits - 1) * 0.9) for i in range(num_exits)]


def _member_colours(num_members: int) -> list[Any]:
    cmap = colormaps["Dark2"]
    return [cmap(m % 8) for m in range(num_members)]


def sort_groups(groups: Sequence[RunGroup]) -> list[RunGroup]:
    """The paper's method order, then dataset, M and the ablation settings."""
    return sorted(groups, key=lambda g: (method_rank(g.method), g.dataset, g.num_members,
                                         tuple(format_setting(v) for _, v in g.variant)))


def _member_colour(num_members: int) -> Any:
    return MEMBER_COLOURS.get(num_members, f"C{(num_members + 3) % 10}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _group_slug(group: RunGroup) -> str:
    variant = "_".join(f"{k.split('.')[-1]}={v}" for k, v in group.variant)
    name = _slug(f"{group.dataset}_{group.method}_M{group.num_members}" + (f"_{variant}" if variant else ""))
    return f"{name}_{context_slug(group.context)}" if group.context else name


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _grid(count: int, max_columns: int = 4, size: tuple[float, float] = (3.2, 3.0)) -> tuple[Figure, list]:
    columns = min(count, max_columns)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def _metric_value(run: Run, block: str, key: str) -> Any:
    return run.get("test", key) if block == "test" else run.get("shifted", "summary", key, "mean")


# --- reliability -----------------------------------------------------------------------------------------

def pooled_reliability(group: RunGroup) -> dict[str, np.ndarray] | None:
    """The reliability bins of every seed pooled (counts summed, means weighted by counts)."""
    bins = [run.get("test", "reliability") for run in group.runs]
    bins = [b for b in bins if b and b.get("count")]
    if not bins:
        return None
    count = np.sum([np.asarray(b["count"], dtype=float) for b in bins], axis=0)
    safe = np.maximum(count, 1.0)
    confidence = np.sum([np.asarray(b["confidence"]) * np.asarray(b["count"]) for b in bins], axis=0) / safe
    accuracy = np.sum([np.asarray(b["accuracy"]) * np.asarray(b["count"]) for b in bins], axis=0) / safe
    edges = np.asarray(bins[0].get("edges") or np.linspace(0.0, 1.0, len(count) + 1))
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def reliability_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """A reliability diagram per method: accuracy per confidence bin against the diagonal."""
    pooled = [(g, pooled_reliability(g)) for g in groups]
    pooled = [(g, p) for g, p in pooled if p is not None]
    if not pooled:
        return None
    figure, axes = _grid(len(pooled), max_columns=5, size=(2.8, 2.8))
    for ax, (group, bins) in zip(axes, pooled, strict=True):
        edges, filled = bins["edges"], bins["count"] > 0
        centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centres[filled], bins["accuracy"][filled], width=widths[filled],
               color=method_colour(group.method), edgecolor="black", linewidth=0.5, label="accuracy")
        ax.bar(centres[filled], bins["confidence"][filled] - bins["accuracy"][filled],
               bottom=bins["accuracy"][filled], width=widths[filled], color="lightgrey", alpha=0.7,
               edgecolor="dimgrey", hatch="///", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ece, _ = group.metric("test", "ece")
        ax.set_title(f"{_label(group)}\nECE {ece:.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    return _save(figure, path)


# --- exit weights ----------------------------------------------------------------------------------------

def _mean_array(arrays: list[Any]) -> np.ndarray | None:
    arrays = [np.asarray(a, dtype=float) for a in arrays if a is not None]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        return np.asarray(arrays[0], dtype=float) if arrays else None
    return np.mean(arrays, axis=0)


def prior_table(group: RunGroup, num_exits: int, num_members: int) -> np.ndarray:
    """The prior gamma (D, M) of a group's runs: ``method.prior`` of its config, uniform 1/D where unset."""
    prior = group.setting("method.prior")
    if prior is None:
        return np.full((num_exits, num_members), 1.0 / num_exits)
    table = np.asarray(prior, dtype=float)
    return np.broadcast_to(table[:, None], (num_exits, num_members)) if table.ndim == 1 else table


def exit_weights_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """The learned exit weights theta (D, M): one bar group per member, one bar per exit (mean over seeds), the
    prior gamma marked on each bar."""
    tables = [(g, _mean_array([run.get("exit_weights") for run in g.runs])) for g in groups]
    tables = [(g, t) for g, t in tables if t is not None and t.ndim == 2 and t.shape[0] > 1]
    if not tables:
        return None
    figure, axes = _grid(len(tables), max_columns=3, size=(4.0, 3.0))
    for ax, (group, weights) in zip(axes, tables, strict=True):
        num_exits, num_members = weights.shape
        prior = prior_table(group, num_exits, num_members)
        width = 0.8 / num_exits
        colours = _exit_colours(num_exits)
        for i in range(num_exits):
            positions = np.arange(num_members) + (i - (num_exits - 1) / 2) * width
            ax.bar(positions, weights[i], width=width, label=f"exit {i + 1}", color=colours[i])
            ax.plot(positions, prior[i], linestyle="none", marker="_", markersize=200 * width / num_members + 6,
                    markeredgewidth=1.5, color="black", label="prior γ" if i == 0 else None)
        ax.set_xticks(np.arange(num_members), [f"member {m + 1}" for m in range(num_members)], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("θ (exit weight)")
        ax.set_title(_label(group), fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return _save(figure, path)


def exit_weights_history_figure(group: RunGroup, path: str | Path) -> Path | None:
    """theta over the epochs, one panel per member: stacked bands, one per exit (mean over seeds). The
    weights of a member sum to 1, so every exit's band stays visible where lines would lie on each other
    (during the warm start all sit at the prior)."""
    history = _mean_array([run.get("exit_weights_history") for run in group.runs])
    if history is None or history.ndim != 3 or history.shape[0] == 0:
        return None
    num_epochs, num_exits, num_members = history.shape
    figure, axes = _grid(num_members, max_columns=4, size=(3.0, 2.6))
    edges = np.arange(num_epochs + 1) + 0.5  # epoch e's weights span [e - 0.5, e + 0.5]
    colours = _exit_colours(num_exits)
    for m, ax in enumerate(axes):
        values = np.concatenate([history[:, :, m], history[-1:, :, m]]).T  # (D, epochs + 1) for the steps
        ax.stackplot(edges, values, labels=[f"exit {i + 1}" for i in range(num_exits)], colors=colours,
                     step="post", edgecolor="white", linewidth=0.5)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("θ (stacked over exits)")
        ax.set_title(f"member {m + 1}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles[::-1], labels[::-1], loc="outside right upper", fontsize=7)  # deepest exit on top
    figure.suptitle(f"{_label(group)}: exit weights over training", fontsize=10)
    return _save(figure, path)


def training_curves(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Per-epoch curves from a run's log/metrics.csv: {"val/nll": (epochs, values), ...} with 1-based epochs,
    each metric at the epochs where it was logged (training-split metrics need ``train.track_train=true``)."""
    path = run.path / "log" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                curves.setdefault(key, {})[int(row["epoch"]) + 1] = float(value)
    return {key: (sorted(points), [points[e] for e in sorted(points)]) for key, points in curves.items()}


def training_curves_figure(group: RunGroup, path: str | Path) -> Path | None:
    """Accuracy and NLL over the epochs on the training split (eval mode) and the validation split, and the
    training loss (the method's objective, mean over each epoch's steps), mean over seeds: the overfitting picture
    (training accuracy near 1 while the held-out NLL rises) and whether the objective has flattened."""
    curves = [training_curves(run) for run in group.runs]
    if not curves or not all("val/nll" in c for c in curves):
        return None
    with_loss = all("train/loss" in c for c in curves)
    figure, axes = _grid(3 if with_loss else 2, max_columns=3, size=(3.6, 3.0))
    if with_loss:
        length = min(len(c["train/loss"][0]) for c in curves)
        axes[2].plot(curves[0]["train/loss"][0][:length],
                     np.mean([c["train/loss"][1][:length] for c in curves], axis=0), "-", color="black")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("training loss (objective)")
    for ax, (key, label) in zip(axes, [("accuracy", "accuracy"), ("nll", "NLL [nats]")], strict=False):
        for split, style, name in (("train_eval", "-", "training split"), ("val", "--", "validation split")):
            series = [c.get(f"{split}/{key}") for c in curves]
            if any(s is None for s in series):
                continue
            length = min(len(epochs) for epochs, _ in series)
            values = np.mean([values[:length] for _, values in series], axis=0)
            ax.plot(series[0][0][:length], values, style, marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{_label(group)}: training curves", fontsize=10)
    return _save(figure, path)


# --- shifts ----------------------------------------------------------------------------------------------

def shift_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Each metric against the level of each of the 5 shifts, one line per method (mean ± std over seeds)."""
    groups = [g for g in groups if any(run.get("shifted", "sets") for run in g.runs)]
    if not groups:
        return None
    kinds = list(SHIFTS)
    figure = Figure(figsize=(3.0 * len(kinds), 2.5 * len(METRICS)), layout="constrained")
    axes = figure.subplots(len(METRICS), len(kinds), squeeze=False)
    for row, (key, title) in enumerate(METRICS):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            levels = SHIFTS[kind]
            for group, linestyle in zip(groups, _linestyles(groups), strict=True):
                stats = [group.metric("shifted", "sets", set_name(kind, level), key) for level in levels]
                means, stds = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
                if np.isnan(means).all():
                    continue
                ax.errorbar(np.arange(len(levels)), means, yerr=stds, label=_label(group), capsize=2,
                            color=method_colour(group.method), linestyle=linestyle,
                            marker=method_marker(group.method), markersize=4, linewidth=1)
            ax.set_xticks(np.arange(len(levels)), [f"{level:g}" for level in levels], fontsize=7)
            if row == 0:
                ax.set_title(kind)
            if row == len(METRICS) - 1:
                ax.set_xlabel(SHIFT_LEVELS.get(kind, "level"), fontsize=8)
            if col == 0:
                ax.set_ylabel(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return _save(figure, path)


# --- cost ------------------------------------------------------------------------------------------------

def _dodge(flops: list[float], tolerance: float = 0.03) -> list[float]:
    """Sideways offsets in points for points at (nearly) equal FLOPs, so that none hides another: clusters of
    costs within ``tolerance`` (relative) are spread 9 points apart around their true position."""
    offsets = [0.0] * len(flops)
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    clusters: list[list[int]] = []
    for i in order:
        previous = clusters[-1][-1] if clusters else None
        close = previous is not None and abs(flops[i] - flops[previous]) <= tolerance * max(flops[previous], 1e-12)
        if close:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    for cluster in clusters:
        for position, i in enumerate(cluster):
            offsets[i] = 9.0 * (position - (len(cluster) - 1) / 2)
    return offsets


def cost_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Accuracy and NLL against FLOPs [M], one point per method and M (mean ± std over seeds) in the method's
    colour and marker, named next to it; points at nearly equal FLOPs are spread sideways (by a few points on
    the page, not in FLOPs) so that none hides another."""
    points = []
    for group in groups:
        flops, _ = group.metric("cost", "flops")
        if not math.isnan(flops):
            points.append((group, flops / 1e6))
    if not points:
        return None
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    flops_values = [flops for _, flops in points]
    log_scale = max(flops_values) >= 5 * min(flops_values)  # costs spread over decades (MC Dropout, Ensemble)
    offsets = _dodge(flops_values)
    for ax, (key, title) in zip(axes, METRICS[:2], strict=True):
        for (group, flops), offset in zip(points, offsets, strict=True):
            mean, std = group.metric("test", key)
            if math.isnan(mean):
                continue
            shifted = offset_copy(ax.transData, fig=figure, x=offset, y=0.0, units="points")
            ax.update_datalim([(flops, mean - std), (flops, mean + std)])  # (artists in offset coordinates
            ax.errorbar([flops], [mean], yerr=[std], marker=method_marker(group.method), markersize=7,
                        color=method_colour(group.method), capsize=2, linestyle="none", transform=shifted)
            ax.annotate(_short_label(group), (flops, mean), xycoords=shifted, xytext=(4, 4), annotation_clip=False,
                        textcoords="offset points", fontsize=6, rotation=35, color=method_colour(group.method))
        if log_scale:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12, y=0.15)
        ax.autoscale_view()  # do not count for the data limits: they are set above)
        ax.set_xlabel("FLOPs [M]")
        ax.set_ylabel(title)
    axes[0].set_title("Accuracy vs cost")
    axes[1].set_title("NLL vs cost")
    methods = sorted({group.method for group, _ in points}, key=method_rank)
    handles = [Line2D([], [], color=method_colour(m), marker=method_marker(m), linestyle="none", markersize=7)
               for m in methods]
    figure.legend(handles, [display_name(m) for m in methods], loc="outside right upper", fontsize=7)
    return _save(figure, path)


def _short_label(group: RunGroup) -> str:
    """The text next to a point: M for ensemble-size methods and the variant's settings (the marker says the
    method)."""
    extras = [f"M={group.num_members}"] if tabulated_by_members(group.method) else []
    extras += [f"{SETTING_NAMES.get(k, k)}={format_setting(v)}" for k, v in group.variant]
    return f"{display_name(group.method)} " + ", ".join(extras) if extras else display_name(group.method)


# --- ablations -------------------------------------------------------------------------------------------

def _ablation_axes(figure: Figure) -> Any:
    return figure.subplots(2, len(METRICS), squeeze=False)


def _label_ablation_axes(axes: Any, xlabel: str) -> None:
    for col, (_, title) in enumerate(METRICS):
        axes[0][col].set_title(title)
        axes[1][col].set_xlabel(xlabel)
    axes[0][0].set_ylabel("test set")
    axes[1][0].set_ylabel("shifted sets")


def alpha_ablation_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Fig. 5 kind: each metric against alpha (symmetric-log axis, so that alpha = 0 shows), colour = M;
    upper row test set, lower row shifted sets. None unless the groups hold at least two alphas."""
    points = [(g, g.setting("method.alpha")) for g in groups]
    points = [(g, float(a)) for g, a in points if isinstance(a, (int, float))]
    if len({a for _, a in points}) < 2:
        return None
    figure = Figure(figsize=(3.2 * len(METRICS), 6), layout="constrained")
    axes = _ablation_axes(figure)
    for row, block in enumerate(("test", "shifted")):
        for col, (key, _) in enumerate(METRICS):
            ax = axes[row][col]
            for size in sorted({g.num_members for g, _ in points}):
                series = sorted((a, *g.mean_std(lambda run, b=block, k=key: _metric_value(run, b, k)))
                                for g, a in points if g.num_members == size)
                alphas, means, stds = (np.array(v) for v in zip(*series, strict=True))
                ax.errorbar(alphas, means, yerr=stds, color=_member_colour(size), marker="o", capsize=2,
                            label=f"M = {size}")
            ax.set_xscale("symlog", linthresh=1.0)
    _label_ablation_axes(axes, "α")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper")
    return _save(figure, path)


def alpha_exit_weights_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Fig. 5's companion: the learned exit weights against alpha, one line per exit (final θ, mean over the
    members and seeds, ± std over seeds of the members' mean), one panel per M. None unless the groups hold at
    least two alphas with learned exit weights."""
    points = []
    for group in groups:
        alpha = group.setting("method.alpha")
        finals = [np.asarray(w, dtype=float).mean(axis=1) for w in (run.get("exit_weights") for run in group.runs)
                  if w is not None]  # each (D,): the mean over members of a run's final weights
        if isinstance(alpha, (int, float)) and finals:
            points.append((group.num_members, float(alpha), np.mean(finals, axis=0), np.std(finals, axis=0)))
    if len({alpha for _, alpha, _, _ in points}) < 2:
        return None
    sizes = sorted({size for size, *_ in points})
    figure, axes = _grid(len(sizes), max_columns=3, size=(3.4, 3.0))
    for ax, size in zip(axes, sizes, strict=False):
        series = sorted((alpha, mean, std) for m, alpha, mean, std in points if m == size)
        alphas = np.array([alpha for alpha, _, _ in series])
        means, stds = np.array([mean for _, mean, _ in series]), np.array([std for _, _, std in series])
        for i, colour in enumerate(_exit_colours(means.shape[1])):
            ax.errorbar(alphas, means[:, i], yerr=stds[:, i], color=colour, marker="o", capsize=2,
                        label=f"exit {i + 1}")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_ylim(0, 1)
        ax.set_xlabel("α")
        ax.set_ylabel("θ (final, mean over members)")
        ax.set_title(f"M = {size}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    figure.suptitle("Exit weights against α", fontsize=10)
    return _save(figure, path)


def depth_width_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Fig. 6 kind: each metric against FLOPs [M], colour = M, marker = (layers, width); upper row test set,
    lower row shifted sets. None unless the groups hold at least two (layers, width) shapes."""
    def shape(group: RunGroup) -> tuple[str, str]:
        layers = group.setting("model.layers")
        return (str(tuple(layers)) if isinstance(layers, (list, tuple)) else str(layers),
                f"{group.setting('model.width', 1)}")

    shapes = sorted({shape(g) for g in groups})
    if len(shapes) < 2:
        return None
    figure = Figure(figsize=(3.2 * len(METRICS), 6), layout="constrained")
    axes = _ablation_axes(figure)
    for row, block in enumerate(("test", "shifted")):
        for col, (key, _) in enumerate(METRICS):
            ax = axes[row][col]
            for group in groups:
                mean, std = group.mean_std(lambda run, b=block, k=key: _metric_value(run, b, k))
                flops, _ = group.metric("cost", "flops")
                if math.isnan(mean) or math.isnan(flops):
                    continue
                layers, width = shape(group)
                ax.errorbar([flops / 1e6], [mean], yerr=[std], color=_member_colour(group.num_members),
                            marker=MARKERS[shapes.index((layers, width)) % len(MARKERS)], capsize=2,
                            linestyle="none",
                            label=f"M = {group.num_members}, layers {layers}, width {width}")
    _label_ablation_axes(axes, "FLOPs [M]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    figure.legend(list(unique.values()), list(unique.keys()), loc="outside right upper", fontsize=7)
    return _save(figure, path)


# --- feature reuse ---------------------------------------------------------------------------------------

def feature_reuse_figure(group: RunGroup, path: str | Path) -> Path | None:
    """Per-member L1 profiles of the stem (per output channel) and the head (per input feature), first seed,
    with the overlap of every seed (mean ± std) in the titles."""
    probes = [run.get("feature_reuse") for run in group.runs]
    probe = next((p for p in probes if p), None)
    if probe is None:
        return None
    parts = [(name, title, label) for name, title, label in (
        ("input", "stem", "stem output channel (member's input slice)"),
        ("output", "head", "head input feature (member's output rows)")) if probe.get(name)]
    if not parts:
        return None
    figure = Figure(figsize=(6.5 * len(parts), 3.6), layout="constrained")
    axes = figure.subplots(1, len(parts), squeeze=False)[0]
    for ax, (name, title, label) in zip(axes, parts, strict=True):
        profiles = np.asarray(probe[name]["profiles"], dtype=float)
        num_members, num_features = profiles.shape
        colours = _member_colours(num_members)
        if num_features <= 64:
            width = 0.8 / num_members
            for m in range(num_members):
                ax.bar(np.arange(num_features) + (m - (num_members - 1) / 2) * width, profiles[m],
                       width=width, label=f"member {m + 1}", color=colours[m])
        else:
            for m in range(num_members):
                ax.plot(np.arange(num_features), profiles[m], label=f"member {m + 1}", color=colours[m],
                        linewidth=0.8, alpha=0.8)
        overlaps = [p[name]["overlap"] for p in probes if p and p.get(name)]
        overlap, spread = mean_std(overlaps)
        ax.set_title(f"{title}: overlap {overlap:.2f}" + (f" ± {spread:.2f}" if len(overlaps) > 1 else ""),
                     fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.6, num_features - 0.4)
        ax.set_xlabel(label)
        ax.set_ylabel("L1 norm of the weights / max")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{_label(group)}: feature reuse (first seed)\noverlap = mean over features of "
                    "min/max of the members' profiles: 1 = every member uses each feature alike (shared "
                    "features), 0 = each feature belongs to one member", fontsize=9)
    return _save(figure, path)


# --- all -------------------------------------------------------------------------------------------------

def make_figures(runs: Sequence[Run] | Sequence[RunGroup], out_dir: str | Path) -> list[Path]:
    """Every figure the runs support, written into ``out_dir``; returns the files written. Figures follow the
    tables: runs that differ in a setting outside the method (see :func:`mimmo.report.runs.group_runs`) are
    never drawn in one figure, and the figure's file name carries that setting."""
    groups = list(runs) if runs and isinstance(runs[0], RunGroup) else group_runs(runs)  # type: ignore[arg-type]
    groups = sort_groups(groups)
    out_dir = Path(out_dir)
    written: list[Path | None] = []
    for table in build_tables(groups):
        stem = table.stem.replace("table_", "", 1)
        written += [reliability_figure(table.groups, out_dir / f"reliability_{stem}.png"),
                    exit_weights_figure(table.groups, out_dir / f"exit_weights_{stem}.png"),
                    shift_figure(table.groups, out_dir / f"shifts_{stem}.png")]
    for dataset, context in dict.fromkeys((g.dataset, g.context) for g in groups):
        in_context = [g for g in groups if g.dataset == dataset and g.context == context]
        suffix = _slug(dataset) + (f"_{context_slug(context)}" if context else "")
        written.append(cost_figure(in_context, out_dir / f"cost_{suffix}.png"))
        for method in sorted({g.method for g in in_context}, key=method_rank):
            of_method = [g for g in in_context if g.method == method]
            written.append(alpha_ablation_figure(of_method, out_dir / f"ablation_alpha_{suffix}_{method}.png"))
            written.append(alpha_exit_weights_figure(of_method,
                                                     out_dir / f"ablation_alpha_exit_weights_{suffix}_{method}.png"))
            written.append(depth_width_figure(of_method, out_dir / f"ablation_depth_width_{suffix}_{method}.png"))
    for group in groups:
        name = f"{_group_slug(group)}.png"
        written.append(exit_weights_history_figure(group, out_dir / f"exit_weights_history_{name}"))
        written.append(feature_reuse_figure(group, out_dir / f"feature_reuse_{name}"))
        written.append(training_curves_figure(group, out_dir / f"training_curves_{name}"))
    return [path for path in written if path is not None]


__all__ = ["alpha_ablation_figure", "alpha_exit_weights_figure", "cost_figure", "depth_width_figure",
           "exit_weights_figure", "exit_weights_history_figure", "feature_reuse_figure", "make_figures",
           "pooled_reliability", "reliability_figure", "shift_figure", "sort_groups", "training_curves",
           "training_curves_figure"]
