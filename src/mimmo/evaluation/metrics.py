"""Metrics of the predictive mixture over a whole set (docs/method.md, "One output shape for every method"), of its
members and of its exits.

The mixture metrics take ``log_probs`` (N, K), the log of the predictive mixture, and integer
``targets`` (N,). The member metrics take each member's own mixture over its exits, (N, M, K); the exit
metrics each exit's own ensemble over the members, (N, D, K).

Besides the paper's metrics, every prediction gets its mean confidence (the mean top probability) and its
accuracy minus that confidence: positive for an under-confident prediction, negative for an over-confident
one. The ECE is the same gap per confidence bin, without the sign.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

ECE_BINS = 15


def accuracy(log_probs: Tensor, targets: Tensor) -> float:
    return (log_probs.argmax(dim=1) == targets).float().mean().item()


def negative_log_likelihood(log_probs: Tensor, targets: Tensor) -> float:
    """Mean -log p(y|x) in nats."""
    return -log_probs.gather(1, targets[:, None]).mean().item()


def _confidence_bins(log_probs: Tensor, targets: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: count, sum of confidences, sum of correct predictions (float64).

    Bin b holds top-label confidences in (b/num_bins, (b+1)/num_bins]; a confidence of 1.0 goes in the
    last bin and a max probability cannot be 0.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence, predicted = log_probs.exp().max(dim=1)
    correct = (predicted == targets).double()
    bins = (confidence * num_bins).ceil().long().clamp(1, num_bins) - 1
    count = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(correct))
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence.double())
    acc_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    return count, conf_sum, acc_sum


def expected_calibration_error(log_probs: Tensor, targets: Tensor, num_bins: int = ECE_BINS) -> float:
    """L1 ECE with ``num_bins`` equal-width bins on the top-label confidence."""
    _, conf_sum, acc_sum = _confidence_bins(log_probs, targets, num_bins)
    return ((conf_sum - acc_sum).abs().sum() / len(targets)).item()


def reliability_bins(log_probs: Tensor, targets: Tensor, num_bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram behind the ECE: per bin the mean confidence, the accuracy and the count.

    ``edges`` are the num_bins + 1 bin edges; an empty bin has confidence and accuracy 0 and count 0.
    """
    log_probs, targets = _check(log_probs, targets)
    count, conf_sum, acc_sum = _confidence_bins(log_probs, targets, num_bins)
    safe = count.clamp_min(1.0)
    return {
        "edges": torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64).tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "count": [int(c) for c in count.tolist()],
    }


def mean_confidence(log_probs: Tensor) -> float:
    """Mean top-label probability."""
    return log_probs.max(dim=1).values.exp().mean().item()


def brier_score(log_probs: Tensor, targets: Tensor) -> float:
    """Mean over samples AND classes of (p - onehot)^2 (the paper prints it x10^3)."""
    probs = log_probs.exp()
    onehot = torch.zeros_like(probs).scatter_(1, targets[:, None], 1.0)
    return (probs - onehot).pow(2).mean().item()


