"""The paper's tables from saved runs: one per (dataset, settings, M), as Markdown, LaTeX and CSV.

Runs of a dataset that differ in a setting (train.epochs, ...) go to separate tables, one per combination
of those settings, named in the title.

Rows are methods in the paper's order; columns Accuracy, NLL, ECE, Brier x10^3, FLOPs [M], Params [M];
a block on the clean test set, then a block on the shifted sets (the mean over the 25 sets of each run).
Every entry is the mean over seeds, ± the half-width of its 95% t interval from two seeds on (report/stats.py;
the CSV also has the population std the paper prints); the best mean of each metric column and block is bold
(highest accuracy, lowest NLL, ECE and Brier; ties after rounding are all bold): bold is not significance,
comparison.md has the paired differences. A NaN or infinite value (a diverged run) makes its mean ``nan``/``inf``,
shown as such and never bold; "–" means no run has the value.
Methods whose M is not an ensemble size (Base, MC Dropout, DUN, EE) appear in every M's table, as in the paper.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimmo.report.runs import Run, RunGroup, settings_order
from mimmo.report.stats import interval
from mimmo.report.style import display_name, method_rank, tabulated_by_members
from mimmo.runs.folder import write_text_atomic

SETTING_NAMES = {"method.alpha": "α", "method.kl_convention": "KL", "model.layers": "layers",
                 "model.planes": "planes", "model.width": "width"}


@dataclass(frozen=True)
class MetricColumn:
    title: str
    key: str
    scale: float
    higher_is_better: bool


METRIC_COLUMNS = (
    MetricColumn("Accuracy", "accuracy", 1.0, True),
    MetricColumn("NLL", "nll", 1.0, False),
    MetricColumn("ECE", "ece", 1.0, False),
    MetricColumn("Brier ×10³", "brier", 1000.0, False),
)
COST_COLUMNS = (("FLOPs [M]", "flops"), ("Params [M]", "params"))
BLOCKS = (("test", "Test set"), ("shifted", "Shifted test sets (mean over the 25 sets)"))
DECIMALS = 2


@dataclass(frozen=True)
class Table:
    """The rows of one table: a dataset, a context (the settings in which the runs of the dataset differ; see
    :func:`mimmo.report.runs.group_runs`) and, for the ensemble-size methods, one M (None: no such methods)."""

    dataset: str
    num_members: int | None
    groups: tuple[RunGroup, ...]
    context: tuple[tuple[str, Any], ...] = ()

    @property
    def title(self) -> str:
        title = self.dataset if self.num_members is None else f"{self.dataset}, M = {self.num_members}"
        return f"{title} ({context_text(self.context)})" if self.context else title

    @property
    def stem(self) -> str:
        """The file name stem: ``table_<dataset>[_M<M>][_<context>]`` (unique per table)."""
        safe = slug(self.dataset)
        stem = f"table_{safe}" if self.num_members is None else f"table_{safe}_M{self.num_members}"
        return f"{stem}_{context_slug(self.context)}" if self.context else stem


def context_text(context: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{key}={format_setting(value)}" for key, value in context)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def context_slug(context: tuple[tuple[str, Any], ...]) -> str:
    """``train.epochs=5,data.train_size=256`` as a file-name part; a hash where that would be long."""
    text = slug(",".join(f"{key}={format_setting(value)}" for key, value in context))
    return text if len(text) <= 80 else "settings_" + hashlib.sha256(text.encode()).hexdigest()[:10]


def build_tables(groups: Sequence[RunGroup]) -> list[Table]:
    """One table per dataset, context and M of the ensemble-size methods, rows in the paper's method order."""
    tables = []
    contexts = sorted({(g.dataset, g.context) for g in groups}, key=lambda dc: (dc[0], settings_order(dc[1])))
    for dataset, context in contexts:
        in_context = [g for g in groups if g.dataset == dataset and g.context == context]
        # a method whose M is not an ensemble size (Method.tabulated_by_members) joins every M's table
        sizes = sorted({g.num_members for g in in_context if tabulated_by_members(g.method)})
        for size in sizes or [None]:
            rows = [g for g in in_context if not tabulated_by_members(g.method) or size is None
                    or g.num_members == size]
            rows.sort(key=lambda g: (method_rank(g.method), g.num_members))  # stable: keeps variant order
            tables.append(Table(dataset, size, tuple(rows), context))
    return tables


