"""Training runs end to end (run folder, load, determinism, resume, refusals), the data and the CLI."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tiny_runs import assert_refused_before_training, assert_same_weights, results, tiny, weights_of

from mimmo import training
from mimmo.evaluation.metrics import classification_metrics
from mimmo.methods.base import LossOutput
from mimmo.methods.mimmo import MIMMO
from mimmo.runs.folder import read_json
from mimmo.training import MethodModule, load_run, train

METRIC_KEYS = ("accuracy", "nll", "ece", "brier")


class CutOff(Exception):
    """Stands for a run killed from outside (pre-emption, power cut)."""


@pytest.fixture(scope="module")
def batches_per_epoch() -> int:
    return len(training.load_splits(tiny()).train) // 32


# ----------------------------------------------------------------------------------------- a finished run


def test_a_run_folder_holds_every_artefact(finished_run):
    run_dir, returned = finished_run
    for name in ("config.yaml", "metrics.json", "weights.safetensors", "checkpoints/last.ckpt", "log/metrics.csv"):
        assert (run_dir / name).is_file(), name
    metrics = read_json(run_dir / "metrics.json")
    assert metrics == returned
    assert (metrics["method"], metrics["dataset"], metrics["num_members"], metrics["num_exits"]) == (
        "mimmo", "embedded", 2, 4)
    for split in ("test", "validation"):
        values = metrics[split]
        assert set(METRIC_KEYS) <= values.keys()
        assert 0.0 <= values["accuracy"] <= 1.0 and 0.0 <= values["ece"] <= 1.0 and 0.0 <= values["brier"] <= 1.0
        assert 0.0 < values["nll"] < 10.0 and math.isfinite(values["nll"])
    cost = metrics["cost"]
    assert isinstance(cost["flops"], int) and isinstance(cost["params"], int)
    assert cost["flops"] > 0 and cost["params"] > 0
    weights = torch.tensor(metrics["exit_weights"])
    assert weights.shape == (4, 2) and torch.allclose(weights.sum(0), torch.ones(2))
    history = metrics["exit_weights_history"]
    assert len(history) == 2 and all(torch.tensor(h).shape == (4, 2) for h in history)
    assert torch.allclose(torch.tensor(history[0]), torch.full((4, 2), 0.25))  # the warm-start epoch
    assert torch.allclose(torch.tensor(history[-1]), weights)
    assert not torch.allclose(weights, torch.full((4, 2), 0.25))  # θ was learned after the warm start


def test_config_yaml_is_the_resolved_config(finished_run):
    run_dir, _ = finished_run
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(tiny(), resolve=True)
    assert saved.method.warm_start_epochs == 1  # the interpolation is stored resolved


def test_the_csv_log_has_a_row_per_epoch(finished_run):
    run_dir, _ = finished_run
    with open(run_dir / "log" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_epochs = sorted(int(r["epoch"]) for r in rows if r.get("val/accuracy"))
    train_epochs = sorted(int(r["epoch"]) for r in rows if r.get("train/loss"))
    assert val_epochs == [0, 1] and train_epochs == [0, 1]


def test_the_last_checkpoint_is_the_final_epoch(finished_run, batches_per_epoch):
    run_dir, _ = finished_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * batches_per_epoch
    final = weights_of(run_dir)
    state = checkpoint["state_dict"]
    for key, value in final.items():
        assert torch.equal(state[key], value), key


def test_load_run_rebuilds_the_trained_model(finished_run):
    run_dir, metrics = finished_run
    method, normalizer, cfg = load_run(run_dir)
    assert isinstance(method, MIMMO) and not method.training
    saved = weights_of(run_dir)
    for key, value in method.state_dict().items():
        assert torch.equal(value, saved[f"method.{key}"]), key
    assert torch.equal(method.exit_weights(), torch.tensor(metrics["exit_weights"]))
    splits = training.load_splits(cfg)
    with torch.no_grad():
        log_probs = torch.cat([method(normalizer(splits.test.images[i:i + 500])).log_probs()
                               for i in range(0, len(splits.test), 500)])
    recomputed = classification_metrics(log_probs, splits.test.labels)
    for key in METRIC_KEYS:
        assert recomputed[key] == pytest.approx(metrics["test"][key], abs=1e-6), key


def test_load_run_refuses_an_unfinished_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        load_run(tmp_path)


def test_a_finished_run_is_skipped(finished_run, monkeypatch):
    run_dir, metrics = finished_run
    before = (run_dir / "weights.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not load data or train again")

    monkeypatch.setattr(training.build, "load_splits", no_training)
    monkeypatch.setattr(L, "Trainer", no_training)
    assert train(tiny(), run_dir) == metrics
    assert train(tiny("train.progress_bar=true"), run_dir) == metrics  # not part of what a run computes
    assert (run_dir / "weights.safetensors").stat().st_mtime_ns == before


def test_a_folder_holding_another_config_is_refused(finished_run):
    run_dir, metrics = finished_run
    for override in ("seed=1", "method.alpha=2.0", "train.epochs=3"):
        with pytest.raises(ValueError, match="holds a run with another config"):
            train(tiny(override), run_dir)
    assert read_json(run_dir / "metrics.json") == metrics


# ------------------------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_run(finished_run, tmp_path):
    run_dir, metrics = finished_run
    again = train(tiny(), tmp_path / "again")
    assert results(again) == results(metrics)
    assert_same_weights(run_dir, tmp_path / "again")


def test_another_seed_gives_another_run(finished_run, tmp_path):
    run_dir, metrics = finished_run
    other = train(tiny("seed=1"), tmp_path / "other")
    assert other["test"]["nll"] != metrics["test"]["nll"]
    first, second = weights_of(run_dir), weights_of(tmp_path / "other")
    assert not torch.equal(first["method.network.backbone.head.weight"],
                           second["method.network.backbone.head.weight"])


# ------------------------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A run cut off in the middle of its second epoch, then started again in the same folder."""
    run_dir = tmp_path_factory.mktemp("runs") / "resumed"
    original = MethodModule.training_step
    epochs_seen: list[int] = []

    def cut_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3:
            raise CutOff("killed")
        return original(self, batch, batch_idx)

    def record(self, batch, batch_idx):
        epochs_seen.append(self.current_epoch)
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodModule, "training_step", cut_in_epoch_two)
        with pytest.raises(CutOff):
            train(tiny(), run_dir)
    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = (torch.load(checkpoint_path, map_location="cpu", weights_only=True)
                  if checkpoint_path.is_file() else None)
    finished_before = (run_dir / "metrics.json").exists()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MethodModule, "training_step", record)
        metrics = train(tiny(), run_dir)
    return run_dir, metrics, checkpoint, finished_before, epochs_seen


