"""Training runs end to end (run folder, load, determinism, resume, refusals), the data and the CLI."""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import json
import math
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from mimmo import training
from mimmo.cli import main
from mimmo.config import compose
from mimmo.data.datasets import ImageSet, load_embedded
from mimmo.data.loader import BatchLoader
from mimmo.evaluation.metrics import classification_metrics
from mimmo.methods.base import LossOutput
from mimmo.methods.mimmo import MIMMO
from mimmo.runs.folder import read_json
from mimmo.training import MethodModule, load_run, train

TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=256",
        "train.epochs=2", "train.batch_size=32", "train.eval_batch_size=500", "train.progress_bar=false",
        "train.warm_start_epochs=1", "evaluation.shifted=false"]
METRIC_KEYS = ("accuracy", "nll", "ece", "brier")


def tiny(*overrides: str):
    return compose([*TINY, *overrides])


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "weights.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights_of(a), weights_of(b)
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"tensors differ: {different[:5]}"


def results(metrics: dict) -> str:
    """What a run computes (not how long it took), as JSON text so that a NaN equals a NaN."""
    keys = ("test", "validation", "cost", "exit_weights", "exit_weights_history")
    return json.dumps({key: metrics[key] for key in keys}, sort_keys=True)


class CutOff(Exception):
    """Stands for a run killed from outside (pre-emption, power cut)."""


@pytest.fixture(scope="module")
def batches_per_epoch() -> int:
    return len(training.load_splits(tiny()).train) // 32


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    return run_dir, train(tiny(), run_dir)


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


def assert_refused_before_training(run_dir: Path) -> None:
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


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


def test_missing_cifar_names_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/cifar-100-python"):
        train(tiny("data=cifar100", "data.root=/nonexistent"), tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


GARBAGE = {
    "text": b"this is not a CIFAR batch, just garbage bytes\n" * 20,
    "zeros": bytes(4096),
    "truncated": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})[:100],
    "not_a_dict": pickle.dumps([1, 2, 3]),
    "wrong_key": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}),
    "wrong_size": pickle.dumps({b"data": np.zeros((4, 1000), np.uint8), b"labels": [0, 1, 2, 3]}),
    "label_count": pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}),
    # Opcode BINBYTES8 announcing 2**63 - 1 bytes: pickle raises OverflowError before reading anything.
    "huge_length": b"\x8e" + b"\xff" * 7 + b"\x7f" + bytes(64),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_corrupt_cifar_is_refused_with_a_value_error(tmp_path, kind):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(GARBAGE[kind])
    with pytest.raises(ValueError, match=r"data_batch_1"):
        train(tiny("data=cifar10", f"data.root={tmp_path / 'data'}"), tmp_path / "run")
    assert_refused_before_training(tmp_path / "run")


# -------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def embedded():
    return {"first": load_embedded(0), "again": load_embedded(0), "other": load_embedded(1)}


def raw_embedded() -> tuple[np.ndarray, np.ndarray]:
    folder = importlib.resources.files("animal_shape_mnist") / "data" / "Animal Shape"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    return images, labels


def all_images(splits) -> torch.Tensor:
    return torch.cat([splits.train.images, splits.validation.images, splits.test.images]).flatten(1)


def test_embedded_splits_are_disjoint_and_deduplicated(embedded):
    splits = embedded["first"]
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.images.dtype == torch.uint8
    images = all_images(splits)
    assert len(torch.unique(images, dim=0)) == len(images)  # no image twice, within or across splits
    raw_images, _ = raw_embedded()
    assert len(raw_images) == 10_000
    # every distinct image is used: only exact duplicates were dropped
    assert len(images) == len(np.unique(raw_images.reshape(len(raw_images), -1), axis=0))


def test_embedded_splits_are_stratified(embedded):
    splits = embedded["first"]
    labels = torch.cat([splits.train.labels, splits.validation.labels, splits.test.labels])
    per_class = torch.bincount(labels, minlength=10)
    test = torch.bincount(splits.test.labels, minlength=10)
    validation = torch.bincount(splits.validation.labels, minlength=10)
    assert bool(((test - 0.2 * per_class).abs() <= 1).all())
    assert bool(((validation - 0.1 * (per_class - test)).abs() <= 1).all())
    assert not bool((splits.train.labels[1:] >= splits.train.labels[:-1]).all())  # shuffled, not sorted


