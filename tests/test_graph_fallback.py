"""What happens when a CUDA graph cannot be trusted, checked on a CPU with stand-in backends.

Each stand-in fails the way a real capture can: the capture raises; it raises after a half-run step wrote garbage
gradients and applied them; its replay skips the optimiser step; its replay trains on the batch of its capture. A
run under ``train.cuda_graphs=auto`` then finishes with one warning and the weights of an eager run, bit for bit
(MixMo's mixing and MC Dropout's masks come from the random state the fallback restores); under ``true`` it stops
with that one line. Also: the settings under which ``auto`` stays eager, ``16-mixed`` refused, graphs released at
the end of a fit, the step counters under manual optimisation and the guarded private API (``mimmo.training.compat``).
"""

from __future__ import annotations

import gc
import json
import logging
import weakref
from collections.abc import Callable

import pytest
import torch
from test_graphed_step import METHOD_OVERRIDES
from tiny_runs import RecordingGraphs, assert_close_weights, tiny
from tiny_runs import train_eagerly_with_a_tensor_learning_rate as train_eagerly

from mimmo import training
from mimmo.cli.errors import run_reporting_errors
from mimmo.runs.checkpoints import load_checkpoint
from mimmo.runs.console import run_summary
from mimmo.training import MethodModule, compat, train, validate_training
from mimmo.training.step import CudaGraphFailure, TrainingStep, eager_reason

FAULTS = ("raises", "garbage", "skip", "stale")


class FaultyGraphs(RecordingGraphs):
    """:class:`RecordingGraphs` whose captures from the ``fail_at``-th on go wrong as ``fault`` says."""

    def __init__(self, fault: str, steps: list[TrainingStep], fail_at: int = 1) -> None:
        super().__init__()
        self.fault, self.steps, self.fail_at, self.recovered = fault, steps, fail_at, 0

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        replay = super().capture(fn)
        if self.captures < self.fail_at:
            return replay
        step = self.steps[-1]
        if self.fault in ("raises", "garbage"):
            if self.fault == "garbage":  # a capture that ran half a step before it failed
                for group in step.optimizer.param_groups:
                    for parameter in group["params"]:
                        parameter.grad = torch.full_like(parameter, 1e3)
                step.optimizer.step()
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        if self.fault == "skip":
            def skip_the_update() -> None:
                step.optimizer.step = lambda *args, **kwargs: None
                try:
                    replay()
                finally:
                    del step.optimizer.step
            return skip_the_update
        images, labels = step.images.clone(), step.labels.clone()  # the batch in the buffers at the capture

        def stale() -> None:
            step.images.copy_(images)
            step.labels.copy_(labels)
            replay()
        return stale

    def recover(self) -> None:
        self.recovered += 1


@pytest.fixture
def faulty(monkeypatch) -> Callable[..., list[FaultyGraphs]]:
    """Make the trainer take its graphed path on this CPU with a :class:`FaultyGraphs` backend."""
    steps: list[TrainingStep] = []
    made: list[FaultyGraphs] = []
    original = TrainingStep.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        steps.append(self)

    def use(fault: str, fail_at: int = 1) -> list[FaultyGraphs]:
        monkeypatch.setattr(TrainingStep, "__init__", init)
        monkeypatch.setattr(training.module, "cuda_graphs_available", lambda device, world_size: True)
        monkeypatch.setattr(training.module, "make_graph_backend",
                            lambda device: made.append(FaultyGraphs(fault, steps, fail_at)) or made[-1])
        return made
    return use


@pytest.fixture(scope="module")
def eager_runs(tmp_path_factory):
    """One eager run per method (the learning rate in a tensor, as on the graphed path), trained once."""
    runs = {}
    for method in ("mixmo", "mc_dropout"):
        run_dir = tmp_path_factory.mktemp("eager") / method
        runs[method] = (run_dir, train_eagerly(tiny(f"method={method}", "train.epochs=1",
                                                    *METHOD_OVERRIDES[method]), run_dir))
    return runs


