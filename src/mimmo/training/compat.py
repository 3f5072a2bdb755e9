"""Every use of Lightning's and Hydra's private API, in one place, each checked before it is relied on.

mimmo relies on a few private names of Lightning and Hydra (below). A release may rename any of them, and an
override of a renamed method would silently never be called (a resumed run's log/metrics.csv deleted, last.ckpt
not written atomically). Each use is therefore checked where it is made: a missing name stops the run with one
line naming the installed version and the range mimmo is tested with (:class:`UnsupportedVersion`, exit status 1).
``pyproject.toml`` bounds both packages to that range.

* Lightning: ``LightningOptimizer._on_before_step/_on_after_step`` (how a manually stepped optimiser advances
  ``global_step``: :func:`counted_step`), the CSV logger's ``_experiment``/``_fs`` and its writer's
  ``_check_log_dir_exists`` (:class:`ResumableCSVLogger`), ``ModelCheckpoint._save_checkpoint`` and its
  ``_last_global_step_saved``/``_last_checkpoint_saved`` (:class:`WritingCheckpoint`).
* Hydra: ``BasicSweeper.split_arguments`` in ``hydra._internal`` (:func:`split_sweep`: a sweep's runs, in the
  order Hydra's basic sweeper gives them). Composing a config inside a running Hydra application
  (:func:`mimmo.config.compose`) uses only Hydra's public ``GlobalHydra`` methods.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from mimmo import RunStopped

# The versions mimmo is tested with (the bounds in pyproject.toml).
TESTED = {"lightning": ">=2.4,<2.7", "hydra-core": ">=1.3.2,<1.4"}
T = TypeVar("T")


class UnsupportedVersion(RunStopped):
    """An installed library lacks a private name mimmo relies on (exit status 1)."""


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def unsupported(package: str, what: str) -> UnsupportedVersion:
    return UnsupportedVersion(f"mimmo relies on {package}'s private {what}, which the installed {package} "
                              f"{installed(package)} does not have; mimmo is tested with {package}{TESTED[package]}: "
                              "install a version in that range")


def require(owner: Any, name: str, package: str) -> None:
    """UnsupportedVersion, in one line, unless ``owner`` (a class or an instance) has ``name``."""
    if not hasattr(owner, name):
        raise unsupported(package, f"{owner.__name__ if isinstance(owner, type) else type(owner).__name__}.{name}")


def check_private_api() -> None:
    """Check the private methods the classes below override (before a run's folder is created): an override of a
    renamed method would never be called."""
    require(ExperimentWriter, "_check_log_dir_exists", "lightning")
    require(ModelCheckpoint, "_save_checkpoint", "lightning")


def counted_step(optimizer: Any, step: Callable[[], T]) -> T:
    """Run ``step`` (which steps the wrapped optimiser itself) between the Lightning optimiser's hooks, through which
    Lightning counts optimiser steps: ``global_step`` and the checkpoint's step advance as with ``optimizer.step()``."""
    require(optimizer, "_on_before_step", "lightning")
    require(optimizer, "_on_after_step", "lightning")
    optimizer._on_before_step()
    result = step()
    optimizer._on_after_step()
    return result


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run appends to it instead."""

    def _check_log_dir_exists(self) -> None:
        require(self, "_fs", "lightning")
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose log/metrics.csv survives a resume (the epochs before the cut stay in it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require(self, "_experiment", "lightning")
        require(self, "_fs", "lightning")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class WritingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose file is written by :meth:`write` (a subclass says how, e.g. atomically)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require(self, "_last_global_step_saved", "lightning")
        require(self, "_last_checkpoint_saved", "lightning")

    def write(self, trainer: Any, filepath: str) -> None:
        trainer.save_checkpoint(filepath, self.save_weights_only)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        self.write(trainer, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def split_sweep(parsed: list[Any]) -> list[list[list[str]]]:
    """The jobs of a sweep's parsed overrides, in batches, as Hydra's basic sweeper gives them."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError as error:
        raise unsupported("hydra-core", "module hydra._internal.core_plugins.basic_sweeper") from error
    require(BasicSweeper, "split_arguments", "hydra-core")
    return BasicSweeper.split_arguments(parsed, None)
