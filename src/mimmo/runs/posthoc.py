"""Post-hoc work on finished run folders: anytime sweeps, exits pruned by θ, temperature scaling.

Each function loads a trained run (``config.yaml`` and ``weights.safetensors``), computes one section and merges
it into the run's ``metrics.json`` (atomically), leaving every other section, the raw metrics above all, as it
was. Nothing is retrained.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mimmo.evaluation.anytime import DEFAULT_THRESHOLDS, anytime_sweep
from mimmo.evaluation.calibration import calibrated_section, fit_on_set
from mimmo.evaluation.cost import count_cost
from mimmo.evaluation.evaluate import RAW, UNCERTAINTY_SECTIONS, Readout, evaluate_readouts
from mimmo.evaluation.ood_sets import ood_sets
from mimmo.evaluation.pruning import pruned_cost, pruned_weights
from mimmo.runs.checkpoints import load_run
from mimmo.runs.folder import finished_metrics_of, update_metrics, write_calibration
from mimmo.training.build import input_spec, load_splits, model_input_shape


def add_anytime(run_dir: str | Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                device: str | torch.device = "cpu") -> dict[str, Any]:
    """Sweep the anytime thresholds on the clean test set and write metrics.json's ``anytime`` table; the same
    sweep of the validation split goes into its ``validation`` entry, so that a report chooses a threshold on
    held-out data that the test set never sees."""
    finished_metrics_of(run_dir)  # a run that is not finished is refused before any work
    method, normalizer, cfg = load_run(run_dir, device)
    splits = load_splits(cfg)
    batch = int(cfg.train.eval_batch_size)
    table = anytime_sweep(method, splits.test, normalizer, thresholds, batch, device)
    validation = anytime_sweep(method, splits.validation, normalizer, thresholds, batch, device)
    table["validation"] = {key: validation[key] for key in ("thresholds", "full", "num_images")}
    update_metrics(run_dir, {"anytime": table})
    return table


def add_pruned(run_dir: str | Path, eps: float, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate the network with exits pruned at ``eps`` (test and shifted sets, cost) into metrics.json's
    ``pruned`` section."""
    finished_metrics_of(run_dir)  # a run that is not finished is refused before any work
    method, normalizer, cfg = load_run(run_dir, device)
    splits = load_splits(cfg)
    section = pruned_cost(method, eps, model_input_shape(cfg, splits.input_shape))
    section |= evaluate_readouts(method, splits.test, normalizer, {"pruned": Readout(weights=pruned_weights(
        method, eps))}, int(cfg.train.eval_batch_size), device, shift_seed=int(cfg.seed),
        shifted=bool(cfg.evaluation.shifted))["pruned"]
    update_metrics(run_dir, {"pruned": section})
    return section


def add_ood(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate OOD detection on the run's OOD sets, selective classification and the entropy decomposition (clean
    and, per the run's ``evaluation.shifted``, shifted test sets) into metrics.json's ``ood``, ``selective`` and
    ``decomposition`` sections (also for a run whose ``evaluation.ood`` is false); returns them."""
    finished_metrics_of(run_dir)  # a run that is not finished is refused before any work
    method, normalizer, cfg = load_run(run_dir, device)
    splits = load_splits(cfg)
    raw = evaluate_readouts(method, splits.test, normalizer, {"raw": RAW}, int(cfg.train.eval_batch_size), device,
                            shift_seed=int(cfg.seed), shifted=bool(cfg.evaluation.shifted),
                            ood_sets=ood_sets(cfg, splits, force=True))["raw"]
    sections = {section: raw[section] for section in UNCERTAINTY_SECTIONS}
    update_metrics(run_dir, sections)
    return sections


def calibrate_run(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit the temperature on the validation split, save it in calibration.json, and write the calibrated test
    and shifted metrics into metrics.json's ``calibrated`` section (the raw metrics stay as they are)."""
    finished_metrics_of(run_dir)  # a run that is not finished is refused before any work
    method, normalizer, cfg = load_run(run_dir, device)
    splits = load_splits(cfg)
    start = time.perf_counter()
    batch = int(cfg.train.eval_batch_size)
    fit = fit_on_set(method, normalizer, splits.validation, batch, device)
    evaluation = evaluate_readouts(method, splits.test, normalizer, {"calibrated": Readout(fit.temperature)}, batch,
                                   device, shift_seed=int(cfg.seed), shifted=bool(cfg.evaluation.shifted))
    section = calibrated_section(fit, evaluation["calibrated"])
    section["seconds"] = time.perf_counter() - start
    write_calibration(run_dir, section)
    update_metrics(run_dir, {"calibrated": section})
    return section


def run_cost(run_dir: str | Path, eps: float | None = None) -> dict[str, Any]:
    """FLOPs and params of a trained run's full network and, with ``eps``, of its network with exits pruned."""
    method, _, cfg = load_run(run_dir, "cpu")
    input_shape = model_input_shape(cfg, input_spec(cfg)[0])
    full = count_cost(method, input_shape)
    out: dict[str, Any] = {"method": cfg.method.name, "input_shape": input_shape, "num_members": method.num_members,
                           "num_exits": method.num_exits, "flops": full.flops, "params": full.params}
    if eps is not None:
        out["pruned"] = pruned_cost(method, eps, input_shape)
    return out
