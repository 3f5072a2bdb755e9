"""Training a run into its folder: checked before the folder exists, locked while it works, resumable after a
signal, and finished by writing the weights, calibration.json and metrics.json (docs/run-folder.md)."""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from mimmo.data.datasets import Normalizer, Splits
from mimmo.data.registry import check_data, dataset_identity
from mimmo.methods.base import Method
from mimmo.runs.checkpoints import AtomicCheckpoint, load_checkpoint, save_weights
from mimmo.runs.console import run_summary
from mimmo.runs.evaluate import evaluate_model, write_calibration_of
from mimmo.runs.folder import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    LOG_DIR,
    METRICS_FILE,
    WEIGHTS_FILE,
    check_same_dataset,
    config_text,
    is_rank_zero_launcher,
    lock,
    read_config,
    read_metrics,
    semantic_config,
    write_metrics,
    write_text_atomic,
)
from mimmo.runs.loggers import extra_loggers, finish_loggers
from mimmo.runs.provenance import provenance
from mimmo.runs.signals import Interrupted, SignalStop, StopAtBatchEnd, stop_on_signals
from mimmo.training.build import build_normalizer, configure_threads, prepare_run
from mimmo.training.compat import ResumableCSVLogger
from mimmo.training.ddp import DDP_LAUNCH_ENVIRONMENT, trainer_strategy
from mimmo.training.loggers import check_loggers
from mimmo.training.module import MethodModule

log = logging.getLogger("mimmo")


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of ``run_dir`` if it holds this run finished; None if it is new or cut off; ValueError if it
    holds another config or an unreadable file."""
    if (run_dir / CONFIG_FILE).exists() and semantic_config(read_config(run_dir)) != semantic_config(cfg):
        raise ValueError(f"{run_dir} holds a run with another config; choose another output_dir or remove it")
    check_same_dataset(cfg, run_dir)
    metrics = read_metrics(run_dir)
    if metrics is not None:
        log.info("%s already finished; skipping (remove %s to run it again)", run_dir, METRICS_FILE)
    return metrics


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its last checkpoint) and return its metrics.

    The config, the data and the method are checked before the folder is created (ValueError naming the bad
    value); the folder is locked while the run works in it (:class:`~mimmo.runs.folder.RunFolderBusy`); SIGTERM
    and SIGINT raise :class:`~mimmo.runs.signals.Interrupted` (training stops at the end of its current batch).
    """
    run_dir = Path(run_dir)
    finished = finished_metrics(cfg, run_dir)
    if finished is not None:
        log.info("%s\n(remove its metrics.json to run it again)", run_summary(run_dir, finished, reused=True))
        return finished
    checkpoint = run_dir / LAST_CHECKPOINT
    with stop_on_signals() as stop:
        try:
            configure_threads(cfg)
            check_data(cfg.data)  # a missing dataset is named with its path
            splits, method = prepare_run(cfg)
            with lock(run_dir, "mimmo train") if is_rank_zero_launcher() else nullcontext():
                finished = finished_metrics(cfg, run_dir)  # another process may have finished it meanwhile
                if finished is not None:
                    return finished
                if checkpoint.exists():
                    load_checkpoint(checkpoint)  # a truncated one is refused here, not inside Lightning
                return _fit_and_finish(cfg, run_dir, splits, method, stop)
        except Interrupted as error:
            kept = (f"it keeps {checkpoint} (the last whole epoch)" if checkpoint.exists()
                    else "it has no whole epoch yet")
            raise Interrupted(error.signum, f"{error} while working on {run_dir} ({kept}): run the same command "
                                            "again to resume") from None


def _fit_and_finish(cfg: DictConfig, run_dir: Path, splits: Splits, method: Method, stop: SignalStop
                    ) -> dict[str, Any]:
    """Train (resuming from the last checkpoint), evaluate and write the run's files; the folder is locked."""
    checkpoint = run_dir / LAST_CHECKPOINT
    normalizer = build_normalizer(cfg, splits.train.images)
    write_text_atomic(run_dir / CONFIG_FILE, config_text(cfg, dataset_identity(cfg.data)))
    module = MethodModule(method, normalizer, splits, cfg)
    names = check_loggers(cfg.train.get("loggers", ["csv"]))
    extras = extra_loggers(names, run_dir / LOG_DIR, run_dir.name) if is_rank_zero_launcher() else []
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=trainer_strategy(cfg.train), precision=cfg.train.precision,
        logger=[ResumableCSVLogger(str(run_dir), name=LOG_DIR, version=""), *extras],
        callbacks=[AtomicCheckpoint(dirpath=str(checkpoint.parent), filename=checkpoint.stem, save_top_k=1,
                                    enable_version_counter=False, save_on_train_epoch_end=True),
                   StopAtBatchEnd(stop)],
        enable_progress_bar=bool(cfg.train.progress_bar), enable_model_summary=False,
        log_every_n_steps=cfg.train.log_every_n_steps, num_sanity_val_steps=0,
        check_val_every_n_epoch=int(cfg.train.get("val_every_n_epochs", 1)), default_root_dir=str(run_dir))
    resume = str(checkpoint) if checkpoint.exists() else None
    log.info("training %s on %s for %d epochs into %s%s", cfg.method.name, cfg.data.name, cfg.train.epochs, run_dir,
             f" (resuming from {checkpoint})" if resume else "")
    start = time.perf_counter()
    environment = {key: os.environ.get(key) for key in DDP_LAUNCH_ENVIRONMENT}
    try:
        with stop.deferred():
            trainer.fit(module, ckpt_path=resume, weights_only=True)
    except SIGTERMException as error:  # Lightning's own SIGTERM stop (a bare SystemExit): not a finished run
        raise Interrupted(stop.received or signal.SIGTERM) from error
    finally:
        module.release_step()  # graphs freed now, not whenever the module's reference cycles are collected
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # (ddp) the next run in this process starts its own
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}
    history, graphs = module.exit_weight_history, module.cuda_graphs_record()
    if not module.graph_records and checkpoint.exists():
        # ddp_spawn trained in other processes: this process got the final weights back from rank 0 (Lightning
        # loads them into the module), but not the module's Python state; rank 0 saved it in the last checkpoint.
        saved = load_checkpoint(checkpoint)
        history, graphs = saved.get("exit_weight_history", []), saved.get("cuda_graphs", graphs)
    # Lightning moves the module to the CPU after fit; evaluate on the device it trained on (rank 0's).
    metrics = finish_run(run_dir, cfg, method, normalizer, splits, history, train_seconds,
                         trainer.strategy.root_device, graphs)
    finish_loggers(extras, metrics, trainer.global_step)
    log.info("%s", run_summary(run_dir, metrics))
    return metrics


def finish_run(run_dir: Path, cfg: DictConfig, method: Method, normalizer: Normalizer, splits: Splits,
               exit_weight_history: list, train_seconds: float, device: torch.device,
               cuda_graphs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the final model, save its weights and write metrics.json (last, atomically)."""
    start = time.perf_counter()
    results = evaluate_model(cfg, method, normalizer, splits, device)
    results["exit_weights_history"] = exit_weight_history or None
    results["cuda_graphs"] = cuda_graphs
    results["time"] = {"train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - start}
    results["provenance"] = provenance(device)
    save_weights(run_dir / WEIGHTS_FILE, method.cpu(), normalizer.cpu())
    write_calibration_of(run_dir, results)
    write_metrics(run_dir, results)
    return results

