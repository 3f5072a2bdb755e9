"""OOD evaluation in runs: a tiny run with held-out classes, `mimmo evaluate --ood` on an older run, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import TINY, tiny

from mimmo.cli import main
from mimmo.data import ImageSet, Splits
from mimmo.data.registry import DATASETS, DatasetSpec
from mimmo.runs.checkpoints import load_run
from mimmo.runs.train import train

HELD_OUT = "data.holdout_classes=[5,6,7,8,9]"


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "ood"
    return run_dir, train(tiny("method=mimmo", "method.num_members=2", HELD_OUT), run_dir)


def test_a_run_with_held_out_classes_writes_the_three_sections(ood_run):
    run_dir, metrics = ood_run
    assert metrics["num_classes"] == 5 and metrics["class_map"] == [0, 1, 2, 3, 4]
    ood = metrics["ood"]
    assert list(ood["sets"]) == ["holdout", "gaussian", "uniform"]
    assert ood["scores"] == ["msp", "entropy", "energy", "mi_members", "mi_exits", "mi_both"]
    test_size = sum(metrics["test"]["reliability"]["count"])
    assert ood["sets"]["gaussian"]["size"] == ood["in_distribution_size"] == test_size
    assert ood["sets"]["holdout"]["size"] > 0
    for entry in ood["sets"].values():
        assert set(entry["metrics"]) == set(ood["scores"])
        assert all(0 <= v <= 1 for m in entry["metrics"].values() for v in m.values())
    assert {"aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95", "curve"} <= set(metrics["selective"]["test"])
    assert metrics["decomposition"]["test"]["total"] == pytest.approx(metrics["test"]["entropy"], rel=1e-4)
    method, _, _ = load_run(run_dir)
    assert method.num_classes == 5


def test_evaluate_ood_adds_the_sections_to_an_older_run(tmp_path, capsys):
    run_dir = tmp_path / "older"
    train(tiny("method=mimo", "method.num_members=2"), run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # as saved before these settings existed
    del config["data"]["holdout_classes"], config["evaluation"]["ood"], config["evaluation"]["ood_sets"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for section in ("ood", "selective", "decomposition", "class_map"):
        del metrics[section]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    main(["evaluate", str(run_dir), "--ood", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "selective AURC" in out and "OOD gaussian" in out and "OOD holdout" not in out
    updated = json.loads((run_dir / "metrics.json").read_text())
    assert list(updated["ood"]["sets"]) == ["gaussian", "uniform"]
    assert updated["ood"]["scores"] == ["msp", "entropy", "energy", "mi_members"]
    assert {key: updated[key] for key in metrics} == metrics  # every other section as it was
    assert "selective" in updated and "decomposition" in updated


def _register(monkeypatch, name: str, channels: int, test_images: int) -> None:
    def load(data, seed):
        images = torch.zeros(test_images, channels, 28, 28, dtype=torch.uint8)
        labels = torch.zeros(test_images, dtype=torch.int64)
        return Splits(name, ImageSet(images, labels), ImageSet(images, labels), ImageSet(images, labels), 1)

    monkeypatch.setitem(DATASETS, name, DatasetSpec(name, lambda data: ((channels, 28, 28), 1), lambda data: None,
                                                    load))


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.holdout_classes=[10]"], "mimmo train: data.holdout_classes must list class labels in [0, 9], got 10"),
    (["data.holdout_classes=[3,3]"], "mimmo train: data.holdout_classes lists [3] more than once: [3, 3]"),
    (["data.holdout_classes=[0,1,2,3,4,5,6,7,8,9]"], "mimmo train: data.holdout_classes [0, 1, 2, 3, 4, 5, 6, 7, "
                                                     "8, 9] leaves 0 of the 10 classes"),
    (["evaluation.ood_sets=[two_channels]"], "mimmo train: evaluation.ood_sets: dataset 'two_channels' has 2 "
                                             "channels, which cannot be matched to the data's 1"),
    (["evaluation.ood_sets=[five_images]"], "mimmo train: evaluation.ood_sets: dataset 'five_images' has 5 test "
                                            "images; an OOD set needs at least 10"),
    (["evaluation.ood=maybe"], "mimmo train: evaluation.ood must be true or false, got 'maybe'"),
])
def test_bad_ood_settings_are_one_line_with_status_2_and_leave_no_folder(tmp_path, capsys, monkeypatch, overrides,
                                                                         message):
    _register(monkeypatch, "two_channels", 2, 20)
    _register(monkeypatch, "five_images", 1, 5)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, *overrides, f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_paper_mini_ood_grid_validates():
    from mimmo.cli.grid import load_grid, plan, validate

    sweeps = plan(load_grid("paper_mini_ood"))
    runs = [run for sweep in sweeps for run in sweep]
    assert len(runs) == 30 and {run.config.data.holdout_classes[0] for run in runs} == {5}
    assert validate(sweeps) >= 10
