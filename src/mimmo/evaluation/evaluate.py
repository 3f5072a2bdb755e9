"""Evaluate a trained method on a test set and on its 25 shifted versions (SPEC §7).

Images stay uint8 until a batch is on the device; there each batch is turned into [0, 1] floats,
shifted, normalised and predicted under ``torch.inference_mode`` in eval mode. Only the mixture's log
probabilities (N, K) and the members' own mixtures (N, M, K) of one set are kept at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimmo.data.datasets import ImageSet, Normalizer
from mimmo.data.shifts import SHIFTS, apply_shift, set_name, shifted_sets
from mimmo.evaluation.metrics import (
    classification_metrics,
    member_log_probs,
    member_metrics,
    misclassification_auroc,
    reliability_bins,
)
from mimmo.methods.base import mixture_log_probs

log = logging.getLogger(__name__)
Transform = Callable[[Tensor, Tensor], Tensor]  # ([0, 1] images (B, C, H, W), their indices (B,)) -> images


@dataclass(frozen=True)
class SetPrediction:
    """Predictions for a whole set, on the CPU."""

    log_probs: Tensor  # (N, K): the predictive mixture
    member_log_probs: Tensor  # (N, M, K): each member's own mixture over its exits
    weights: Tensor  # (D, M): the method's exit weights


def method_device(method: nn.Module) -> torch.device:
    """The device of the method's first parameter or buffer (CPU when it has none)."""
    for tensor in (*method.parameters(), *method.buffers()):
        return tensor.device
    return torch.device("cpu")


def predict(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, batch_size: int = 500,
            device: torch.device | str | None = None, transform: Transform | None = None) -> SetPrediction:
    """Predict a uint8 image set (N, C, H, W) batch by batch; ``transform`` shifts the [0, 1] images of a
    batch (given their indices in the set) before normalisation. The method is left in its previous mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}")
    if len(images_u8) == 0:
        raise ValueError("cannot predict an empty image set")
    device = torch.device(device) if device is not None else method_device(method)
    method.to(device)
    normalize = Normalizer(normalizer.mean.flatten(), normalizer.std.flatten(), normalizer.flatten).to(device)
    images = images_u8.to(device)
    was_training = method.training
    method.eval()
    log_probs, members, weights = [], [], None
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                index = torch.arange(start, min(start + batch_size, len(images)), device=device)
                x = Normalizer.to_unit(images[index])
                if transform is not None:
                    x = transform(x, index)
                prediction = method(normalize(x))
                log_probs.append(mixture_log_probs(prediction.logits, prediction.weights).cpu())
                members.append(member_log_probs(prediction.logits, prediction.weights).cpu())
                weights = prediction.weights.detach().float().cpu()
    finally:
        method.train(was_training)
    return SetPrediction(torch.cat(log_probs), torch.cat(members), weights)


def predict_log_probs(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, batch_size: int = 500,
                      device: torch.device | str | None = None, transform: Transform | None = None) -> Tensor:
    """The predictive mixture's log probabilities (N, K) on the CPU; see :func:`predict`."""
    return predict(method, images_u8, normalizer, batch_size, device, transform).log_probs


def set_metrics(prediction: SetPrediction, targets: Tensor, reliability: bool = False) -> dict:
    """Mixture metrics, misclassification AUROC and, for several members, member metrics."""
    metrics: dict = classification_metrics(prediction.log_probs, targets)
    metrics["misclassification_auroc"] = misclassification_auroc(prediction.log_probs, targets)
    if prediction.member_log_probs.shape[1] > 1:
        metrics.update(member_metrics(prediction.member_log_probs, targets))
    if reliability:
        metrics["reliability"] = reliability_bins(prediction.log_probs, targets)
    return metrics


def summarize_sets(sets: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Mean and population std over the sets of every scalar metric (NaNs, such as an undefined AUROC,
    are left out; a metric that is NaN everywhere gives NaN)."""
    names = [k for k, v in next(iter(sets.values())).items() if isinstance(v, (int, float))]
    summary = {}
    for name in names:
        values = torch.tensor([float(m[name]) for m in sets.values()], dtype=torch.float64)
        values = values[~values.isnan()]
        if len(values) == 0:
            summary[name] = {"mean": math.nan, "std": math.nan}
        else:
            summary[name] = {"mean": values.mean().item(), "std": values.std(correction=0).item()}
    return summary


def evaluate_method(method: nn.Module, data: ImageSet, normalizer: Normalizer, batch_size: int = 500,
                    device: torch.device | str | None = None, shift_seed: int = 0,
                    shifted: bool = True) -> dict:
    """Metrics of ``method`` on ``data`` and, when ``shifted``, on its 25 shifted versions.

    Returns ``{"test": metrics + "reliability", "shifted": {"summary": {metric: {"mean", "std"}},
    "sets": {"rotate/45": metrics, ...}}}`` (``"shifted"`` is None when not ``shifted``). Metrics are
    accuracy, nll, ece, brier, entropy, misclassification_auroc, and with several members
    member_accuracy, member_nll and disagreement.
    """
    targets = data.labels
    log.info("evaluation: clean test set (%d images) ...", len(data))
    clean = predict(method, data.images, normalizer, batch_size, device)
    results: dict = {"test": set_metrics(clean, targets, reliability=True), "shifted": None}
    if shifted:
        log.info("evaluation: %d shifted test sets (%s; 5 levels each) ...", len(shifted_sets()), ", ".join(SHIFTS))
        sets = {}
        for kind, level in shifted_sets():
            def transform(x: Tensor, index: Tensor, kind: str = kind, level: float = level) -> Tensor:
                return apply_shift(x, kind, level, index, shift_seed)

            prediction = predict(method, data.images, normalizer, batch_size, device, transform)
            sets[set_name(kind, level)] = set_metrics(prediction, targets)
        results["shifted"] = {"summary": summarize_sets(sets), "sets": sets}
    return results