def format_setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_setting(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def row_label(group: RunGroup, table: Table) -> str:
    """The display name, plus M where one table holds several Ms of a method, plus the ablation settings."""
    label = display_name(group.method)
    extras = []
    if sum(g.method == group.method and g.variant == group.variant for g in table.groups) > 1:
        extras.append(f"M={group.num_members}")
    extras += [f"{SETTING_NAMES.get(k, k)}={format_setting(v)}" for k, v in group.variant]
    return f"{label} ({', '.join(extras)})" if extras else label


def _metric_getter(block: str, key: str) -> Callable[[Run], Any]:
    if block == "test":
        return lambda run: run.get("test", key)
    return lambda run: run.get("shifted", "summary", key, "mean")


def _round(value: float) -> float:
    return round(value, DECIMALS)


@dataclass(frozen=True)
class Cell:
    """A mean over seeds and the half-width of its 95% interval, shown only from two seeds on."""

    mean: float
    half: float
    num_seeds: int
    bold: bool = False

    def text(self) -> str:
        if self.num_seeds == 0:
            return "–"
        if self.num_seeds < 2:
            return f"{self.mean:.{DECIMALS}f}"
        return f"{self.mean:.{DECIMALS}f} ± {self.half:.{DECIMALS}f}"


def block_cells(table: Table, block: str) -> list[list[Cell]]:
    """Per row, one cell per metric column (scaled for display), best per column marked bold."""
    cells = []
    for group in table.groups:
        row = []
        for column in METRIC_COLUMNS:
            spread = interval(group.values(_metric_getter(block, column.key)))
            row.append(Cell(spread.mean * column.scale, spread.half * column.scale, spread.n))
        cells.append(row)
    for j, column in enumerate(METRIC_COLUMNS):
        values = [_round(row[j].mean) for row in cells if math.isfinite(row[j].mean)]
        if len(values) < 2:
            continue
        best = max(values) if column.higher_is_better else min(values)
        for row in cells:
            if math.isfinite(row[j].mean) and _round(row[j].mean) == best:
                row[j] = Cell(row[j].mean, row[j].half, row[j].num_seeds, True)
    return cells


def _cost_getter(key: str) -> Callable[[Run], Any]:
    return lambda run: run.get("cost", key)


def cost_texts(group: RunGroup) -> list[str]:
    """FLOPs and params in millions ('–' where no run has them)."""
    texts = []
    for _, key in COST_COLUMNS:
        mean, _ = group.metric("cost", key)
        texts.append(f"{mean / 1e6:.{DECIMALS}f}" if group.values(_cost_getter(key)) else "–")
    return texts


def has_block(table: Table, block: str) -> bool:
    getter = _metric_getter(block, METRIC_COLUMNS[0].key)
    return any(group.values(getter) for group in table.groups)


def _seeds_line(table: Table) -> str:
    counts = [len(g.runs) for g in table.groups]
    if counts == [1] * len(counts):
        return "One seed per row (no interval)."
    if len(set(counts)) == 1:
        return f"Mean ± half-width of the 95% t interval over n = {counts[0]} seeds per row."
    per_row = ", ".join(f"{row_label(g, table)} {len(g.runs)}" for g in table.groups)
    return ("Mean ± half-width of the 95% t interval over seeds (a row with one seed shows none); "
            f"seeds per row (n): {per_row}.")


def to_markdown(table: Table) -> str:
    header = ["Method", *(c.title for c in METRIC_COLUMNS), *(title for title, _ in COST_COLUMNS)]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|:--" + "|--:" * (len(header) - 1) + "|"]
    for block, block_title in BLOCKS:
        if not has_block(table, block):
            continue
        if block != "test":
            lines.append(f"| *{block_title}* |" + " |" * (len(header) - 1))
        for group, cells in zip(table.groups, block_cells(table, block), strict=True):
            texts = [f"**{c.text()}**" if c.bold else c.text() for c in cells]
            lines.append("| " + " | ".join([row_label(group, table), *texts, *cost_texts(group)]) + " |")
    lines += ["", _seeds_line(table)]
    return "\n".join(lines) + "\n"


LATEX_REPLACEMENTS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                      "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                      "α": r"$\alpha$", "γ": r"$\gamma$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_REPLACEMENTS.get(char, char) for char in text)