def test_embedded_splits_are_deterministic_per_seed(embedded):
    first, again, other = embedded["first"], embedded["again"], embedded["other"]
    for name in ("train", "validation", "test"):
        assert torch.equal(getattr(first, name).images, getattr(again, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(again, name).labels)
    assert not torch.equal(first.test.images, other.test.images)
    assert len(torch.unique(all_images(other), dim=0)) == len(all_images(first))


def test_train_size_keeps_a_stratified_subset_and_the_same_held_out_sets(embedded):
    full = embedded["first"]
    small = load_embedded(0, train_size=200)
    assert len(small.train) == 200
    share = torch.bincount(full.train.labels, minlength=10) / len(full.train)
    assert bool(((torch.bincount(small.train.labels, minlength=10) - 200 * share).abs() <= 1).all())
    full_rows = {bytes(row.numpy()) for row in full.train.images.flatten(1)}
    assert all(bytes(row.numpy()) in full_rows for row in small.train.images.flatten(1))
    assert torch.equal(small.validation.images, full.validation.images)
    assert torch.equal(small.test.images, full.test.images)
    with pytest.raises(ValueError, match="train_size"):
        load_embedded(0, train_size=10**6)
    with pytest.raises(ValueError, match=r"validation_fraction must lie in \(0, 1\), got 1\.5"):
        load_embedded(0, validation_fraction=1.5)


def indexed_set(size: int) -> ImageSet:
    """Image j is the constant j (uint8), label j: a batch shows which samples it holds."""
    images = torch.arange(size, dtype=torch.uint8)[:, None, None, None].expand(size, 1, 2, 2).clone()
    return ImageSet(images, torch.arange(size))


def epoch_order(loader: BatchLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    batches = []
    for images, labels in loader:
        assert torch.equal(images[..., 0, 0, 0].long(), labels)  # images follow their labels
        batches.append(labels)
    return torch.cat(batches)


def test_batch_loader_covers_every_sample_once_per_epoch():
    loader = BatchLoader(indexed_set(103), 10, shuffle=True, seed=3)
    assert len(loader) == 10
    for epoch in range(3):
        order = epoch_order(loader, epoch)
        assert order.shape == (100,)
        assert len(torch.unique(order)) == 100  # every sample at most once; only the remainder of 3 dropped


def test_batch_loader_is_deterministic_per_seed_and_epoch():
    data = indexed_set(103)
    first = epoch_order(BatchLoader(data, 10, shuffle=True, seed=3), 0)
    again = BatchLoader(data, 10, shuffle=True, seed=3)
    assert torch.equal(epoch_order(again, 0), first)
    assert not torch.equal(epoch_order(again, 1), first)  # another epoch, another order
    assert torch.equal(epoch_order(again, 0), first)
    assert not torch.equal(epoch_order(BatchLoader(data, 10, shuffle=True, seed=4), 0), first)


def test_batch_loader_streams_are_independent_orders():
    loader = BatchLoader(indexed_set(103), 10, shuffle=True, seed=3, streams=3)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 10
    images, labels = batches[0]
    assert images.shape == (10, 3, 1, 2, 2) and labels.shape == (10, 3)
    orders = torch.cat([y for _, y in batches])  # (100, 3)
    for s in range(3):
        assert len(torch.unique(orders[:, s])) == 100
        assert torch.equal(torch.cat([x for x, _ in batches])[:, s, 0, 0, 0].long(), orders[:, s])
    assert not torch.equal(orders[:, 0], orders[:, 1]) and not torch.equal(orders[:, 1], orders[:, 2])
    # an independent order agrees with another in about 1 of 103 positions, not in most of them
    assert int((orders[:, 0] == orders[:, 1]).sum()) < 10


def test_batch_loader_in_evaluation_order_keeps_every_sample():
    loader = BatchLoader(indexed_set(103), 10, shuffle=False)
    assert len(loader) == 11
    assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(103))


def test_batch_loader_splits_batches_between_processes():
    data = indexed_set(103)
    loaders = [BatchLoader(data, 10, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [len(loader) for loader in loaders] == [10, 10]  # as many steps as one process
    parts = [epoch_order(loader, 0) for loader in loaders]
    assert all(len(p) == 50 for p in parts)  # each takes half of every batch of 10
    assert len(torch.unique(torch.cat(parts))) == 100
    whole = epoch_order(BatchLoader(data, 10, shuffle=True, seed=3), 0)
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.sort(whole).values)
    with pytest.raises(ValueError, match=r"train.batch_size \(10\) must be divisible by the number of processes \(3\)"):
        BatchLoader(data, 10, shuffle=True, rank=0, world_size=3)


def test_batch_loader_refuses_bad_sizes():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader(indexed_set(5), 0, shuffle=False)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the 5 training samples"):
        BatchLoader(indexed_set(5), 8, shuffle=True)


# --------------------------------------------------------------------------------------------------- CLI


def test_cost_command_prints_the_papers_base_cost(capsys):
    main(["cost", "method=base", "data=cifar100"])
    out = capsys.readouterr().out
    assert "109.85 M FLOPs" in out and "1.76 M params" in out
    assert "109,852,872 FLOPs" in out and "1,756,340 params" in out


def test_cost_command_prints_the_papers_mimmo_cost(capsys):
    main(["cost", "method=mimmo", "method.num_members=2", "data=cifar100"])
    out = capsys.readouterr().out
    assert "172.82 M FLOPs" in out and "2.04 M params" in out
