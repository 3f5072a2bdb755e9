"""Post-hoc temperature scaling (mimmo.evaluation.calibration) and the post-hoc commands on a run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mimmo.cli import compose, main
from mimmo.data.datasets import Normalizer
from mimmo.evaluation.calibration import fit_temperature, scaled_log_probs
from mimmo.evaluation.evaluate import RAW, Readout, predict_readouts
from mimmo.methods import MIMMO, mixture_log_probs
from mimmo.models import ResNetConfig, ResNetFactory
from mimmo.runs.checkpoints import save_weights
from mimmo.runs.folder import CALIBRATION_FILE, read_json, write_json_atomic
from mimmo.training import build_method_from_config, load_splits

TINY = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4), stem_channels=4))


def overconfident(num: int = 400, num_classes: int = 5, scale: float = 3.0, seed: int = 0):
    """Logits (N, 1, 1, K) that are ``scale`` times too sharp for the labels drawn from softmax(true logits)."""
    generator = torch.Generator().manual_seed(seed)
    true = torch.randn(num, num_classes, generator=generator) * 2.0
    labels = torch.multinomial(F.softmax(true, dim=1), 1, generator=generator)[:, 0]
    return (true * scale)[:, None, None], torch.ones(1, 1), labels


def test_temperature_one_reads_the_raw_mixture_bit_for_bit():
    generator = torch.Generator().manual_seed(1)
    logits, weights = torch.randn(7, 4, 3, 5, generator=generator), torch.softmax(torch.randn(4, 3), dim=0)
    assert torch.equal(scaled_log_probs(logits, weights, 1.0), mixture_log_probs(logits, weights))
    torch.manual_seed(0)
    method = MIMMO(TINY, 3, 5, num_members=2).eval()
    images = (torch.rand(6, 3, 8, 8, generator=generator) * 255).to(torch.uint8)
    readouts = predict_readouts(method, images, Normalizer(torch.zeros(3), torch.ones(3)),
                                {"raw": RAW, "t1": Readout(1.0), "t2": Readout(2.0)})
    assert torch.equal(readouts["raw"].log_probs, readouts["t1"].log_probs)
    assert torch.equal(readouts["raw"].member_log_probs, readouts["t1"].member_log_probs)
    assert not torch.equal(readouts["raw"].log_probs, readouts["t2"].log_probs)


def test_the_fitted_temperature_lowers_validation_nll_and_keeps_a_single_networks_accuracy():
    logits, weights, labels = overconfident()
    fit = fit_temperature(logits, weights, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.25)  # it undoes the over-sharpening
    assert fit.nll_after < fit.nll_before - 0.1
    assert fit.nll_after == pytest.approx(F.nll_loss(scaled_log_probs(logits, weights, fit.temperature), labels)
                                          .item())
    assert fit.accuracy_after == fit.accuracy_before  # one component: the top class does not depend on T
    assert fit.num_samples == len(labels)


def test_an_underconfident_mixture_gets_a_temperature_below_one():
    logits, weights, labels = overconfident(scale=0.3)
    mixture_logits = logits.expand(-1, 2, 2, -1)  # four equal components, weights summing to 1 per member
    fit = fit_temperature(mixture_logits, torch.full((2, 2), 0.5), labels)
    assert fit.temperature < 1.0 and fit.nll_after < fit.nll_before


def test_a_calibrated_set_keeps_temperature_one():
    generator = torch.Generator().manual_seed(3)
    true = torch.randn(3000, 4, generator=generator)
    labels = torch.multinomial(F.softmax(true, dim=1), 1, generator=generator)[:, 0]
    fit = fit_temperature(true[:, None, None], torch.ones(1, 1), labels)
    assert fit.temperature == pytest.approx(1.0, abs=0.1) and fit.nll_after <= fit.nll_before


def test_bad_inputs_are_refused():
    logits, weights, labels = overconfident(num=10)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        scaled_log_probs(logits, weights, 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Readout(-1.0)
    with pytest.raises(ValueError, match=r"logits must be \(N, D, M, K\)"):
        fit_temperature(logits[:, 0], weights, labels)
    with pytest.raises(ValueError, match="at least one sample"):
        fit_temperature(logits[:0], weights, labels[:0])


# ----------------------------------------------------------------------------------- post-hoc commands

RUN_OVERRIDES = ["method=mimmo", "method.num_members=2", "model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]",
                 "model.stem_channels=4", "data.train_size=256", "data.test_fraction=0.05",
                 "train.eval_batch_size=500", "evaluation.shifted=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with an untrained tiny MIMMO (θ set away from uniform) and a metrics.json to merge into."""
    folder = tmp_path_factory.mktemp("posthoc") / "run"
    cfg = compose(RUN_OVERRIDES)
    splits = load_splits(cfg)
    method = build_method_from_config(cfg, splits.input_shape, splits.num_classes)
    with torch.no_grad():
        method.depth_logits.copy_(torch.tensor([[0.3, 0.4], [0.01, 0.02], [0.29, 0.18], [0.4, 0.4]]).log())
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_weights(folder / "weights.safetensors", method, Normalizer.fit(splits.train.images))
    write_json_atomic(folder / "metrics.json", {"test": {"accuracy": 0.123}, "keep": [1, 2]})
    return folder