def test_a_cut_off_run_leaves_the_checkpoint_of_its_last_whole_epoch(resumed_run, batches_per_epoch):
    _, _, checkpoint, finished_before, _ = resumed_run
    assert not finished_before
    assert checkpoint is not None, "no checkpoints/last.ckpt after a whole epoch: nothing to resume from"
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == batches_per_epoch


def test_a_resumed_run_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(finished_run, resumed_run,
                                                                                batches_per_epoch):
    reference_dir, reference = finished_run
    run_dir, metrics, _, _, epochs_seen = resumed_run
    assert epochs_seen == [1] * batches_per_epoch  # only the unfinished epoch ran again
    assert_same_weights(reference_dir, run_dir)
    assert results(metrics) == results(reference)


def test_a_compiled_run_trains_the_same_weights(tmp_path, monkeypatch, finished_run):
    """``train.compile=true`` compiles the training step's loss: the same math. (Traced by
    TorchDynamo with its eager backend here, so that the test needs no C++ compiler.)"""
    compiled = []
    original = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn.__name__) or original(fn, backend="eager"))
    reference_dir, reference = finished_run
    metrics = train(tiny("train.compile=true"), tmp_path)
    torch._dynamo.reset()
    assert compiled == ["training_loss"]
    assert_same_weights(reference_dir, tmp_path)
    assert results(metrics) == results(reference)


