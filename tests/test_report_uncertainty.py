"""The report's OOD, selective and decomposition tables and figures from fabricated run folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_report import PNG_MAGIC, write_run

from mimmo.evaluation.decomposition import decompose, summarize_decomposition
from mimmo.evaluation.ood import histogram
from mimmo.evaluation.selective import selective_metrics
from mimmo.report import report
from mimmo.report.runs import group_runs, load_runs
from mimmo.report.stats import interval
from mimmo.report.uncertainty import ood_markdown, risk_coverage_figure, uncertainty_markdown

TEST = {"accuracy": 0.70, "nll": 1.0, "ece": 0.05, "brier": 0.04}


def add_uncertainty(folder: Path, auroc: float, fpr95: float, seed: int) -> None:
    """ood (msp and mi_members on the gaussian set), selective and decomposition sections as evaluation writes
    them, from seeded random predictions."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(30, 1, 2, 4, generator=generator)
    log_probs = logits.log_softmax(-1).exp().mean(dim=2)[:, 0].log()
    targets = torch.randint(0, 4, (30,), generator=generator)
    metrics = json.loads((folder / "metrics.json").read_text())
    entry = {"auroc": auroc, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": fpr95}
    metrics["ood"] = {"in_distribution_size": 30, "scores": ["msp", "mi_members"], "sets": {"gaussian": {
        "size": 20, "metrics": {"msp": entry, "mi_members": entry},
        "histograms": {score: histogram(torch.rand(30, generator=generator), torch.rand(20, generator=generator))
                       for score in ("msp", "mi_members")}}}}
    metrics["selective"] = {"test": selective_metrics(log_probs, targets),
                            "shifted": {"aurc": {"mean": 0.4, "std": 0.1}, "e_aurc": {"mean": 0.1, "std": 0.0}}}
    metrics["decomposition"] = {"test": summarize_decomposition(decompose(logits, torch.ones(1, 2))),
                                "shifted": {"total": {"mean": 1.2, "std": 0.1}, "mi_both": {"mean": 0.3, "std": 0.0}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def runs(root: Path) -> Path:
    for seed, auroc in ((0, 0.8), (1, 0.9)):
        add_uncertainty(write_run(root / f"mimo{seed}", "mimo", 2, seed, TEST, 0.5, 1_000, 10), auroc, 0.5, seed)
    write_run(root / "base0", "base", 1, 0, TEST, 0.5, 500, 5)  # saved before the sections existed
    return root


def test_ood_table_gives_auroc_and_fpr95_per_score(tmp_path):
    groups = group_runs(load_runs([runs(tmp_path / "runs")]))
    text = ood_markdown(groups)
    spread = interval([80.0, 90.0])
    assert "### OOD detection, gaussian: " in text
    assert "| Method | MSP: AUROC | MSP: FPR95 | MI members: AUROC | MI members: FPR95 |" in text
    assert f"| MIMO | 85.00 ± {spread.half:.2f} | 50.00 ± 0.00 | 85.00 ± {spread.half:.2f} |" in text
    assert "| Base | – | – | – | – |" in text


def test_selective_and_decomposition_tables(tmp_path):
    text = uncertainty_markdown(group_runs(load_runs([runs(tmp_path / "runs")])))
    assert "### Selective classification" in text and "### Where the uncertainty comes from" in text
    mimo_rows = [line for line in text.splitlines() if line.startswith("| MIMO |")]
    assert len(mimo_rows) == 3  # OOD, selective, decomposition
    decomposition = mimo_rows[2].split(" | ")
    assert decomposition[-2].startswith("1.20 ± 0.00") and decomposition[-1].startswith("0.30 ± 0.00")
    assert uncertainty_markdown(group_runs(load_runs([tmp_path / "runs" / "base0"]))) == ""


def test_report_writes_the_section_and_the_figures(tmp_path):
    root = runs(tmp_path / "runs")
    text = report([root], tmp_path / "out")
    assert "## Uncertainty: OOD detection, selective classification, its sources" in text
    assert (tmp_path / "out" / "uncertainty.md").is_file()
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert any(name.startswith("risk_coverage_") for name in figures)
    histograms = [name for name in figures if name.startswith("ood_scores_")]
    assert len(histograms) == 1 and "mimo" in histograms[0]  # Base's run has no ood section
    for name in figures:
        assert (tmp_path / "out" / "figures" / name).read_bytes()[:8] == PNG_MAGIC
    assert risk_coverage_figure(group_runs(load_runs([root / "base0"])), tmp_path / "none.png") is None


def test_demo_table_has_an_ood_column():
    from mimmo.cli.demo import format_table

    def row(method: str, ood: dict | None) -> dict:
        return {"method": method, "num_members": 1, "num_exits": 1, "config": {"train": {"epochs": 2}},
                "test": {"accuracy": 0.9, "nll": 0.3, "ece": 0.05}, "cost": {"flops": 1e6, "params": 1e3},
                "seconds": None, **({"ood": ood} if ood else {})}

    sets = {"gaussian": {"metrics": {"msp": {"auroc": 0.9}}}, "uniform": {"metrics": {"msp": {"auroc": 0.7}}}}
    lines = format_table([row("base", {"sets": sets}), row("mimo", None)]).splitlines()
    assert "| OOD AUROC (MSP) |" in lines[0]
    assert lines[2].split(" | ")[10] == "0.800" and lines[3].split(" | ")[10] == "–"
