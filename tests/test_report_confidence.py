"""The report's confidence section from fabricated run folders."""

from __future__ import annotations

import json
from pathlib import Path

from fake_runs import write_run

from mimmo.report import report
from mimmo.report.confidence import confidence_markdown
from mimmo.report.runs import group_runs, load_runs

TEST = {"accuracy": 0.70, "nll": 1.0, "ece": 0.05, "brier": 0.04}


def add_confidence(folder: Path, confidence: float, members: list[float] | None, exits: list[float] | None) -> None:
    metrics = json.loads((folder / "metrics.json").read_text())
    test = metrics["test"]
    test.update(confidence=confidence, accuracy_minus_confidence=test["accuracy"] - confidence)
    if members:
        test.update(member_confidence=members, member_accuracy_minus_confidence=[0.65 - c for c in members])
    if exits:
        test["exit_accuracy_minus_confidence"] = exits
    metrics["shifted"]["summary"]["confidence"] = {"mean": confidence - 0.2, "std": 0.1}
    metrics["shifted"]["summary"]["accuracy_minus_confidence"] = {"mean": -0.1, "std": 0.1}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_confidence_section_per_method_with_members_and_exits(tmp_path):
    root = tmp_path / "runs"
    for seed, confidence in ((0, 0.50), (1, 0.60)):
        folder = write_run(root / f"mimmo{seed}", "mimmo", 2, seed, TEST, 0.5, 1_000_000, 2_000, num_exits=4)
        add_confidence(folder, confidence, [0.55, 0.45], [0.3, 0.2, 0.1, 0.0 + 0.1 * seed])
        add_confidence(write_run(root / f"base{seed}", "base", 1, seed, TEST, 0.5, 500_000, 1_000), 0.9, None, None)
    write_run(root / "mimo0", "mimo", 2, 0, TEST, 0.5, 500_000, 1_000)  # evaluated before the metrics existed
    text = confidence_markdown(group_runs(load_runs([root])))
    # Base over-confident (0.70 - 0.90), MIMMO under-confident by 0.70 - 0.55 on average over its two seeds
    assert "| Base | 0.700 ± 0.000 | 0.900 ± 0.000 | -0.200 ± 0.000 | – | – | – | 0.700 ± 0.000 |" in text
    assert ("| MIMMO | 0.700 ± 0.000 | 0.550 ± 0.050 | +0.150 ± 0.050 | 0.500 ± 0.000 | +0.150 ± 0.000 "
            "| +0.30 / +0.20 / +0.10 / +0.05 | 0.350 ± 0.050 | -0.100 ± 0.000 |") in text
    assert "| MIMO | 0.700 | – | – | – | – | – | – | – |" in text


def test_the_report_writes_the_confidence_section_only_when_runs_have_it(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "base0", "base", 1, 0, TEST, 0.5, 500_000, 1_000)
    text = report([root], tmp_path / "out", figures=False)
    assert "## Confidence" not in text and not (tmp_path / "out" / "confidence.md").exists()
    add_confidence(root / "base0", 0.9, None, None)
    text = report([root], tmp_path / "out2", figures=False)
    assert "## Confidence" in text and (tmp_path / "out2" / "confidence.md").read_text() in text
