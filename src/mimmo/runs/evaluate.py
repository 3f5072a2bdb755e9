"""Evaluating a trained model into the sections of metrics.json (its schema: :func:`evaluate_model`), and a
finished run folder evaluated again (:func:`evaluate_run`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mimmo.data.datasets import Normalizer, Splits
from mimmo.evaluation.calibration import calibrated_section, fit_temperature
from mimmo.evaluation.cost import count_cost
from mimmo.evaluation.evaluate import RAW, UNCERTAINTY_SECTIONS, Readout, evaluate_readouts, predict_logits
from mimmo.evaluation.metrics import classification_metrics
from mimmo.evaluation.ood_sets import ood_sets
from mimmo.evaluation.probes import feature_reuse
from mimmo.evaluation.pruning import can_prune, pruned_cost, pruned_weights
from mimmo.methods.base import Method, mixture_log_probs
from mimmo.runs.checkpoints import load_run
from mimmo.runs.folder import (
    FORMAT_VERSION,
    check_same_dataset,
    lock,
    read_metrics,
    write_calibration,
    write_metrics,
)
from mimmo.runs.provenance import provenance
from mimmo.runs.signals import stop_on_signals
from mimmo.training.build import load_splits, model_input_shape

log = logging.getLogger("mimmo")


def evaluate_model(cfg: DictConfig, method: Method, normalizer: Normalizer, splits: Splits,
                   device: torch.device | str) -> dict[str, Any]:
    """Everything a run folder records about a trained model: test (clean and shifted), validation,
    cost, the learned exit weights and the feature-reuse probe; with ``evaluation.calibrate`` the temperature
    fitted on the validation split and the calibrated metrics (``calibrated``), with ``evaluation.prune_exits``
    the network with exits pruned (``pruned``); OOD detection on the run's OOD sets (``ood``, with
    ``evaluation.ood``), selective classification (``selective``) and the entropy decomposition
    (``decomposition``). All read from one pass over each set."""
    method = method.to(device).eval()
    normalizer = normalizer.to(device)
    batch = int(cfg.train.eval_batch_size)
    log.info("evaluation: validation set (%d images) ...", len(splits.validation.labels))
    validation_logits, validation_weights = predict_logits(method, splits.validation.images, normalizer, batch, device)
    readouts = {"raw": RAW}
    fit = None
    if cfg.evaluation.get("calibrate", True):
        fit = fit_temperature(validation_logits, validation_weights, splits.validation.labels)
        readouts["calibrated"] = Readout(fit.temperature)
    eps = cfg.evaluation.get("prune_exits")
    if eps is not None and can_prune(method):
        readouts["pruned"] = Readout(weights=pruned_weights(method, eps))
    evaluation = evaluate_readouts(method, splits.test, normalizer, readouts, batch, device, shift_seed=int(cfg.seed),
                                   shifted=bool(cfg.evaluation.shifted), ood_sets=ood_sets(cfg, splits))
    weights = method.exit_weights()
    input_shape = model_input_shape(cfg, splits.input_shape)
    log.info("evaluation: cost and feature-reuse probe ...")
    cost = count_cost(method, input_shape)
    results = {
        "format_version": FORMAT_VERSION, "method": cfg.method.name, "dataset": cfg.data.name,
        "data_shape": list(splits.input_shape), "num_classes": splits.num_classes,
        "class_names": None if splits.class_names is None else list(splits.class_names),
        "class_map": None if splits.class_map is None else list(splits.class_map),
        "num_members": method.num_members, "num_exits": method.num_exits, "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "test": evaluation["raw"]["test"], "shifted": evaluation["raw"]["shifted"],
        **{section: evaluation["raw"][section] for section in UNCERTAINTY_SECTIONS if section in evaluation["raw"]},
        "validation": classification_metrics(mixture_log_probs(validation_logits, validation_weights),
                                             splits.validation.labels),
        "cost": {"flops": cost.flops, "params": cost.params},
        "exit_weights": None if weights is None else weights.cpu().tolist(),
        "feature_reuse": feature_reuse(method),
    }
    if fit is not None:
        results["calibrated"] = calibrated_section(fit, evaluation["calibrated"])
    if "pruned" in evaluation:
        results["pruned"] = pruned_cost(method, eps, input_shape) | evaluation["pruned"]
    return results


def write_calibration_of(run_dir: Path, results: dict[str, Any]) -> None:
    """calibration.json from the ``calibrated`` section of fresh results, if they have one."""
    if results.get("calibrated") is not None:
        write_calibration(run_dir, results["calibrated"])


# Sections of metrics.json that post-hoc commands add (mimmo evaluate --anytime / --prune-exits, mimmo calibrate): a
# plain re-evaluation keeps them unless it computes them itself (they depend only on the saved weights).
POSTHOC_SECTIONS = ("anytime", "pruned", "calibrated")


def evaluate_run(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate a finished run folder again (e.g. after the evaluation changed) and update metrics.json.

    Its files are checked and its folder locked before any work: an unreadable metrics.json or config.yaml, a
    missing weights file or a folder that cannot be written are refused up front."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    previous = read_metrics(run_dir) or {}
    with lock(run_dir, "mimmo evaluate"), stop_on_signals():
        method, normalizer, cfg = load_run(run_dir, device)
        check_same_dataset(cfg, run_dir)
        splits = load_splits(cfg)
        start = time.perf_counter()
        results = evaluate_model(cfg, method, normalizer, splits, device)
        results["exit_weights_history"] = previous.get("exit_weights_history")
        results["cuda_graphs"] = previous.get("cuda_graphs")
        # the training's provenance stays (reports group runs by it); this evaluation's is recorded beside it
        results["provenance"] = previous.get("provenance")
        results["evaluation_provenance"] = provenance(device)
        results["time"] = {**previous.get("time", {}), "evaluate_seconds": time.perf_counter() - start}
        for section in POSTHOC_SECTIONS:
            if section not in results and previous.get(section) is not None:
                results[section] = previous[section]
        write_calibration_of(run_dir, results)
        write_metrics(run_dir, results)
    return results

