"""Evaluate a trained method on a test set and on its 25 shifted versions.

Images stay uint8 until a batch is on the device; there each batch is turned into [0, 1] floats,
shifted, normalised and predicted under ``torch.inference_mode`` in eval mode. Only the mixture's log
probabilities (N, K) and the members' own mixtures (N, M, K) of one set are kept at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mimmo.data.datasets import ImageSet, Normalizer
from mimmo.data.shifts import SHIFTS, apply_shift, set_name, shifted_sets
from mimmo.evaluation.decomposition import summarize_decomposition
from mimmo.evaluation.metrics import (
    classification_metrics,
    exit_log_probs,
    exit_metrics,
    member_log_probs,
    member_metrics,
    misclassification_auroc,
    reliability_bins,
)
from mimmo.evaluation.ood import histogram, ood_metrics, scores_from, uncertainty
from mimmo.evaluation.selective import selective_metrics
from mimmo.methods.base import Prediction, mixture_log_probs

log = logging.getLogger(__name__)
UNCERTAINTY_SECTIONS = ("ood", "selective", "decomposition")  # what uncertainty_sections and ood_section write
Transform = Callable[[Tensor, Tensor], Tensor]  # ([0, 1] images (B, C, H, W), their indices (B,)) -> images


@dataclass(frozen=True)
class SetPrediction:
    """Predictions for a whole set, on the CPU."""

    log_probs: Tensor  # (N, K): the predictive mixture
    member_log_probs: Tensor  # (N, M, K): each member's own mixture over its exits
    weights: Tensor  # (D, M): the exit weights of the mixture
    exit_log_probs: Tensor  # (N, D, K): each exit's own ensemble of the members
    # Per sample (N,): msp, energy and the entropy decomposition (mimmo.evaluation.ood.uncertainty).
    uncertainty: dict[str, Tensor] = field(default_factory=dict)

    def ood_scores(self) -> dict[str, Tensor]:
        """The OOD scores this prediction's shape defines (mimmo.evaluation.ood.score_names)."""
        return scores_from(self.uncertainty, self.exit_log_probs.shape[1], self.member_log_probs.shape[1])


