"""Report sections on uncertainty: OOD detection, selective classification, where the uncertainty comes from.

They read metrics.json's ``ood``, ``selective`` and ``decomposition`` sections (docs/method.md, "Uncertainty
beyond accuracy"); runs saved before those sections existed show "–" (or are left out of a figure) until
``mimmo evaluate RUN --ood`` adds them. Tables give the mean ± half-width of the 95% t interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mimmo.evaluation.ood import SCORES
from mimmo.report.figures import _group_slug, _label, _save, _slug, sort_groups
from mimmo.report.runs import Run, RunGroup
from mimmo.report.stats import interval
from mimmo.report.style import method_colour, method_marker
from mimmo.report.tables import Cell, build_tables, row_label

UNCERTAINTY_FILE = "uncertainty.md"
SCORE_NAMES = {"msp": "MSP", "entropy": "entropy", "energy": "energy", "mi_members": "MI members",
               "mi_exits": "MI exits", "mi_both": "MI both"}
DECOMPOSITION_COLUMNS = (("total", "H total"), ("expected_both", "E[H] (aleatoric)"), ("mi_members", "MI members"),
                         ("mi_exits", "MI exits"), ("mi_both", "MI both"),
                         ("mi_exits_given_members", "I(y; exit | member)"))
SELECTIVE_COLUMNS = (("aurc", "AURC"), ("e_aurc", "E-AURC"), ("risk_at_80", "risk @80%"),
                     ("risk_at_90", "risk @90%"), ("risk_at_95", "risk @95%"))


def _cell(group: RunGroup, *keys: str, scale: float = 1.0) -> str:
    spread = interval(group.values(lambda run: run.get(*keys)))
    return Cell(spread.mean * scale, spread.half * scale, spread.n).text()


def ood_set_names(groups: Sequence[RunGroup]) -> list[str]:
    """The OOD sets any run of ``groups`` was evaluated on, in the order they first appear."""
    names = {name: None for group in groups for run in group.runs for name in (run.get("ood", "sets") or {})}
    return list(names)


def _table(title: str, header: list[str], rows: list[list[str]], note: str) -> str:
    """One Markdown table of this section: a heading, the header, one row per method, a note under it."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, "", note]) + "\n"


def ood_markdown(groups: Sequence[RunGroup]) -> str:
    """Per table (dataset, M) and OOD set: AUROC and FPR95 of every score, one row per method."""
    texts = []
    for table in build_tables(groups):
        for set_name in ood_set_names(table.groups):
            scores = [s for s in SCORES if any(run.get("ood", "sets", set_name, "metrics", s)
                                               for g in table.groups for run in g.runs)]
            header = ["Method", *(f"{SCORE_NAMES[s]}: {m}" for s in scores for m in ("AUROC", "FPR95"))]
            rows = [[row_label(group, table), *(_cell(group, "ood", "sets", set_name, "metrics", s, m, scale=100)
                                                for s in scores for m in ("auroc", "fpr95"))]
                    for group in table.groups]
            texts.append(_table(
                f"OOD detection, {set_name}: {table.title}", header, rows,
                "AUROC and FPR at 95% TPR in %, mean ± half-width of the 95% t interval over seeds; AUROC: higher is "
                "better, FPR95: lower is better; – where a method has no such score (an MI needs several members or "
                "exits) or a run has no ood section."))
    return "\n".join(texts)


def selective_markdown(groups: Sequence[RunGroup]) -> str:
    """Per table: AURC, E-AURC and the risk at 80/90/95% coverage on the clean test set, and the mean AURC and
    E-AURC over the shifted sets."""
    texts = []
    for table in build_tables(groups):
        if not any(run.get("selective") for g in table.groups for run in g.runs):
            continue
        header = ["Method", *(title for _, title in SELECTIVE_COLUMNS), "Shifted: AURC", "Shifted: E-AURC"]
        rows = [[row_label(group, table),
                 *(_cell(group, "selective", "test", key, scale=100) for key, _ in SELECTIVE_COLUMNS),
                 *(_cell(group, "selective", "shifted", key, "mean", scale=100) for key in ("aurc", "e_aurc"))]
                for group in table.groups]
        texts.append(_table(
            f"Selective classification: {table.title}", header, rows,
            "In %, lower is better. Risk: the error rate of the most confident samples (confidence: the mixture's "
            "top probability); AURC: its mean over all coverages; E-AURC: AURC minus the AURC of the best ranking "
            "of the same errors. Shifted: the mean over the 25 shifted sets."))
    return "\n".join(texts)


