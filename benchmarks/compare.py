"""Two or more throughput.py results side by side, as Markdown (benchmarks/README.md).

    python benchmarks/compare.py benchmarks/results/cpu-2core-before.json benchmarks/results/cpu-2core.json

Prints, for every method in any of the files, the median images/s of each phase (Lightning training, bare
training, inference) per file and the ratio of the last file to the first, then the issue's ratios
(MIMMO/MIMO time per image, framework overhead, M = 4 speed-up over the ensemble) per file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PHASES = (("train_lightning", "training, Lightning"), ("train_bare", "training, bare loop"),
          ("inference", "inference"))


def median(result: dict[str, Any], phase: str) -> float | None:
    entry = result.get(phase)
    return None if entry is None else entry["images_per_s"]["median"]


def cell(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def speed_table(names: list[str], reports: list[dict[str, Any]]) -> list[str]:
    methods = list(dict.fromkeys(key for report in reports for key in report["methods"]))
    header = ["method", "phase", *names, f"{names[-1]} / {names[0]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(names) + 1)) + "|"]
    for method in methods:
        for phase, label in PHASES:
            values = [median(report["methods"].get(method, {}), phase) for report in reports]
            if all(v is None for v in values):
                continue
            ratio = values[-1] / values[0] if values[0] and values[-1] else None
            lines.append(f"| {method} | {label} | " + " | ".join(cell(v) for v in values) + f" | {cell(ratio, 2)} |")
    return lines


def ratio_table(names: list[str], reports: list[dict[str, Any]]) -> list[str]:
    rows: dict[str, list[str]] = {}
    for column, report in enumerate(reports):
        ratios = report.get("ratios", {})

        def put(label: str, text: str, column: int = column) -> None:
            rows.setdefault(label, ["–"] * len(reports))[column] = text

        mm = ratios.get("mimmo_over_mimo_time_per_image", {})
        for phase, label in PHASES:
            if f"{phase}_time_ratio" in mm:
                put(f"MIMMO/MIMO time per image, {label} (≤ {mm['target_max']:.2f})",
                    f"{mm[f'{phase}_time_ratio']:.2f}")
        for method, value in ratios.get("framework_overhead", {}).get("per_method", {}).items():
            put(f"framework overhead, {method} (≤ 1.05)", f"{value:.3f}")
        for method, entry in ratios.get("m4_inference_over_ensemble", {}).items():
            put(f"M=4 {method} inference / ensemble (≥ {entry['target_min']:.2f}; ideal {entry['flops_ratio']:.2f})",
                f"{entry['inference_speedup_over_ensemble']:.2f}")
    lines = ["| ratio (target) | " + " | ".join(names) + " |", "|---|" + "--:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows.items()]
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="throughput.py JSON files, the baseline first")
    args = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.results]
    names = [path.stem for path in args.results]
    text = "\n".join(["Images per second (median over repeats):", "", *speed_table(names, reports), "",
                      *ratio_table(names, reports)])
    print(text)
    return text


if __name__ == "__main__":
    main()
