"""Report sections for the post-hoc analyses: raw vs calibrated metrics, exits pruned by θ, anytime inference.

They read the ``calibrated``, ``pruned`` and ``anytime`` sections of metrics.json (``mimmo calibrate``, ``mimmo
evaluate --prune-exits EPS``, ``mimmo evaluate --anytime``); a section no run has is left out. The paper's
tables stay the raw ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mimmo.evaluation.anytime import cheapest_within as cheapest_row
from mimmo.report.figures import _label, _save, _slug, sort_groups
from mimmo.report.runs import RunGroup, mean_std
from mimmo.report.style import method_colour, method_marker
from mimmo.report.tables import build_tables, row_label

ANYTIME_POINTS = ("base", "mimo", "ensemble")  # shown as single points beside the anytime curves
WITHIN_POINTS = 0.5  # accuracy tolerance, in percentage points, of the cheapest anytime threshold


def _cell(values: list[float | None], scale: float = 1.0, decimals: int = 3) -> str:
    """Mean ± population std of the values that are there ('–' for none; nan where one is nan)."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    mean, std = mean_std(present)
    return f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}"


def calibration_markdown(groups: Sequence[RunGroup]) -> str:
    """Per table (dataset, M): the fitted temperature and raw vs calibrated accuracy, NLL and ECE, test set and
    the mean over the shifted sets."""
    texts = []
    for table in build_tables(groups):
        rows = [g for g in table.groups if any(run.get("calibrated") for run in g.runs)]
        if not rows:
            continue
        lines = [f"### Raw vs calibrated: {table.title}", "",
                 "| Method | seeds | T | Acc raw | Acc cal. | NLL raw | NLL cal. | ECE raw | ECE cal. "
                 "| Shifted NLL raw | Shifted NLL cal. | Shifted ECE raw | Shifted ECE cal. |",
                 "|:--" + "|--:" * 12 + "|"]
        for group in rows:
            calibrated = [run for run in group.runs if run.get("calibrated")]
            raw = tuple(calibrated)  # raw beside calibrated: the same runs
            cells = [str(len(raw)), _cell([run.get("calibrated", "temperature") for run in raw], decimals=2)]
            for key in ("accuracy", "nll", "ece"):
                cells += [_cell([run.get("test", key) for run in raw]),
                          _cell([run.get("calibrated", "test", key) for run in raw])]
            for key in ("nll", "ece"):
                cells += [_cell([v for run in raw if (v := run.get("shifted", "summary", key, "mean")) is not None]),
                          _cell([v for run in raw
                                 if (v := run.get("calibrated", "shifted", "summary", key, "mean")) is not None])]
            lines.append("| " + " | ".join([row_label(group, table), *cells]) + " |")
        lines += ["", "Mean ± std (population) over seeds. T: one temperature per run fitted on the validation "
                  "split (NLL); calibrated = every component's logits divided by T before the mixture."]
        texts.append("\n".join(lines) + "\n")
    return "\n".join(texts)


def pruning_markdown(groups: Sequence[RunGroup]) -> str:
    """Per exit method with a ``pruned`` section: EPS, the exits that still run, full vs pruned cost and metrics."""
    rows = [g for g in sort_groups(groups) if any(run.get("pruned") for run in g.runs)]
    if not rows:
        return ""
    lines = ["### Exits pruned by θ", "",
             "| Method | seeds | EPS | exits run (per seed) | FLOPs [M] full | FLOPs [M] pruned | Params [M] full | "
             "Params [M] pruned | Acc full | Acc pruned | NLL full | NLL pruned | Shifted NLL full | "
             "Shifted NLL pruned |", "|:--" + "|--:" * 13 + "|"]
    for group in rows:
        runs = [run for run in group.runs if run.get("pruned")]
        eps = sorted({run.get("pruned", "prune_exits") for run in runs})
        used = "; ".join("".join("x" if u else "·" for u in run.get("pruned", "exits_used")) for run in runs)
        cells = [str(len(runs)), ", ".join(f"{e:g}" for e in eps), used]
        for key in ("flops", "params"):
            cells += [_cell([run.get("cost", key) for run in runs], 1e-6, 4),
                      _cell([run.get("pruned", "cost", key) for run in runs], 1e-6, 4)]
        for getter in (lambda run, p: run.get(*p, "test", "accuracy"), lambda run, p: run.get(*p, "test", "nll"),
                       lambda run, p: run.get(*p, "shifted", "summary", "nll", "mean")):
            cells += [_cell([v for run in runs if (v := getter(run, ())) is not None]),
                      _cell([v for run in runs if (v := getter(run, ("pruned",))) is not None])]
        lines.append("| " + " | ".join([_label(group), *cells]) + " |")
    lines += ["", "x: the exit runs (some member keeps it), ·: skipped with its adapter (no stage after the deepest "
              "kept exit runs). Pruned weights are each member's weights below EPS set to 0 and renormalised."]
    return "\n".join(lines) + "\n"


