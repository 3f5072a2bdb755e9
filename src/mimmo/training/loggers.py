"""Which experiment loggers a run uses (``train.loggers``), checked before anything is built, and what the training
module sends them beyond Lightning's logged values (θ per epoch). The loggers themselves write into the run
folder: :mod:`mimmo.runs.loggers` (docs/run-folder.md, "Loggers")."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from lightning.pytorch.loggers import CSVLogger, Logger

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
# The module each optional logger imports, and the extra that installs it.
REQUIRES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow")}


def logger_names(loggers: object) -> list[str]:
    """The validated ``train.loggers`` list, csv first (it is always on); ValueError naming a bad entry."""
    if isinstance(loggers, str) or not isinstance(loggers, Sequence):
        raise ValueError(f"train.loggers must be a list of logger names from {list(LOGGERS)}, e.g. [csv,tensorboard]; "
                         f"got {loggers!r}")
    names = list(loggers)
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ValueError(f"train.loggers has unknown logger(s) {unknown}; choose from {list(LOGGERS)}")
    return ["csv", *dict.fromkeys(name for name in names if name != "csv")]


def check_loggers(loggers: object) -> list[str]:
    """:func:`logger_names`, and every chosen logger's package importable; else ValueError naming the extra."""
    names = logger_names(loggers)
    for name in names[1:]:
        module, extra = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"train.loggers: {name} needs the package {module!r}, which is not installed; "
                             f"install it with pip install 'mimmo[{extra}]'")
    return names


def log_exit_weights(loggers: Sequence[Logger], weights: Sequence[Sequence[float]], step: int) -> None:
    """θ (D, M) as ``theta/exit{i}_member{m}`` (1-based) at ``step``, to every logger but the CSV (whose columns
    stay the per-epoch metrics; metrics.json keeps θ's history)."""
    values = {f"theta/exit{i + 1}_member{m + 1}": float(value)
              for i, row in enumerate(weights) for m, value in enumerate(row)}
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            logger.log_metrics(values, step=step)