@dataclass(frozen=True)
class Readout:
    """How a prediction is read from the component logits (B, D, M, K): each divided by ``temperature`` before
    its softmax (post-hoc calibration) and mixed with ``weights`` (D, M) (exits pruned; None: the method's own).
    The default reads the method's own mixture, bit for bit."""

    temperature: float = 1.0
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"a temperature must be > 0, got {self.temperature!r}")

    def apply(self, logits: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """The logits and weights to mix."""
        if self.weights is not None:
            if self.weights.shape != weights.shape:
                raise ValueError(f"readout weights {tuple(self.weights.shape)} do not match the method's exit "
                                 f"weights {tuple(weights.shape)}")
            weights = self.weights.to(weights.device)
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        return logits, weights


RAW = Readout()


def method_device(method: nn.Module) -> torch.device:
    """The device of the method's first parameter or buffer (CPU when it has none)."""
    for tensor in (*method.parameters(), *method.buffers()):
        return tensor.device
    return torch.device("cpu")


def _predictions(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, batch_size: int,
                 device: torch.device | str | None, transform: Transform | None) -> Iterator[Prediction]:
    """The method's predictions, batch by batch, in eval mode under inference mode (the mode is restored)."""
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
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                index = torch.arange(start, min(start + batch_size, len(images)), device=device)
                x = Normalizer.to_unit(images[index])
                if transform is not None:
                    x = transform(x, index)
                yield method(normalize(x))
    finally:
        method.train(was_training)


def predict_readouts(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, readouts: dict[str, Readout],
                     batch_size: int = 500, device: torch.device | str | None = None,
                     transform: Transform | None = None) -> dict[str, SetPrediction]:
    """Predict a uint8 image set (N, C, H, W) batch by batch, once, and read every one of ``readouts`` from the
    same logits; ``transform`` shifts the [0, 1] images of a batch (given their indices in the set) before
    normalisation. The method is left in its previous mode."""
    if not readouts:
        raise ValueError("give at least one readout")
    parts: dict[str, tuple[list, list, list, list, Tensor | None]] = {name: ([], [], [], [], None)
                                                                       for name in readouts}
    for prediction in _predictions(method, images_u8, normalizer, batch_size, device, transform):
        for name, readout in readouts.items():
            logits, weights = readout.apply(prediction.logits, prediction.weights)
            log_probs, members, exits, scores, _ = parts[name]
            log_probs.append(mixture_log_probs(logits, weights).cpu())
            members.append(member_log_probs(logits, weights).cpu())
            exits.append(exit_log_probs(logits).cpu())
            scores.append({key: value.cpu() for key, value in uncertainty(logits, weights).items()})
            parts[name] = (log_probs, members, exits, scores, weights.detach().float().cpu())
    return {name: SetPrediction(torch.cat(log_probs), torch.cat(members), weights, torch.cat(exits),
                                {key: torch.cat([batch[key] for batch in scores]) for key in scores[0]})
            for name, (log_probs, members, exits, scores, weights) in parts.items()}


def predict(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, batch_size: int = 500,
            device: torch.device | str | None = None, transform: Transform | None = None) -> SetPrediction:
    """The method's own predictions of a uint8 image set (N, C, H, W); see :func:`predict_readouts`."""
    return predict_readouts(method, images_u8, normalizer, {"raw": RAW}, batch_size, device, transform)["raw"]


def predict_logits(method: nn.Module, images_u8: Tensor, normalizer: Normalizer, batch_size: int = 500,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Every component's logits (N, D, M, K) and the exit weights (D, M), on the CPU (to fit a temperature)."""
    logits, weights = [], None
    for prediction in _predictions(method, images_u8, normalizer, batch_size, device, None):
        logits.append(prediction.logits.float().cpu())
        weights = prediction.weights.detach().float().cpu()
    assert weights is not None
    return torch.cat(logits), weights


def set_metrics(prediction: SetPrediction, targets: Tensor, reliability: bool = False) -> dict:
    """Mixture metrics, misclassification AUROC and, for several members, member metrics; for several exits,
    exit metrics."""
    metrics: dict = classification_metrics(prediction.log_probs, targets)
    metrics["misclassification_auroc"] = misclassification_auroc(prediction.log_probs, targets)
    if prediction.member_log_probs.shape[1] > 1:
        metrics.update(member_metrics(prediction.member_log_probs, targets))
    if prediction.exit_log_probs.shape[1] > 1:
        metrics.update(exit_metrics(prediction.exit_log_probs, targets))
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


def uncertainty_sections(prediction: SetPrediction, targets: Tensor) -> dict[str, dict]:
    """metrics.json's ``selective`` (:func:`~mimmo.evaluation.selective.selective_metrics`) and ``decomposition``
    (:func:`~mimmo.evaluation.decomposition.summarize_decomposition`) of one set's prediction."""
    parts = {key: value for key, value in prediction.uncertainty.items() if key not in ("msp", "energy")}
    return {"selective": selective_metrics(prediction.log_probs, targets),
            "decomposition": summarize_decomposition(parts)}


def ood_section(clean: SetPrediction, ood_predictions: dict[str, SetPrediction]) -> dict:
    """metrics.json's ``ood`` section: per OOD set its size, and per score the detection metrics
    (:func:`~mimmo.evaluation.ood.ood_metrics`) and a histogram of both sets' scores."""
    id_scores = clean.ood_scores()
    sets = {}
    for name, prediction in ood_predictions.items():
        scores = prediction.ood_scores()
        sets[name] = {"size": len(prediction.log_probs), "metrics": ood_metrics(id_scores, scores),
                      "histograms": {score: histogram(id_scores[score], scores[score]) for score in id_scores}}
    return {"in_distribution_size": len(clean.log_probs), "scores": list(id_scores), "sets": sets}


def evaluate_readouts(method: nn.Module, data: ImageSet, normalizer: Normalizer, readouts: dict[str, Readout],
                      batch_size: int = 500, device: torch.device | str | None = None, shift_seed: int = 0,
                      shifted: bool = True, ood_sets: dict[str, ImageSet] | None = None) -> dict[str, dict]:
    """:func:`evaluate_method` for every one of ``readouts`` from one pass over each set: ``{name: results}``."""
    targets = data.labels
    log.info("evaluation: clean test set (%d images) ...", len(data))
    clean = predict_readouts(method, data.images, normalizer, readouts, batch_size, device)
    results: dict[str, dict] = {name: {"test": set_metrics(clean[name], targets, reliability=True), "shifted": None}
                                for name in readouts}
    for name in readouts:
        for section, value in uncertainty_sections(clean[name], targets).items():
            results[name][section] = {"test": value, "shifted": None}
    if ood_sets:
        log.info("evaluation: %d OOD sets (%s) ...", len(ood_sets), ", ".join(ood_sets))
        ood_predictions = {set_name: predict_readouts(method, images.images, normalizer, readouts, batch_size, device)
                           for set_name, images in ood_sets.items()}
        for name in readouts:
            results[name]["ood"] = ood_section(clean[name], {set_name: predictions[name] for set_name, predictions
                                                             in ood_predictions.items()})
    if shifted:
        log.info("evaluation: %d shifted test sets (%s; 5 levels each) ...", len(shifted_sets()), ", ".join(SHIFTS))
        sets: dict[str, dict] = {name: {} for name in readouts}
        extra: dict[str, dict[str, dict]] = {name: {"selective": {}, "decomposition": {}} for name in readouts}
        for kind, level in shifted_sets():
            def transform(x: Tensor, index: Tensor, kind: str = kind, level: float = level) -> Tensor:
                return apply_shift(x, kind, level, index, shift_seed)

            predictions = predict_readouts(method, data.images, normalizer, readouts, batch_size, device, transform)
            for name, prediction in predictions.items():
                sets[name][set_name(kind, level)] = set_metrics(prediction, targets)
                for section, value in uncertainty_sections(prediction, targets).items():
                    extra[name][section][set_name(kind, level)] = value
        for name in readouts:
            results[name]["shifted"] = {"summary": summarize_sets(sets[name]), "sets": sets[name]}
            for section, per_set in extra[name].items():
                results[name][section]["shifted"] = summarize_sets(per_set)
    return results


def evaluate_method(method: nn.Module, data: ImageSet, normalizer: Normalizer, batch_size: int = 500,
                    device: torch.device | str | None = None, shift_seed: int = 0,
                    shifted: bool = True, ood_sets: dict[str, ImageSet] | None = None) -> dict:
    """Metrics of ``method`` on ``data`` and, when ``shifted``, on its 25 shifted versions.

    Returns ``{"test": metrics + "reliability", "shifted": {"summary": {metric: {"mean", "std"}},
    "sets": {"rotate/45": metrics, ...}}}`` (``"shifted"`` is None when not ``shifted``). Metrics are
    accuracy, nll, ece, brier, entropy, confidence, accuracy_minus_confidence, misclassification_auroc; with
    several members member_accuracy, member_nll, member_confidence, member_accuracy_minus_confidence and
    disagreement; with several exits exit_accuracy, exit_nll, exit_confidence and
    exit_accuracy_minus_confidence (each exit's equal-weight ensemble of the members). ``"selective"`` and
    ``"decomposition"`` hold ``{"test": ..., "shifted": {metric: {"mean", "std"}} or None}``
    (:func:`uncertainty_sections`); with ``ood_sets`` ``{name: images}``, ``"ood"`` is :func:`ood_section`.
    """
    return evaluate_readouts(method, data, normalizer, {"raw": RAW}, batch_size, device, shift_seed, shifted,
                             ood_sets)["raw"]