def mimmo_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mimmo") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("method", ["mixmo", "mc_dropout"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_capture_falls_back_to_the_eager_run(tmp_path, faulty, eager_runs, caplog, fault, method):
    made = faulty(fault)
    with caplog.at_level(logging.WARNING):
        metrics = train(tiny(f"method={method}", "train.epochs=1", *METHOD_OVERRIDES[method]), tmp_path / "run")
    (backend,) = made
    assert backend.captures == 1 and backend.recovered == 1
    (warning,) = mimmo_warnings(caplog)
    assert "\n" not in warning and "train.cuda_graphs=false" in warning
    cause = {"raises": "operation not permitted", "garbage": "operation not permitted",
             "skip": "after the replayed step", "stale": "replayed step's loss"}[fault]
    assert cause in warning
    eager_dir, eager = eager_runs[method]
    assert_close_weights(tmp_path / "run", eager_dir)
    assert metrics["test"] == eager["test"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["cuda_graphs"]
    assert saved["requested"] == "auto" and saved["used"] is False and cause in saved["fallback_reason"]
    assert (saved["captures"], saved["replays"]) == (1, 0)


@pytest.mark.parametrize("fault", FAULTS)
def test_with_cuda_graphs_true_a_failed_capture_stops_the_run_keeping_its_checkpoint(tmp_path, faulty, fault):
    """MIMMO's second graph (after its warm-start epoch) fails: the run stops with the one line, and its folder
    keeps the checkpoint of the epoch before."""
    faulty(fault, fail_at=2)
    with pytest.raises(CudaGraphFailure) as stopped:
        train(tiny("method=mimmo", "train.cuda_graphs=true"), tmp_path)
    message = str(stopped.value)
    assert "\n" not in message and "train.cuda_graphs=false" in message and "train.cuda_graphs=true" in message
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not (tmp_path / "metrics.json").exists()


def test_the_cli_stops_with_one_line_and_status_1(capsys):
    def fail():
        raise CudaGraphFailure("CUDA graph capture of the training step failed (RuntimeError: x); train.cuda_graphs="
                               "false trains with eager steps")
    with pytest.raises(SystemExit) as stopped:
        run_reporting_errors("train", fail)
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "mimmo train: CUDA graph capture of the training step failed (RuntimeError: x); train.cuda_graphs=false "
        "trains with eager steps"]


def test_a_validated_graph_is_used_and_recorded(tmp_path, recording):
    metrics = train(tiny("method=mimo", "train.epochs=1"), tmp_path)
    assert metrics["cuda_graphs"] == {"requested": "auto", "used": True, "fallback_reason": None, "captures": 1,
                                      "replays": 5, "off_reason": None}  # 8 steps: 3 warm-up steps, then graphs
    assert "CUDA graphs: used (1 capture, 5 replays)" in run_summary(tmp_path, metrics)


def test_the_summary_says_whether_graphs_were_used(tmp_path):
    base = {"test": {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "brier": 0.5}}
    fell = {"requested": "auto", "used": False, "fallback_reason": "RuntimeError: x", "captures": 1, "replays": 0}
    off = {"requested": "auto", "used": False, "fallback_reason": None, "captures": 0, "replays": 0,
           "off_reason": "training on cpu, not a CUDA device"}
    assert run_summary(tmp_path, base | {"cuda_graphs": fell}).endswith(
        "CUDA graphs: fell back to eager steps (RuntimeError: x)")
    assert run_summary(tmp_path, base | {"cuda_graphs": off}).endswith(
        "CUDA graphs: off (training on cpu, not a CUDA device)")


# ------------------------------------------------------------------------------------ when auto stays eager


@pytest.mark.parametrize(("overrides", "strategy", "reason"), [
    (["train.compile=true"], "single_device", "train.compile=true"),
    ([], "DDPStrategy", "strategy DDPStrategy"),
    (["train.precision=16-true"], "single_device", "train.precision=16-true"),
    (["train.precision=64"], "single_device", "train.precision=64"),
    (["train.optimizer=sgd"], "single_device", "train.optimizer=sgd"),
])
def test_auto_is_eager_under_compile_any_data_parallel_strategy_and_other_precisions(overrides, strategy, reason):
    assert reason in eager_reason(tiny(*overrides).train, strategy)


