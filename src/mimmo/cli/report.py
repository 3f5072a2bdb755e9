"""``mimmo report PATH ...``: tables and figures from saved run folders (never retrains)."""

from __future__ import annotations

import argparse
import sys
import warnings

from mimmo.cli.errors import run_reporting_errors
from mimmo.cli.main import summary

SUMMARY = summary("report")

REPORT_EPILOG = """\
Runs that differ in a setting (train.epochs, data.train_size, ...) go to separate tables, one per
combination of those settings; each table aggregates seeds (mean ± half-width of the 95% t interval from two
seeds on). comparison.md pairs every method with the --reference method seed by seed (mean difference, its 95%
interval, seeds won); per_seed.csv has every run's numbers; report.md starts with the runs' provenance.
Output: OUT/report.md, comparison.md, per_seed.csv, one .md/.tex/.csv per table and OUT/figures/*.png.

example:
  mimmo report runs/paper --out reports/paper"""


def parser() -> argparse.ArgumentParser:
    report = argparse.ArgumentParser(prog="mimmo report", description=SUMMARY, epilog=REPORT_EPILOG, add_help=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("paths", nargs="+", help="run folders, or folders that contain run folders")
    report.add_argument("--out", default="reports", help="where the tables and figures go (default reports)")
    report.add_argument("--no-figures", action="store_true", help="tables only")
    report.add_argument("--reference", default="mimmo", metavar="METHOD",
                        help="the method every other is compared with in comparison.md (default mimmo)")
    return report


def help_text() -> str:
    return parser().format_help()


def main(arguments: list[str]) -> None:
    from mimmo.report import report as make_report
    from mimmo.report.runs import ReportWarning

    args = parser().parse_args(arguments)

    def make() -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            try:
                return make_report(args.paths, args.out, figures=not args.no_figures, reference=args.reference)
            finally:
                for warning in caught:
                    if issubclass(warning.category, ReportWarning):
                        print(f"mimmo report: {warning.message}", file=sys.stderr)
                    else:
                        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                               warning.lineno)

    print(run_reporting_errors("report", make))