def _latex_cell(cell: Cell) -> str:
    if cell.num_seeds == 0:
        return "--"
    if not math.isfinite(cell.mean):
        return cell.text()
    mean, std = f"{cell.mean:.{DECIMALS}f}", f"{cell.half:.{DECIMALS}f}"
    if cell.num_seeds < 2:
        return rf"$\textbf{{{mean}}}$" if cell.bold else f"${mean}$"
    if cell.bold:
        return rf"$\textbf{{{mean}}} \pm \textbf{{{std}}}$"
    return rf"${mean} \pm {std}$"


def to_latex(table: Table) -> str:
    header = ["Method", "Accuracy [0-1]", "NLL [nats]", "ECE [0-1]", r"Brier [$\times 10^{-3}$]", "FLOPs [M]",
              "Params [M]"]
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(header) + r" \\",
             r"\midrule"]
    first = True
    for block, _ in BLOCKS:
        if not has_block(table, block):
            continue
        if not first:
            lines.append(r"\midrule")
        first = False
        for group, cells in zip(table.groups, block_cells(table, block), strict=True):
            costs = [c if c != "–" else "--" for c in cost_texts(group)]
            lines.append(" & ".join([latex_escape(row_label(group, table)), *map(_latex_cell, cells), *costs])
                         + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = (f"% {table.title}. Upper block: test set; lower block: mean over the 25 shifted sets. "
               f"{_seeds_line(table)}")
    return caption + "\n" + "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Unscaled values at full precision, one row per (block, method)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    metric_keys = [c.key for c in METRIC_COLUMNS]
    writer.writerow(["dataset", "block", "method", "label", "num_members", "num_seeds",
                     *(f"{k}_{s}" for k in metric_keys for s in ("mean", "std", "ci95")), "flops", "params",
                     "settings"])
    for block, _ in BLOCKS:
        if not has_block(table, block):
            continue
        for group in table.groups:
            values = []
            for key in metric_keys:
                getter = _metric_getter(block, key)
                mean, std = group.mean_std(getter)
                count = len(group.values(getter))
                values += [_csv_number(mean) if count else "", _csv_number(std) if count > 1 else "",
                           _csv_number(interval(group.values(getter)).half) if count > 1 else ""]
            costs = [_csv_number(group.metric("cost", key)[0]) if group.values(_cost_getter(key)) else ""
                     for _, key in COST_COLUMNS]
            writer.writerow([table.dataset, block, group.method, row_label(group, table), group.num_members,
                             len(group.runs), *values, *costs, context_text(table.context)])
    return out.getvalue()


def _csv_number(value: float) -> str:
    """The value at full precision (``nan``, ``inf`` as such)."""
    return repr(float(value))


def write_tables(groups: Sequence[RunGroup], out_dir: str | Path) -> tuple[str, list[Path]]:
    """Write every table as .md, .tex and .csv into ``out_dir``; return the Markdown of all and the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, paths = [], []
    for table in build_tables(groups):
        markdown = to_markdown(table)
        texts.append(markdown)
        for suffix, text in ((".md", markdown), (".tex", to_latex(table)), (".csv", to_csv(table))):
            path = out_dir / f"{table.stem}{suffix}"
            write_text_atomic(path, text)
            paths.append(path)
    return "\n".join(texts), paths
