"""Training any method with Lightning: the config checked and built (:mod:`~mimmo.training.build`), the Lightning
module (:mod:`~mimmo.training.module`), one optimiser step (:mod:`~mimmo.training.step`), the recipe
(:mod:`~mimmo.training.recipe`) and data-parallel settings (:mod:`~mimmo.training.ddp`).

Training a run into its folder is :func:`mimmo.runs.train.train`; it and :func:`mimmo.runs.checkpoints.load_run`
stay importable from here (``mimmo.training.train``, ``mimmo.training.load_run``), loaded on first use so that
this package does not import the higher ``mimmo.runs`` layer (docs/architecture.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from mimmo.training.build import (
    build_method_from_config,
    build_normalizer,
    check_data_fits,
    input_spec,
    load_splits,
    model_input_shape,
    prepare_run,
    validate_training,
)
from mimmo.training.ddp import trainer_strategy
from mimmo.training.module import MethodModule

# Names documented under mimmo.training that live in mimmo.runs (module of each).
_RUNS_NAMES = {"train": "mimmo.runs.train", "load_run": "mimmo.runs.checkpoints",
               "evaluate_run": "mimmo.runs.evaluate", "semantic_config": "mimmo.runs.folder"}

__all__ = ["MethodModule", "build_method_from_config", "build_normalizer", "check_data_fits", "input_spec",
           "load_splits", "model_input_shape", "prepare_run", "trainer_strategy", "validate_training",
           *_RUNS_NAMES]


def __getattr__(name: str) -> Any:
    """``mimmo.training.train`` and the other run-level names, imported from :mod:`mimmo.runs` when first used."""
    if name in _RUNS_NAMES:
        return getattr(import_module(_RUNS_NAMES[name]), name)
    raise AttributeError(f"module 'mimmo.training' has no attribute {name!r}")