def test_a_resumed_run_keeps_the_log_of_the_epochs_before_the_cut(resumed_run):
    run_dir, _, _, _, _ = resumed_run
    with open(run_dir / "log" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/accuracy")}) == [0, 1]


@pytest.mark.parametrize("check_every", [1, 3, 50])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                          batches_per_epoch, check_every):
    """Losses are read on the host every ``train.log_every_n_steps`` batches and at each epoch's end; the
    error names the first non-finite batch whichever batch the check ran at, and it comes before the epoch's
    checkpoint."""
    original = MIMMO.training_loss
    calls = []

    def nan_in_epoch_two(self, x, y, progress):
        out = original(self, x, y, progress)
        calls.append(progress.epoch)
        if len(calls) == batches_per_epoch + 3:  # epoch 1, batch 2
            return LossOutput(out.loss * float("nan"), out.logs)
        return out

    monkeypatch.setattr(MIMMO, "training_loss", nan_in_epoch_two)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at epoch 1, batch 2.*last\.ckpt"):
        train(tiny(f"train.log_every_n_steps={check_every}"), tmp_path)
    assert len(calls) == batches_per_epoch + min(check_every * -(-3 // check_every), batches_per_epoch)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "weights.safetensors").exists()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    cfg = OmegaConf.load(tmp_path / "config.yaml")
    method = training.build_method_from_config(cfg, (1, 28, 28), 10)
    state = {k.removeprefix("method."): v for k, v in checkpoint["state_dict"].items() if k.startswith("method.")}
    method.load_state_dict(state)  # strict: every tensor is there
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ bad input refused


@pytest.mark.parametrize(("overrides", "match"), [
    (["method.num_members=0"], r"num_members must be an integer >= 1, got 0"),
    (["method=mimo", "method.num_members=-1"], r"num_members must be an integer >= 1, got -1"),
    (["method.repetitions=0"], r"repetitions \(batch repetition R\) must be an integer >= 1, got 0"),
    (["method.input_repetition=1.5"], r"input_repetition \(rho\) must lie in \[0, 1\], got 1\.5"),
    (["method.input_repetition=-0.25"], r"input_repetition \(rho\) must lie in \[0, 1\], got -0\.25"),
    (["method.alpha=-1.0"], r"alpha \(KL weight\) must be a finite number >= 0, got -1\.0"),
    (["method.alpha=inf"], r"alpha \(KL weight\) must be a finite number >= 0, got inf"),
    (["train.lr=inf"], r"train\.lr must be a finite number > 0, got inf"),
    (["method.num_members=true"], r"num_members must be an integer >= 1, got True"),
    (["train.batch_size=1000"], r"train\.batch_size must be <= the training split's 256 images.*got 1000"),
    (["method.prior=[0.5,0.5]"], r"prior must have shape .*got \(2,\)"),
    (["method.prior=uniform"], r"prior must be null \(uniform 1/D\), a list of D=4 numbers .*got 'uniform'"),
    (["method.prior=[0.1,0.1,0.1,0.1]"], r"prior must sum to 1 .*0\.4"),
    (["train.warm_start_epochs=2"], r"warm_start_epochs \(2\) must be < train\.epochs \(2\)"),
    (["train.warm_start_epochs=5"], r"warm_start_epochs \(5\) must be < train\.epochs \(2\)"),
    (["train.channels_last=sometimes"], r"train\.channels_last must be true, false or auto, got 'sometimes'"),
    (["train.compile=yes"], r"train\.compile must be true or false, got 'yes'"),
    (["train.log_every_n_steps=0"], r"train\.log_every_n_steps must be an integer >= 1, got 0"),
    (["seed=-1"], r"seed must be an integer in \[0, 4294967295\] \(2\*\*32 - 1, numpy's range\), got -1"),
    (["seed=4294967296"], r"seed must be an integer in \[0, 4294967295\].*got 4294967296"),
    (["+method.dropout=0.5"], r"unknown setting method\.dropout \(nothing reads it\); the method settings are alpha, "),
    (["model.layers=[1,1,1,1,1,1]", "model.planes=[4,4,4,4,4,4]", "model.strides=[2,2,2,2,2,2]"],
     r"input size \(28, 28\) is too small .*>= 64"),
])
def test_bad_configs_are_refused_before_training(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(tiny(*overrides), tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


@pytest.mark.parametrize(("key", "value", "match"), [
    ("method.name", "nope", r"unknown method 'nope'"),
    ("data.name", "mnist", r"unknown dataset 'mnist'"),
])
def test_unknown_names_are_refused(tmp_path, key, value, match):
    cfg = tiny("method=base")
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ValueError, match=match):
        train(cfg, tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


# -------------------------------------------------------------------------------------------------- data


# --------------------------------------------------------------------------------------------------- CLI