def _anytime_tables(group: RunGroup, split: str) -> list[dict]:
    """The anytime tables of the group's runs on ``split`` (test, or validation where the run has it)."""
    tables = [run.get("anytime") for run in group.runs if run.get("anytime")]
    return tables if split == "test" else [t["validation"] for t in tables if t.get("validation")]


def anytime_curve(group: RunGroup, split: str = "test") -> list[dict[str, float]]:
    """Per threshold that every run of the group swept on ``split``: mean FLOPs per image, accuracy, NLL, ECE and
    seconds per image, each averaged over the seeds."""
    tables = _anytime_tables(group, split)
    if not tables:
        return []
    common = set.intersection(*({row["threshold"] for row in table["thresholds"]} for table in tables))
    curve = []
    for threshold in sorted(common):
        rows = [next(row for row in table["thresholds"] if row["threshold"] == threshold) for table in tables]
        curve.append({"threshold": threshold, **{key: float(np.mean([row[key] for row in rows]))
                                                 for key in ("flops", "accuracy", "nll", "ece", "seconds_per_image")}})
    return curve


def anytime_full(group: RunGroup, split: str = "test") -> dict[str, float]:
    tables = _anytime_tables(group, split)
    return {key: float(np.mean([table["full"][key] for table in tables]))
            for key in ("flops", "accuracy", "nll", "ece", "seconds_per_image")}


def cheapest_within(group: RunGroup, points: float = WITHIN_POINTS) -> dict[str, Any] | None:
    """The lowest-cost threshold whose seed-mean accuracy is within ``points`` points of the full mixture's, chosen
    on the validation split where every run of the group has its sweep (``chosen_on``: validation), else on the
    test set itself (``chosen_on``: test; runs swept before the validation sweep existed); the row returned has
    the threshold's test-set numbers."""
    runs_with = [run for run in group.runs if run.get("anytime")]
    split = "validation" if runs_with and all(run.get("anytime", "validation") for run in runs_with) else "test"
    curve, full = anytime_curve(group, split), anytime_full(group, split)
    best = cheapest_row(curve, full["accuracy"], points)
    if best is None:
        return None
    threshold = best["threshold"]
    test_row = next(row for row in anytime_curve(group) if row["threshold"] == threshold)
    return {**test_row, "chosen_on": split}


