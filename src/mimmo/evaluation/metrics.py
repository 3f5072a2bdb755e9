"""Metrics of the predictive mixture over a whole set (SPEC §7).

All functions take ``log_probs`` (N, K), the log of the predictive mixture, and integer ``targets`` (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

ECE_BINS = 15


def accuracy(log_probs: Tensor, targets: Tensor) -> float:
    return (log_probs.argmax(dim=1) == targets).float().mean().item()


def negative_log_likelihood(log_probs: Tensor, targets: Tensor) -> float:
    """Mean -log p(y|x) in nats."""
    return -log_probs.gather(1, targets[:, None]).mean().item()


def expected_calibration_error(log_probs: Tensor, targets: Tensor, num_bins: int = ECE_BINS) -> float:
    """L1 ECE with ``num_bins`` equal-width bins on the top-label confidence."""
    confidence, predicted = log_probs.exp().max(dim=1)
    correct = (predicted == targets).float()
    # bin b holds confidences in (b/num_bins, (b+1)/num_bins]; confidence 0 cannot occur for a max prob
    bins = (confidence * num_bins).ceil().long().clamp(1, num_bins) - 1
    count = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(confidence, dtype=torch.float64))
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence.double())
    acc_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct.double())
    return ((conf_sum - acc_sum).abs().sum() / len(targets)).item()


def brier_score(log_probs: Tensor, targets: Tensor) -> float:
    """Mean over samples AND classes of (p - onehot)^2 (the paper prints it x10^3)."""
    probs = log_probs.exp()
    onehot = torch.zeros_like(probs).scatter_(1, targets[:, None], 1.0)
    return (probs - onehot).pow(2).mean().item()


def predictive_entropy(log_probs: Tensor) -> float:
    """Mean entropy of the predictive mixture in nats."""
    return -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(dim=1).mean().item()


def classification_metrics(log_probs: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier and predictive entropy of the mixture."""
    log_probs, targets = log_probs.detach().float().cpu(), targets.detach().cpu()
    if log_probs.dim() != 2 or targets.shape != log_probs.shape[:1]:
        raise ValueError(f"log_probs must be (N, K) and targets (N,), got {tuple(log_probs.shape)} "
                         f"and {tuple(targets.shape)}")
    return {
        "accuracy": accuracy(log_probs, targets),
        "nll": negative_log_likelihood(log_probs, targets),
        "ece": expected_calibration_error(log_probs, targets),
        "brier": brier_score(log_probs, targets),
        "entropy": predictive_entropy(log_probs),
    }
