"""mimmo demo (mimmo.cli.demo): one folder per configuration, reused runs, its findings, its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mimmo.cli import demo


def test_demo_folders_per_configuration_and_reused_runs(tmp_path, monkeypatch, capsys):
    """Another --epochs trains into other folders (never a clash); a finished run shows as reused."""
    trained: list[Path] = []

    def fake_train(cfg, run_dir):
        trained.append(Path(run_dir))
        metrics = {"method": cfg.method.name, "num_members": 2, "num_exits": 1,
                   "config": {"train": OmegaConf.to_container(cfg.train)},
                   "test": {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "brier": 0.05},
                   "cost": {"flops": 2e6, "params": 1e5}}
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(demo, "train", fake_train)
    first = demo.run_demo(tmp_path, epochs=4)
    assert len(trained) == 3 and all("_epochs=4_" in p.name for p in trained)
    assert "reused" not in first and "| 4 |" in first
    second = demo.run_demo(tmp_path, epochs=5)
    assert len(trained) == 6 and not set(trained[:3]) & set(trained[3:])
    assert "reused" not in second
    monkeypatch.setattr(demo, "train", lambda cfg, run_dir: json.loads((Path(run_dir) / "metrics.json").read_text()))
    third = demo.run_demo(tmp_path, epochs=4)
    assert [line.split(" | ")[-1] for line in third.splitlines()[2:5]] == ["reused |"] * 3
    assert "[demo 1/3] base: finished before, reused" in capsys.readouterr().out


def test_demo_findings_say_what_the_numbers_show():
    def row(method, members, exits, accuracy, nll, gap, shifted_nll):
        return {"method": method, "num_members": members, "num_exits": exits,
                "test": {"accuracy": accuracy, "nll": nll, "accuracy_minus_confidence": gap},
                "shifted": {"summary": {"nll": {"mean": shifted_nll}}}}

    rows = [row("base", 1, 1, 0.96, 0.13, 0.01, 4.98), row("mimo", 2, 1, 0.92, 0.27, 0.03, 4.46),
            row("mimmo", 2, 4, 0.90, 0.48, 0.15, 3.75)]
    clean, shifted = demo.findings(rows)
    assert clean.startswith("Clean test set: base is the most accurate (0.960) and has the lowest NLL (0.130)")
    assert "base +0.010, mimo +0.030, mimmo +0.150" in clean
    assert "mimo and mimmo average several predictions" in clean  # Base, one prediction, is not named
    assert shifted.startswith("Under the 25 shifts (mean): NLL base 4.98, mimo 4.46, mimmo 3.75; mimmo holds up best")
    rows[2]["test"].update(nll=0.10, accuracy_minus_confidence=0.0)
    clean, _ = demo.findings(rows)
    assert "mimmo has the lowest NLL (0.100)" in clean and "; mimo averages several predictions" in clean
    del rows[0]["shifted"]  # a run evaluated without the shifted sets: no line on them
    assert len(demo.findings(rows)) == 1


def test_demo_says_which_runs_are_still_training(tmp_path):
    rows = []
    for method, losses in (("base", [1.0, 0.5, 0.30, 0.298]), ("mimmo", [4.0, 3.0, 2.0, 1.5])):
        (tmp_path / method / "log").mkdir(parents=True)
        lines = ["epoch,step,train/loss"] + [f"{e},{e},{loss}" for e, loss in enumerate(losses)]
        (tmp_path / method / "log" / "metrics.csv").write_text("\n".join(lines) + "\n")
        rows.append({"method": method, "config": {"train": {"epochs": 4}}, "run_dir": tmp_path / method})
    # 4 epochs: the last 10% is the last epoch. MIMMO fell 0.5 of its whole fall of 2.5 there (20%); Base 0.002 of
    # 0.702 (0.3%, flat: its relative change of -0.7% would say the same, but a loss near 0 can halve while flat).
    assert demo.still_training(rows) == (
        "Still training: in the last 10% of the epochs the training objective still made mimmo 20% of its whole "
        "fall, so these runs are not converged; `mimmo demo --epochs N` trains longer (into new folders).")
    assert demo.still_training(rows[:1]) is None
    assert demo.still_training(rows, threshold=0.25) is None


def test_demo_refuses_too_few_epochs_before_training_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "train", lambda cfg, run_dir: pytest.fail("nothing may train"))
    with pytest.raises(ValueError, match=r"warm_start_epochs \(3\) must be < train.epochs \(1\)"):
        demo.run_demo(tmp_path, epochs=1)
