"""Reports from saved run folders: the paper's tables (Markdown, LaTeX, CSV) and figures (PNG).

``report(paths, out_dir)`` loads every run under ``paths``, groups the seeds of each setting, writes the
tables into ``out_dir`` and the figures into ``out_dir/figures``, and returns the Markdown. Where runs have
post-hoc sections (calibrated metrics, exits pruned by θ, anytime tables) it adds their tables
(``posthoc.md``) and the anytime figure; where runs have the confidence metrics, a confidence section
(``confidence.md``); where they have training logs, a convergence section (``convergence.md``). It never
retrains anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mimmo.report.confidence import CONFIDENCE_FILE, confidence_markdown
from mimmo.report.convergence import CONVERGENCE_FILE, convergence_markdown
from mimmo.report.figures import make_figures
from mimmo.report.posthoc import posthoc_figures, posthoc_markdown
from mimmo.report.runs import Run, RunGroup, SkippedRunsWarning, group_runs, load_runs
from mimmo.report.tables import build_tables, write_tables
from mimmo.run_folder import write_text_atomic

REPORT_FILE = "report.md"
POSTHOC_FILE = "posthoc.md"


def report(paths: Iterable[str | Path], out_dir: str | Path, figures: bool = True) -> str:
    """Load the runs under ``paths``, write tables (and figures) into ``out_dir`` and ``report.md``; return
    the Markdown."""
    out_dir = Path(out_dir)
    groups = group_runs(load_runs(list(paths)))
    markdown, _ = write_tables(groups, out_dir)
    text = "# Results\n\n" + markdown
    for name, section in ((CONFIDENCE_FILE, confidence_markdown(groups)),  # under- or over-confidence
                          (CONVERGENCE_FILE, convergence_markdown(groups))):  # settled? held-out NLL rising?
        if section:
            text += "\n" + section
            write_text_atomic(out_dir / name, section)
    extra = posthoc_markdown(groups)  # calibrated, pruned and anytime sections, where the runs have them
    if extra:
        text += "\n" + extra
        write_text_atomic(out_dir / POSTHOC_FILE, extra)
    if figures:
        written = make_figures(groups, out_dir / "figures") + posthoc_figures(groups, out_dir / "figures")
        if written:
            text += "\n## Figures\n\n" + "\n".join(
                f"![{path.stem}]({path.relative_to(out_dir).as_posix()})" for path in written) + "\n"
    write_text_atomic(out_dir / REPORT_FILE, text)
    return text


__all__ = ["Run", "RunGroup", "SkippedRunsWarning", "build_tables", "group_runs", "load_runs", "make_figures",
           "report", "write_tables"]
