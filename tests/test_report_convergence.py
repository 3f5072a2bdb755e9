"""The report's convergence section and the figures that show it, from fabricated run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fake_runs import PNG_MAGIC, write_run

from mimmo.report import report
from mimmo.report.convergence import convergence_markdown, held_out_nll, loss_change, loss_fall_share, theta_change
from mimmo.report.figures import alpha_exit_weights_figure, training_curves_figure
from mimmo.report.runs import group_runs, load_runs

TEST = {"accuracy": 0.70, "nll": 1.0, "ece": 0.05, "brier": 0.04}


def write_log(folder: Path, losses: list[float], val_nll: dict[int, float]) -> None:
    """log/metrics.csv as Lightning's CSV logger writes it: one row per logged (epoch, metric set)."""
    (folder / "log").mkdir(parents=True, exist_ok=True)
    with open(folder / "log" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "step", "train/loss", "val/nll", "val/accuracy", "train_eval/nll",
                                    "train_eval/accuracy"])
        writer.writeheader()
        for epoch, loss in enumerate(losses):
            if epoch in val_nll:
                writer.writerow({"epoch": epoch, "step": epoch, "val/nll": val_nll[epoch], "val/accuracy": 0.5,
                                 "train_eval/nll": 0.1, "train_eval/accuracy": 0.9})
            writer.writerow({"epoch": epoch, "step": epoch, "train/loss": loss})


def set_history(folder: Path, history: list) -> None:
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["exit_weights_history"] = history
    metrics["exit_weights"] = history[-1]
    (folder / "metrics.json").write_text(json.dumps(metrics))


def runs(root: Path) -> Path:
    # Base: the held-out NLL bottoms out at epoch index 2 (1.0) and ends at 1.3 (+30%); the loss flattened.
    base = write_run(root / "base0", "base", 1, 0, TEST, 0.5, 500_000, 1_000)
    write_log(base, [2.0, 1.0, 0.5] + [0.1] * 7, {0: 1.6, 2: 1.0, 5: 1.2, 9: 1.3})
    # MIMMO: θ (D=2, M=1) moves by 0.02 over the last 2 of 10 epochs (from the epoch before the window).
    mimmo = write_run(root / "mimmo0", "mimmo", 2, 0, TEST, 0.5, 1_000_000, 2_000, num_exits=4)
    history = [[[0.25, 0.25]] * 4] * 7 + [[[0.2, 0.2]] * 2 + [[0.3, 0.3]] * 2,
                                          [[0.19, 0.2]] * 2 + [[0.31, 0.3]] * 2,
                                          [[0.18, 0.2]] * 2 + [[0.32, 0.3]] * 2]
    set_history(mimmo, history)
    write_log(mimmo, [4.0, 3.0, 2.5, 2.0, 1.8, 1.6, 1.5, 1.4, 1.2, 1.0], {4: 1.2, 9: 0.9})
    return root


def test_convergence_numbers_by_hand(tmp_path):
    root = runs(tmp_path / "runs")
    loaded = {run.method: run for run in load_runs([root])}
    assert held_out_nll(loaded["base"]) == pytest.approx({"min": 1.0, "min_epoch": 3, "last": 1.3, "rise": 0.3})
    assert loss_change(loaded["base"]) == pytest.approx(0.0)
    assert loss_change(loaded["mimmo"]) == pytest.approx(1.0 / 1.2 - 1.0)  # still falling: -17%
    # share of the whole fall made in the last epoch: MIMMO (1.2 - 1.0) / (4.0 - 1.0); Base none (flat at 0.1)
    assert loss_fall_share(loaded["mimmo"]) == pytest.approx(0.2 / 3.0)
    assert loss_fall_share(loaded["base"]) == pytest.approx(0.0)
    assert theta_change(loaded["mimmo"]) == pytest.approx(0.02)
    assert theta_change(loaded["base"]) is None
    text = convergence_markdown(group_runs(load_runs([root])))
    assert "| Base | 1 | – | +0.0% | 0.0% | 1.000 | 3 | 1.300 | +30% (+30% to +30%) |" in text
    assert "| MIMMO | 1 | 0.0200 | -16.7% | 6.7% | 0.900 | 10 | 0.900 | +0% (+0% to +0%) |" in text


def test_report_has_the_convergence_section_and_the_loss_panel(tmp_path):
    root = runs(tmp_path / "runs")
    text = report([root], tmp_path / "out")
    assert "## Convergence" in text and (tmp_path / "out" / "convergence.md").is_file()
    group = next(g for g in group_runs(load_runs([root])) if g.method == "mimmo")
    path = training_curves_figure(group, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_exit_weights_against_alpha(tmp_path):
    root = tmp_path / "runs"
    for alpha, deep in ((0.0, 0.7), (1.0, 0.6), (250.0, 0.3)):
        folder = write_run(root / f"a{alpha:g}", "mimmo", 2, 0, TEST, 0.5, 1_000_000, 2_000, num_exits=4,
                           method__alpha=alpha)
        shallow = (1 - deep) / 3
        set_history(folder, [[[shallow, shallow]] * 3 + [[deep, deep]]])
    groups = [g for g in group_runs(load_runs([root])) if g.method == "mimmo"]
    path = alpha_exit_weights_figure(groups, tmp_path / "alpha_theta.png")
    assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert alpha_exit_weights_figure(groups[:1], tmp_path / "none.png") is None  # one alpha: nothing to plot
