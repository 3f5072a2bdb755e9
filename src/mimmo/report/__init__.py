"""Reports from saved run folders: the paper's tables (Markdown, LaTeX, CSV) and figures (PNG).

``report(paths, out_dir)`` loads every run under ``paths``, groups the seeds of each setting, writes the
tables into ``out_dir`` and the figures into ``out_dir/figures``, and returns the Markdown. Where runs have
post-hoc sections (calibrated metrics, exits pruned by θ, anytime tables) it adds their tables
(``posthoc.md``) and the anytime figure; it always writes every run's numbers (``per_seed.csv``), the runs'
provenance (in ``report.md``'s header) and, where the reference method has a row, the paired comparison of every
method against it over seeds (``comparison.md``); where runs have the confidence metrics, a confidence section
(``confidence.md``); where they have training logs, a convergence section (``convergence.md``); where they have
the ood, selective or decomposition sections, their tables (``uncertainty.md``), the risk-coverage figure and
the OOD score histograms. It never retrains anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mimmo.report.comparison import (
    COMPARISON_FILE,
    DEFAULT_REFERENCE,
    PER_SEED_FILE,
    comparison_markdown,
    per_seed_text,
)
from mimmo.report.confidence import CONFIDENCE_FILE, confidence_markdown
from mimmo.report.convergence import CONVERGENCE_FILE, convergence_markdown
from mimmo.report.figures import make_figures
from mimmo.report.posthoc import posthoc_figures, posthoc_markdown
from mimmo.report.runs import Run, RunGroup, SkippedRunsWarning, group_runs, load_runs
from mimmo.report.stats import provenance_markdown
from mimmo.report.tables import build_tables, write_tables
from mimmo.report.uncertainty import UNCERTAINTY_FILE, uncertainty_figures, uncertainty_markdown
from mimmo.runs.folder import write_text_atomic

REPORT_FILE = "report.md"
POSTHOC_FILE = "posthoc.md"


def report(paths: Iterable[str | Path], out_dir: str | Path, figures: bool = True,
           reference: str = DEFAULT_REFERENCE) -> str:
    """Load the runs under ``paths``, write tables (and figures) into ``out_dir`` and ``report.md``; return
    the Markdown. ``reference`` is the method every other one is compared with in ``comparison.md``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the tables and figures (it is made if missing)")
    runs = load_runs(list(paths))
    groups = group_runs(runs)
    methods = sorted({group.method for group in groups})
    if reference != DEFAULT_REFERENCE and reference not in methods:
        raise ValueError(f"reference method {reference!r} has no run among the runs given; their methods: {methods}")
    markdown, _ = write_tables(groups, out_dir)
    tables = build_tables(groups)
    text = "# Results\n\n" + provenance_markdown(runs) + "\n" + markdown
    write_text_atomic(out_dir / PER_SEED_FILE, per_seed_text(tables))
    for name, section in ((COMPARISON_FILE, comparison_markdown(tables, reference)),  # paired, with intervals
                          (CONFIDENCE_FILE, confidence_markdown(groups)),  # under- or over-confidence
                          (CONVERGENCE_FILE, convergence_markdown(groups)),  # settled? held-out NLL rising?
                          (UNCERTAINTY_FILE, uncertainty_markdown(groups))):  # OOD, selective, decomposition
        if section:
            text += "\n" + section
            write_text_atomic(out_dir / name, section)
    extra = posthoc_markdown(groups)  # calibrated, pruned and anytime sections, where the runs have them
    if extra:
        text += "\n" + extra
        write_text_atomic(out_dir / POSTHOC_FILE, extra)
    if figures:
        written = (make_figures(groups, out_dir / "figures") + posthoc_figures(groups, out_dir / "figures")
                   + uncertainty_figures(groups, out_dir / "figures"))
        if written:
            text += "\n## Figures\n\n" + "\n".join(
                f"![{path.stem}]({path.relative_to(out_dir).as_posix()})" for path in written) + "\n"
    write_text_atomic(out_dir / REPORT_FILE, text)
    return text


__all__ = ["Run", "RunGroup", "SkippedRunsWarning", "build_tables", "group_runs", "load_runs", "make_figures",
           "report", "write_tables"]
