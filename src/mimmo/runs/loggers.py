"""The experiment loggers beside the run folder's CSV (``train.loggers``; docs/run-folder.md, "Loggers").

``log/metrics.csv`` is always written. ``tensorboard``, ``wandb`` and ``mlflow`` each come from an optional extra
(``pip install 'mimmo[tensorboard]'``, ...) and receive the same per-epoch metrics as the CSV (Lightning sends every
logged value to every logger), θ per epoch for the methods that learn exit weights, and the final test and
shifted-set summary. Where each writes, and how a resumed run continues:

- tensorboard: event files in ``log/tensorboard/``; a resumed run adds an event file to the same folder, which
  TensorBoard reads as one run;
- mlflow: a file store in ``log/mlruns/`` (experiment ``mimmo``) unless ``MLFLOW_TRACKING_URI`` is set (MLflow 3
  keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which mimmo sets
  for its own default); a resumed run logs into the same MLflow run (its id is kept in ``log/loggers.json``);
- wandb: ``log/wandb/``, offline unless an API key is configured (``WANDB_API_KEY`` or ``wandb login``) or
  ``WANDB_MODE`` says otherwise (it is honoured as set); a resumed run reuses the run id with
  ``resume="allow"``: online that continues the same W&B run, offline each start writes its own offline-run
  folder under that id (``wandb sync`` uploads them).
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from mimmo.runs.folder import write_text_atomic

IDS_FILE = "loggers.json"  # in log/: the MLflow and W&B run ids, so that a resumed run continues them
MLFLOW_EXPERIMENT = "mimmo"


def _read_ids(log_dir: Path) -> dict[str, str]:
    path = log_dir / IDS_FILE
    if not path.exists():
        return {}
    try:
        ids = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); remove it to start new logger runs") from None
    if not isinstance(ids, dict):
        raise ValueError(f"{path} must hold an object of run ids, got {type(ids).__name__}")
    return ids


def wandb_has_key() -> bool:
    """Whether W&B can reach its server: an API key in ``WANDB_API_KEY`` or in ~/.netrc (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def extra_loggers(names: Sequence[str], log_dir: Path, run_name: str) -> list[Logger]:
    """The Lightning loggers for ``names`` other than csv, writing under ``log_dir`` and continuing the runs whose
    ids ``log_dir/loggers.json`` holds."""
    ids = _read_ids(log_dir)
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(str(log_dir), name="", version="tensorboard", default_hp_metric=False))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the file store in the run folder: recent MLflow refuses it unless this is set
                uri = (log_dir / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            logger = MLFlowLogger(experiment_name=MLFLOW_EXPERIMENT, run_name=run_name, tracking_uri=uri,
                                  run_id=ids.get("mlflow"))
            ids["mlflow"] = logger.run_id  # creates the run (or finds the resumed one)
            loggers.append(logger)
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            offline = "WANDB_MODE" not in os.environ and not wandb_has_key()
            run_id = ids.get("wandb") or secrets.token_hex(6)  # a W&B run id: lowercase letters and digits
            ids["wandb"] = run_id
            loggers.append(WandbLogger(name=run_name, save_dir=str(log_dir), id=run_id, offline=offline,
                                       resume="allow", project=os.environ.get("WANDB_PROJECT", "mimmo")))
    if ids:
        log_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(log_dir / IDS_FILE, json.dumps(ids, indent=2) + "\n")
    return loggers


def summary_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The final numbers of metrics.json that the loggers receive: ``test/<metric>`` (every scalar of the clean test
    set) and ``shifted/<metric>`` (its mean over the shifted sets), as metrics.json holds them."""
    summary: dict[str, float] = {}
    for key, value in (results.get("test") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            summary[f"test/{key}"] = float(value)
    for key, stats in ((results.get("shifted") or {}).get("summary") or {}).items():
        if isinstance(stats, Mapping) and isinstance(stats.get("mean"), int | float):
            summary[f"shifted/{key}"] = float(stats["mean"])
    return summary


def finish_loggers(loggers: Sequence[Logger], results: Mapping[str, Any], step: int) -> None:
    """Send the final summary to every extra logger and close it (W&B's offline files are complete after this)."""
    summary = summary_metrics(results)
    for logger in loggers:
        if summary:
            logger.log_metrics(summary, step=step)
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