def test_mimmo_calibrate_writes_calibration_json_and_the_calibrated_section(run_dir, capsys):
    main(["calibrate", str(run_dir)])
    assert "calibration.json written" in capsys.readouterr().out
    calibration = read_json(run_dir / CALIBRATION_FILE)
    metrics = read_json(run_dir / "metrics.json")
    section = metrics["calibrated"]
    assert calibration["temperature"] == section["temperature"] > 0
    assert section["validation"]["nll_after"] <= section["validation"]["nll_before"]
    assert {"accuracy", "nll", "ece", "brier"} <= section["test"].keys() and section["shifted"] is None
    assert metrics["test"] == {"accuracy": 0.123} and metrics["keep"] == [1, 2]  # raw metrics untouched


def test_mimmo_evaluate_anytime_and_prune_exits_add_their_sections(run_dir, capsys):
    main(["evaluate", str(run_dir), "--anytime", "--thresholds", "0,0.5,1", "--prune-exits", "0.05"])
    out = capsys.readouterr().out
    assert "anytime" in out and "pruned at EPS=0.05" in out
    metrics = read_json(run_dir / "metrics.json")
    table = metrics["anytime"]
    assert [row["threshold"] for row in table["thresholds"]] == [0.0, 0.5, 1.0]
    assert table["thresholds"][-1]["accuracy"] == table["full"]["accuracy"]
    validation = table["validation"]  # the same sweep on the validation split, to choose a threshold on
    assert [row["threshold"] for row in validation["thresholds"]] == [0.0, 0.5, 1.0]
    assert validation["thresholds"][-1]["accuracy"] == validation["full"]["accuracy"]
    assert validation["num_images"] != table["num_images"]
    pruned = metrics["pruned"]
    assert pruned["exits_used"] == [True, False, True, True]
    assert pruned["cost"]["flops"] < table["full"]["flops"]
    assert metrics["test"] == {"accuracy": 0.123}
    with pytest.raises(SystemExit):
        main(["evaluate", str(run_dir), "--anytime", "--thresholds", "a,b"])


def test_mimmo_cost_run_prints_the_full_and_the_pruned_cost(run_dir, capsys):
    main(["cost", "--run", str(run_dir), "--prune-exits", "0.05"])
    out = capsys.readouterr().out
    full = read_json(run_dir / "metrics.json")["anytime"]["full"]["flops"]
    assert f"{int(full):,} FLOPs" in out
    assert "exits 1, 3, 4 of 4 run" in out
    with pytest.raises(SystemExit) as refused:  # a refusal: one line on stderr, exit status 2
        main(["cost", "--run", str(run_dir), "--prune-exits", "0.9"])
    assert refused.value.code == 2 and "drops every exit of member" in capsys.readouterr().err


def test_posthoc_commands_refuse_unfinished_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["calibrate", str(tmp_path)])
    assert refused.value.code == 2 and "not a finished run" in capsys.readouterr().err


def test_a_plain_reevaluation_keeps_the_posthoc_sections_it_does_not_compute(run_dir):
    metrics = read_json(run_dir / "metrics.json")
    metrics |= {"anytime": {"marker": 1}, "pruned": {"marker": 2}, "provenance": {"commit": "trained-here"}}
    write_json_atomic(run_dir / "metrics.json", metrics)
    main(["evaluate", str(run_dir)])
    again = read_json(run_dir / "metrics.json")
    assert again["provenance"] == {"commit": "trained-here"}  # the training's, kept
    assert again["evaluation_provenance"]["torch"] == torch.__version__  # this evaluation's, beside it
    assert again["anytime"] == {"marker": 1} and again["pruned"] == {"marker": 2}
    assert again["calibrated"]["temperature"] == read_json(run_dir / CALIBRATION_FILE)["temperature"]
    assert again["test"]["accuracy"] != 0.123  # the raw metrics were computed again
