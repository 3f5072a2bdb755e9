"""Selective classification: the risk-coverage curve of the mixture's confidence, AURC, E-AURC, risk at coverage.

A selective classifier accepts the samples whose confidence (the mixture's top probability) is highest and
abstains on the rest (Geifman & El-Yaniv, 2017). Conventions (docs/method.md, "Selective classification"):

- coverage k / N for k = 1..N accepted samples; risk = the fraction of the accepted samples that are
  misclassified (a fraction in [0, 1], not a percentage);
- ties: samples of equal confidence are accepted in a uniformly random order and the curve is its expectation
  (within a tie group the expected errors grow linearly), so the result does not depend on the sort;
- AURC = (1/N) sum_{k=1}^{N} risk(k / N), the mean over the N coverages (Geifman et al., 2019);
- E-AURC = AURC - AURC*, with AURC* the AURC of the oracle that accepts every correct prediction before any
  error (the same errors, the best order): 0 for a perfect ranking, otherwise > 0;
- risk at coverage c: the risk of the ceil(c N) most confident samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

COVERAGES = (0.8, 0.9, 0.95)
CURVE_POINTS = 20  # coverages 1/20, 2/20, ..., 1 kept in metrics.json for the figure


def _check(confidence: Tensor, errors: Tensor) -> tuple[Tensor, Tensor]:
    confidence, errors = confidence.detach().double().flatten().cpu(), errors.detach().double().flatten().cpu()
    if confidence.shape != errors.shape or len(confidence) == 0:
        raise ValueError(f"confidence and errors must be two non-empty vectors of one length, got "
                         f"{tuple(confidence.shape)} and {tuple(errors.shape)}")
    return confidence, errors


def cumulative_errors(confidence: Tensor, errors: Tensor) -> Tensor:
    """Expected number of errors among the k most confident samples, k = 1..N (ties in random order), float64."""
    confidence, errors = _check(confidence, errors)
    order = torch.argsort(confidence, descending=True)
    confidence, errors = confidence[order], errors[order]
    _, group, size = torch.unique_consecutive(confidence, return_inverse=True, return_counts=True)
    group_errors = torch.zeros(len(size), dtype=torch.float64).index_add_(0, group, errors)
    end = size.cumsum(0)  # samples accepted once a whole group is in
    start = end - size
    errors_before = group_errors.cumsum(0) - group_errors
    position = torch.arange(1, len(errors) + 1, dtype=torch.float64)
    return errors_before[group] + (position - start[group]) * group_errors[group] / size[group]


def risk_coverage(confidence: Tensor, errors: Tensor) -> tuple[Tensor, Tensor]:
    """The risk-coverage curve: coverages k / N and the (expected) risk of the k most confident samples."""
    accepted = torch.arange(1, len(confidence.flatten()) + 1, dtype=torch.float64)
    return accepted / len(accepted), cumulative_errors(confidence, errors) / accepted


def oracle_aurc(errors: Tensor) -> float:
    """AURC of the ranking that accepts every correct sample before any error."""
    errors = errors.detach().double().flatten().cpu()
    total, wrong = len(errors), errors.sum().item()
    accepted = torch.arange(1, total + 1, dtype=torch.float64)
    return ((accepted - (total - wrong)).clamp_min(0.0) / accepted).mean().item()


def risk_at_coverage(risk: Tensor, coverage: float) -> float:
    """Risk of the ceil(coverage * N) most confident samples, from the risks of :func:`risk_coverage`."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    return risk[math.ceil(coverage * len(risk) - 1e-9) - 1].item()


def selective_metrics(log_probs: Tensor, targets: Tensor) -> dict:
    """AURC, E-AURC, the oracle's AURC, risk at 80/90/95% coverage and a 20-point risk-coverage curve of the
    mixture's top probability, from its log probabilities (N, K) and the targets (N,)."""
    log_probs, targets = log_probs.detach().float().cpu(), targets.detach().cpu()
    if log_probs.dim() != 2 or targets.shape != log_probs.shape[:1]:
        raise ValueError(f"log_probs must be (N, K) and targets (N,), got {tuple(log_probs.shape)} "
                         f"and {tuple(targets.shape)}")
    confidence, predicted = log_probs.max(dim=1)
    if confidence.isnan().any():  # a diverged network ranks nothing
        return {"aurc": math.nan, "e_aurc": math.nan, "oracle_aurc": math.nan,
                **{f"risk_at_{round(c * 100)}": math.nan for c in COVERAGES}, "curve": None}
    errors = (predicted != targets).double()
    _, risk = risk_coverage(confidence, errors)
    aurc = risk.mean().item()
    oracle = oracle_aurc(errors)
    metrics: dict = {"aurc": aurc, "e_aurc": aurc - oracle, "oracle_aurc": oracle}
    for coverage in COVERAGES:
        metrics[f"risk_at_{round(coverage * 100)}"] = risk_at_coverage(risk, coverage)
    points = [(k / CURVE_POINTS) for k in range(1, CURVE_POINTS + 1)]
    metrics["curve"] = {"coverage": points, "risk": [risk_at_coverage(risk, c) for c in points]}
    return metrics
