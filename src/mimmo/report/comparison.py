"""Every method against a reference method (default MIMMO): paired differences over seeds with their 95%
intervals and the seeds won (``comparison.md``), and every run's numbers (``per_seed.csv``); report/stats.py has
the statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mimmo.config import CONFIG_DIR
from mimmo.report.runs import RunGroup
from mimmo.report.stats import Paired, by_seed, paired, per_seed_csv
from mimmo.report.tables import BLOCKS, METRIC_COLUMNS, Table, _metric_getter, has_block, row_label

COMPARISON_FILE = "comparison.md"
PER_SEED_FILE = "per_seed.csv"
DEFAULT_REFERENCE = "mimmo"


def method_defaults(method: str) -> dict[str, Any]:
    """The options of ``configs/method/<method>.yaml`` as ``method.<key>`` settings ({} for an unknown method)."""
    path = Path(CONFIG_DIR) / "method" / f"{method}.yaml"
    content = yaml.safe_load(path.read_text()) if path.is_file() else None
    return {f"method.{key}": value for key, value in (content or {}).items()}


def reference_group(table: Table, reference: str) -> RunGroup | None:
    """The reference method's row of ``table``: among its rows, the one whose varying settings take the method's
    default values most often (``α=1, KL=paper`` before ``α=250``), the first of those on a tie."""
    rows = [g for g in table.groups if g.method == reference]
    if not rows:
        return None
    defaults = method_defaults(reference)
    return max(rows, key=lambda g: sum(defaults.get(k, object()) == v for k, v in g.variant) - len(g.variant))


def _signed(value: float, scale: float) -> str:
    return f"{value * scale:+.3f}".replace("+0.000", "0.000").replace("-0.000", "0.000")


def paired_cell(result: Paired, scale: float) -> str:
    """``+0.012 [−0.004, +0.028] 2/3``: mean difference, its 95% interval, seeds on which the reference is
    better (``, 1 tie`` where some are equal); ``–`` without a paired seed."""
    if result.n == 0:
        return "–"
    d = result.difference
    text = _signed(d.mean, scale)
    if not math.isnan(d.half):
        text += f" [{_signed(d.low, scale)}, {_signed(d.high, scale)}]"
        if d.excludes_zero:
            text = f"**{text}**"
    text += f" {result.reference_better}/{result.n}"
    if result.ties:
        text += f" ({result.ties} tie{'s' if result.ties > 1 else ''})"
    return text


def comparison_table(table: Table, reference: RunGroup, block: str) -> list[str]:
    ref_label = row_label(reference, table)
    header = ["Method", *(f"Δ {c.title}" for c in METRIC_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    for group in table.groups:
        if group is reference:
            continue
        cells = []
        for column in METRIC_COLUMNS:
            getter = _metric_getter(block, column.key)
            result = paired(by_seed(group, getter), by_seed(reference, getter), column.higher_is_better)
            cells.append(paired_cell(result, column.scale))
        lines.append("| " + " | ".join([row_label(group, table), *cells]) + " |")
    return [f"Against **{ref_label}**, {dict(BLOCKS)[block].lower()}:", "", *lines, ""]


def comparison_markdown(tables: Sequence[Table], reference: str = DEFAULT_REFERENCE) -> str:
    """The paired comparison of every table's rows against its ``reference`` row ('' if no table has one)."""
    sections = []
    for table in tables:
        ref = reference_group(table, reference)
        if ref is None:
            continue
        sections.append(f"### {table.title}\n")
        for block, _ in BLOCKS:
            if has_block(table, block):
                sections.append("\n".join(comparison_table(table, ref, block)))
    if not sections:
        return ""
    intro = (
        "## Paired comparison over seeds\n\n"
        "Each cell: the mean over the paired seeds of (method − reference), its 95% t interval in brackets, then "
        "on how many of the n paired seeds the reference is strictly better (higher accuracy; lower NLL, ECE, "
        "Brier). Bold: the interval excludes 0. Brier ×10³. A difference whose interval holds 0 is not "
        "established by these seeds.\n")
    return intro + "\n" + "\n".join(sections)


def seed_columns() -> list:
    return [(block, column.key, _metric_getter(block, column.key)) for block, _ in BLOCKS
            for column in METRIC_COLUMNS]


def per_seed_text(tables: Sequence[Table]) -> str:
    """``per_seed.csv``: every run once (a row shared by several M tables is written once)."""
    seen, groups, labels = set(), [], {}
    for table in tables:
        for group in table.groups:
            if id(group) not in seen:
                seen.add(id(group))
                groups.append(group)
                labels[id(group)] = row_label(group, table)
    return per_seed_csv(groups, lambda g: labels[id(g)], seed_columns())