def decomposition_markdown(groups: Sequence[RunGroup]) -> str:
    """Per table: total entropy, its expected entropy and mutual information over members, exits and both (test
    set), and the total and MI over both as the mean over the shifted sets."""
    texts = []
    for table in build_tables(groups):
        if not any(run.get("decomposition") for g in table.groups for run in g.runs):
            continue
        header = ["Method", *(title for _, title in DECOMPOSITION_COLUMNS), "Shifted: H total", "Shifted: MI both"]
        rows = [[row_label(group, table),
                 *(_cell(group, "decomposition", "test", key) for key, _ in DECOMPOSITION_COLUMNS),
                 *(_cell(group, "decomposition", "shifted", key, "mean") for key in ("total", "mi_both"))]
                for group in table.groups]
        texts.append(_table(
            f"Where the uncertainty comes from: {table.title}", header, rows,
            "Mean per test image, in nats. H total = E[H] + MI for each split (over members, over exits, over both); "
            "MI both = MI members + I(y; exit | member). An MI over one member or one exit is 0."))
    return "\n".join(texts)


def uncertainty_markdown(groups: Sequence[RunGroup]) -> str:
    """The OOD, selective and decomposition tables the runs support, as one Markdown block ('' when none)."""
    parts = [text for text in (ood_markdown(groups), selective_markdown(groups), decomposition_markdown(groups))
             if text]
    return ("## Uncertainty: OOD detection, selective classification, its sources\n\n" + "\n".join(parts)
            if parts else "")


def _curve(group: RunGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The risk-coverage curve's coverages, mean risk and std over the seeds that have it."""
    curves = [run.get("selective", "test", "curve") for run in group.runs]
    curves = [c for c in curves if c]
    if not curves:
        return None
    risks = np.array([c["risk"] for c in curves], dtype=float)
    return np.array(curves[0]["coverage"], dtype=float), risks.mean(axis=0), risks.std(axis=0)


def risk_coverage_figure(groups: Sequence[RunGroup], path: str | Path) -> Path | None:
    """Risk against coverage on the clean test set, one line per method (mean ± std over seeds)."""
    curves = [(g, c) for g in sort_groups(groups) if (c := _curve(g)) is not None]
    if not curves:
        return None
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    for group, (coverage, risk, std) in curves:
        colour = method_colour(group.method)
        ax.plot(coverage, risk * 100, color=colour, marker=method_marker(group.method), markersize=3, linewidth=1,
                label=_label(group))
        ax.fill_between(coverage, (risk - std) * 100, (risk + std) * 100, color=colour, alpha=0.12, linewidth=0)
    ax.set_xlabel("coverage (fraction of test images accepted, most confident first)")
    ax.set_ylabel("risk: error rate of the accepted [%]")
    ax.set_title("Risk-coverage (clean test set)")
    figure.legend(loc="outside right upper", fontsize=7)
    return _save(figure, path)


def _first_run_with_ood(group: RunGroup) -> Run | None:
    runs = sorted((run for run in group.runs if run.get("ood", "sets")), key=lambda run: str(run.seed))
    return runs[0] if runs else None


def ood_histogram_figure(group: RunGroup, path: str | Path) -> Path | None:
    """Per OOD set (rows) and score (columns): histograms of the in-distribution and the OOD scores of the
    group's first seed (bins differ between seeds, so they are not pooled)."""
    run = _first_run_with_ood(group)
    if run is None:
        return None
    sets: dict[str, Any] = run.get("ood", "sets")
    scores = [s for s in SCORES if s in (run.get("ood", "scores") or [])]
    if not scores:
        return None
    figure = Figure(figsize=(2.6 * len(scores), 2.0 * len(sets)), layout="constrained")
    axes = figure.subplots(len(sets), len(scores), squeeze=False)
    for row, (set_name, entry) in enumerate(sets.items()):
        for col, score in enumerate(scores):
            ax = axes[row][col]
            histogram = entry["histograms"].get(score)
            if histogram is None:
                ax.set_visible(False)
                continue
            edges = np.array(histogram["edges"], dtype=float)
            for key, colour, label in (("in", "tab:blue", "in-distribution"), ("ood", "tab:red", "OOD")):
                counts = np.array(histogram[key], dtype=float)
                density = counts / max(counts.sum(), 1.0)
                ax.stairs(density, edges, color=colour, fill=True, alpha=0.45, label=label)
            auroc = entry["metrics"].get(score, {}).get("auroc")
            title = SCORE_NAMES[score] + ("" if auroc is None or math.isnan(auroc) else f" (AUROC {auroc:.2f})")
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_ylabel(f"{set_name}\nfraction", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper right", fontsize=7)
    figure.suptitle(f"OOD scores: {_label(group)}, seed {run.seed}", fontsize=9)
    return _save(figure, path)


def uncertainty_figures(groups: Sequence[RunGroup], out_dir: str | Path) -> list[Path]:
    """One risk-coverage figure per table (dataset, M) and one OOD histogram figure per group."""
    out_dir = Path(out_dir)
    written: list[Path | None] = []
    for table in build_tables(groups):
        stem = table.stem.replace("table_", "", 1)
        written.append(risk_coverage_figure(table.groups, out_dir / f"risk_coverage_{_slug(stem)}.png"))
    for group in sort_groups(groups):
        written.append(ood_histogram_figure(group, out_dir / f"ood_scores_{_group_slug(group)}.png"))
    return [path for path in written if path is not None]
