"""``mimmo calibrate RUN_DIR ...``: fit a temperature on each run's validation split (calibration.json) and add
the calibrated metrics to its metrics.json."""

from __future__ import annotations

import argparse

from mimmo.cli.device import best_device
from mimmo.cli.errors import run_reporting_errors
from mimmo.cli.main import summary

SUMMARY = summary("calibrate")


def parser() -> argparse.ArgumentParser:
    calibrate = argparse.ArgumentParser(prog="mimmo calibrate", description=SUMMARY, add_help=False,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrate.add_argument("run_dirs", nargs="+")
    calibrate.add_argument("--device", default="auto",
                           help="cpu, cuda, ...; auto (default): cuda where available, else cpu")
    return calibrate


def help_text() -> str:
    return parser().format_help()


def main(arguments: list[str]) -> None:
    from mimmo.runs.posthoc import calibrate_run

    args = parser().parse_args(arguments)
    args.device = run_reporting_errors("calibrate", lambda: best_device(args.device))
    for run_dir in args.run_dirs:
        section = run_reporting_errors(
            "calibrate", lambda run_dir=run_dir: calibrate_run(run_dir, device=args.device))
        fit, test = section["validation"], section["test"]
        print(f"{run_dir}: T = {section['temperature']:.4f}; validation NLL {fit['nll_before']:.4f} -> "
              f"{fit['nll_after']:.4f}; calibrated test accuracy {test['accuracy']:.4f}, NLL {test['nll']:.4f}, "
              f"ECE {test['ece']:.4f} (calibration.json written, metrics.json updated)")