@pytest.mark.parametrize("precision", ["32-true", "32", "bf16-mixed"])
def test_graphs_run_in_32_bit_and_bf16_mixed(precision):
    assert eager_reason(tiny(f"train.precision={precision}").train, "single_device") is None


def test_ddp_on_one_device_trains_eagerly(tmp_path, recording):
    """World size 1 but a DDP strategy: its reducer is not captured, so auto stays eager."""
    metrics = train(tiny("method=base", "train.epochs=1", "train.strategy=ddp", "train.devices=1",
                         "train.accelerator=cpu"), tmp_path)
    assert recording == []
    assert metrics["cuda_graphs"]["used"] is False and "DDPStrategy" in metrics["cuda_graphs"]["off_reason"]


@pytest.mark.parametrize(("overrides", "named"), [
    (["train.compile=true"], "train.compile=true"), (["train.strategy=ddp"], "strategy ddp"),
    (["train.devices=2"], "strategy ddp"), (["train.precision=bf16-true"], "train.precision=bf16-true"),
    (["train.accelerator=cpu"], "accelerator cpu")])
def test_cuda_graphs_true_refuses_those_settings_up_front(overrides, named):
    with pytest.raises(ValueError, match=rf"train\.cuda_graphs=true cannot replay .*{named}.*train\.cuda_graphs=auto"):
        validate_training(tiny("train.cuda_graphs=true", *overrides))


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_fp16_mixed_precision_is_refused_pointing_at_bf16(tmp_path, precision):
    with pytest.raises(ValueError, match=rf"train\.precision={precision} is not supported: .*loss scaler.*"
                                         r"use train\.precision=bf16-mixed"):
        train(tiny(f"train.precision={precision}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ lifetime, step counters


def test_graphs_are_released_at_the_end_of_a_fit_without_the_garbage_collector(tmp_path, recording):
    """The module and its trainer refer to each other; the captured step must not wait for a collection of them."""
    graphs = []
    original = RecordingGraphs.capture

    def capture(self, fn):
        replay = original(self, fn)
        graphs.append(weakref.ref(replay))
        return replay

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecordingGraphs, "capture", capture)
        gc.collect()
        gc.disable()
        try:
            train(tiny("method=mimmo", "train.epochs=2"), tmp_path)
            assert len(graphs) == 2 and all(graph() is None for graph in graphs)
        finally:
            gc.enable()


def test_global_step_and_the_checkpoints_step_advance_under_manual_optimisation(tmp_path, monkeypatch):
    """Lightning counts optimiser steps through hooks that mimmo calls around its own step (mimmo.training.compat)."""
    seen = []
    original = MethodModule.on_train_epoch_end

    def record(self):
        seen.append(self.trainer.global_step)
        original(self)

    monkeypatch.setattr(MethodModule, "on_train_epoch_end", record)
    train(tiny("method=base", "train.epochs=2"), tmp_path)
    assert seen == [8, 16]  # 256 images in batches of 32
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 16


# ------------------------------------------------------------------------------------ private API, guarded


def test_a_renamed_private_name_stops_with_one_line_naming_the_versions(monkeypatch, capsys):
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.delattr(ModelCheckpoint, "_save_checkpoint")
    with pytest.raises(SystemExit) as stopped:
        run_reporting_errors("train", compat.check_private_api)
    assert stopped.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"the installed lightning {compat.installed('lightning')} does not have" in line
    assert "ModelCheckpoint._save_checkpoint" in line and "tested with lightning>=2.4,<2.7" in line


def test_the_optimiser_hooks_are_checked_before_they_are_called():
    with pytest.raises(compat.UnsupportedVersion, match=r"lightning's private object\._on_before_step"):
        compat.counted_step(object(), lambda: None)
