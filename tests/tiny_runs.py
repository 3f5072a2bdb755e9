"""The tiny training config every end-to-end test trains with, and how tests compare runs (weights, results)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mimmo import training
from mimmo.config import compose
from mimmo.training import train
from mimmo.training.step import prepare_optimizer

# Two epochs of 8 batches on 256 embedded images with a 4-channel ResNet: seconds on one CPU thread.
TINY = ["model.planes=[4,4,4,4]", "model.layers=[1,1,1,1]", "model.stem_channels=4", "data.train_size=256",
        "train.epochs=2", "train.batch_size=32", "train.eval_batch_size=500", "train.progress_bar=false",
        "train.warm_start_epochs=1", "evaluation.shifted=false", "train.threads=1"]


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


def assert_close_weights(a, b, rtol=0.0, atol=0.0) -> None:
    first, second = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=rtol, atol=atol, msg=key)


class RecordingGraphs:
    """A stand-in for CUDA graphs on a CPU: ``capture`` records a step without running it, a replay runs it."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0
        self.warmups = 0

    def warmup(self, fn: Callable[[], None]) -> None:
        self.warmups += 1
        fn()

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        self.captures += 1

        def replay() -> None:
            self.replays += 1
            fn()
        return replay

    def recover(self) -> None:
        pass


def train_eagerly_with_a_tensor_learning_rate(cfg, run_dir):
    """The eager reference for a graphed run: the same optimiser numerics (a float32 tensor learning rate rounds
    differently from a Python float, and Adam amplifies such differences chaotically over a run)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.module, "cuda_graphs_available", lambda device, world_size: False)
        patch.setattr(training.module, "prepare_optimizer", lambda optimizer, graphs, device: prepare_optimizer(
            optimizer, True, device))
        return train(cfg, run_dir)


def assert_refused_before_training(run_dir: Path) -> None:
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