def anytime_markdown(groups: Sequence[RunGroup]) -> str:
    """Per exit method: the full mixture and the cheapest threshold within 0.5 accuracy points of it."""
    rows = [g for g in sort_groups(groups) if anytime_curve(g)]
    if not rows:
        return ""
    lines = ["### Anytime inference", "",
             "| Method | seeds | full: FLOPs [M] | full: Acc | full: NLL | full: ms/image "
             f"| threshold (≤ {WITHIN_POINTS:g} points) | chosen on | FLOPs [M] | FLOPs saved | Acc | NLL | ms/image "
             "| wall-clock saved |",
             "|:--" + "|--:" * 13 + "|"]
    for group in rows:
        full, best = anytime_full(group), cheapest_within(group)
        cells = [str(sum(1 for run in group.runs if run.get("anytime"))), f"{full['flops'] / 1e6:.3f}",
                 f"{full['accuracy']:.3f}", f"{full['nll']:.3f}",
                 f"{full['seconds_per_image'] * 1e3:.3f}"]
        if best is None:
            cells += ["–"] * 8
        else:
            cells += [f"{best['threshold']:g}", best["chosen_on"], f"{best['flops'] / 1e6:.3f}",
                      f"{1 - best['flops'] / full['flops']:.0%}", f"{best['accuracy']:.3f}", f"{best['nll']:.3f}",
                      f"{best['seconds_per_image'] * 1e3:.3f}",
                      f"{1 - best['seconds_per_image'] / full['seconds_per_image']:.0%}"]
        lines.append("| " + " | ".join([_label(group), *cells]) + " |")
    lines += ["", "Means over seeds (clean test set). The threshold is the cheapest whose seed-mean accuracy is within "
              f"{WITHIN_POINTS:g} points of the full mixture's on the split named ('validation': chosen without "
              "looking at the test set; 'test': runs swept before the validation sweep was recorded). FLOPs: mean "
              "per image, each sample costing the prediction that stops at its exit; ms/image: measured wall-clock "
              "of the whole set, divided by its size."]
    return "\n".join(lines) + "\n"


def anytime_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Accuracy and NLL against mean FLOPs per image: the anytime curves of the exit methods (one point per
    threshold, means over seeds), Base, MIMO and the Ensemble as single points (mean ± std over seeds)."""
    groups = sort_groups(groups)
    curves = [(g, anytime_curve(g)) for g in groups]
    curves = [(g, c) for g, c in curves if c]
    if not curves:
        return None
    points = [g for g in groups if g.method in ANYTIME_POINTS and g.values(lambda run: run.get("cost", "flops"))]
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, (key, title) in zip(axes, (("accuracy", "Accuracy"), ("nll", "NLL [nats]")), strict=True):
        for group, curve in curves:  # each method in its colour and marker of every figure (mimmo.report.style)
            ax.plot([row["flops"] / 1e6 for row in curve], [row[key] for row in curve],
                    marker=method_marker(group.method), markersize=3, linewidth=1, color=method_colour(group.method),
                    label=f"{_label(group)} (anytime)")
            full = anytime_full(group)
            ax.plot([full["flops"] / 1e6], [full[key]], marker="*", markersize=9, color=method_colour(group.method),
                    linestyle="none")
        for group in points:
            flops, _ = group.metric("cost", "flops")
            mean, std = group.metric("test", key)
            ax.errorbar([flops / 1e6], [mean], yerr=[std], marker=method_marker(group.method),
                        color=method_colour(group.method), capsize=2, linestyle="none", label=_label(group))
        ax.set_xlabel("mean FLOPs per image [M]")
        ax.set_ylabel(title)
    axes[0].set_title("Anytime: accuracy vs cost (★ full mixture)")
    axes[1].set_title("Anytime: NLL vs cost")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return _save(figure, path)


def posthoc_markdown(groups: Sequence[RunGroup]) -> str:
    """The post-hoc sections that the runs support, as one Markdown block ('' when none)."""
    parts = [text for text in (calibration_markdown(groups), pruning_markdown(groups), anytime_markdown(groups))
             if text]
    return ("## Beyond the paper: calibration, pruned exits, anytime inference\n\n" + "\n".join(parts)) if parts else ""


def posthoc_figures(groups: Sequence[RunGroup], out_dir: str | Path) -> list[Path]:
    """One anytime figure per dataset (and M of the ensemble-size methods)."""
    written = []
    for table in build_tables(groups):
        stem = table.stem.replace("table_", "", 1)
        path = anytime_figure(table.groups, Path(out_dir) / f"anytime_{_slug(stem)}.png")
        if path is not None:
            written.append(path)
    return written