def predictive_entropy(log_probs: Tensor) -> float:
    """Mean entropy of the predictive mixture in nats."""
    return -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(dim=1).mean().item()


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` separating ``labels`` 1 from 0 (ties count one half).

    NaN when one of the two classes is absent (the area is undefined).
    """
    scores, labels = scores.detach().double().flatten().cpu(), labels.detach().bool().flatten().cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must match")
    num_pos = int(labels.sum())
    num_neg = len(labels) - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    # Mann-Whitney U with average ranks for ties.
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).double()  # 1-based rank of the last member of each tie group
    average_rank = upper - (counts.double() - 1.0) / 2.0
    ranks = average_rank[inverse]
    u = ranks[labels].sum().item() - num_pos * (num_pos + 1) / 2.0
    return u / (num_pos * num_neg)


def misclassification_auroc(log_probs: Tensor, targets: Tensor) -> float:
    """AUROC of the max probability telling correct from wrong predictions (NaN if all or none correct)."""
    log_probs, targets = _check(log_probs, targets)
    confidence, predicted = log_probs.max(dim=1)
    return binary_auroc(confidence, predicted == targets)


def member_log_probs(logits: Tensor, weights: Tensor) -> Tensor:
    """Each member's own mixture over its exits: log sum_i w[i, m] softmax(logits[:, i, m]), (B, M, K)."""
    if logits.dim() != 4 or weights.shape != logits.shape[1:3]:
        raise ValueError(f"logits must be (B, D, M, K) and weights (D, M), got {tuple(logits.shape)} "
                         f"and {tuple(weights.shape)}")
    log_weights = torch.log(weights.to(device=logits.device, dtype=torch.float32))
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1) + log_weights[None, :, :, None], dim=1)


def member_metrics(member_log_probs: Tensor, targets: Tensor) -> dict[str, float | list[float]]:
    """Per-member accuracy and NLL of each member's own mixture over its exits, and the members'
    disagreement: the fraction of samples where two members' top classes differ, averaged over pairs
    (0 for a single member).

    ``member_log_probs`` is (N, M, K); see :func:`member_log_probs`.
    """
    member_log_probs, targets = member_log_probs.detach().float().cpu(), targets.detach().cpu()
    if member_log_probs.dim() != 3 or targets.shape != member_log_probs.shape[:1]:
        raise ValueError(f"member_log_probs must be (N, M, K) and targets (N,), got "
                         f"{tuple(member_log_probs.shape)} and {tuple(targets.shape)}")
    predicted = member_log_probs.argmax(dim=2)  # (N, M)
    num_members = predicted.shape[1]
    pairs = list(itertools.combinations(range(num_members), 2))
    disagreement = (sum((predicted[:, m] != predicted[:, n]).float().mean().item() for m, n in pairs)
                    / len(pairs) if pairs else 0.0)
    target_log_probs = member_log_probs.gather(2, targets[:, None, None].expand(-1, num_members, 1))[..., 0]
    accuracy_per_member = (predicted == targets[:, None]).float().mean(dim=0)
    confidence = member_log_probs.max(dim=2).values.exp().mean(dim=0)
    return {
        "member_accuracy": accuracy_per_member.tolist(),
        "member_nll": (-target_log_probs.mean(dim=0)).tolist(),
        "member_confidence": confidence.tolist(),
        "member_accuracy_minus_confidence": (accuracy_per_member - confidence).tolist(),
        "disagreement": disagreement,
    }


def exit_log_probs(logits: Tensor) -> Tensor:
    """Each exit's own ensemble of the members, log (1/M) sum_m softmax(logits[:, i, m]): (B, D, K).

    The members are averaged with equal weights, whatever the mixture's exit weights: this is what a network cut
    after exit i would predict."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, D, M, K), got {tuple(logits.shape)}")
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=2) - math.log(logits.shape[2])


def exit_metrics(exit_log_probs: Tensor, targets: Tensor) -> dict[str, list[float]]:
    """Per exit: accuracy, NLL, mean confidence and accuracy minus confidence of its ensemble over the members.

    ``exit_log_probs`` is (N, D, K); see :func:`exit_log_probs`."""
    exit_log_probs, targets = exit_log_probs.detach().float().cpu(), targets.detach().cpu()
    if exit_log_probs.dim() != 3 or targets.shape != exit_log_probs.shape[:1]:
        raise ValueError(f"exit_log_probs must be (N, D, K) and targets (N,), got "
                         f"{tuple(exit_log_probs.shape)} and {tuple(targets.shape)}")
    num_exits = exit_log_probs.shape[1]
    accuracy_per_exit = (exit_log_probs.argmax(dim=2) == targets[:, None]).float().mean(dim=0)
    confidence = exit_log_probs.max(dim=2).values.exp().mean(dim=0)
    target_log_probs = exit_log_probs.gather(2, targets[:, None, None].expand(-1, num_exits, 1))[..., 0]
    return {
        "exit_accuracy": accuracy_per_exit.tolist(),
        "exit_nll": (-target_log_probs.mean(dim=0)).tolist(),
        "exit_confidence": confidence.tolist(),
        "exit_accuracy_minus_confidence": (accuracy_per_exit - confidence).tolist(),
    }


def _check(log_probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    log_probs, targets = log_probs.detach().float().cpu(), targets.detach().cpu()
    if log_probs.dim() != 2 or targets.shape != log_probs.shape[:1]:
        raise ValueError(f"log_probs must be (N, K) and targets (N,), got {tuple(log_probs.shape)} "
                         f"and {tuple(targets.shape)}")
    if len(targets) == 0:
        raise ValueError("metrics need at least one sample, got an empty set")
    return log_probs, targets


def classification_metrics(log_probs: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier, predictive entropy, mean confidence and accuracy minus confidence of the
    mixture."""
    log_probs, targets = _check(log_probs, targets)
    acc, confidence = accuracy(log_probs, targets), mean_confidence(log_probs)
    return {
        "accuracy": acc,
        "nll": negative_log_likelihood(log_probs, targets),
        "ece": expected_calibration_error(log_probs, targets),
        "brier": brier_score(log_probs, targets),
        "entropy": predictive_entropy(log_probs),
        "confidence": confidence,
        "accuracy_minus_confidence": acc - confidence,
    }
