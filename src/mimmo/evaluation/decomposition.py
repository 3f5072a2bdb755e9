"""Where the predictive uncertainty comes from: total entropy = expected entropy + mutual information.

The mixture of a (B, D, M, K) output with weights (D, M) (docs/method.md, "Where the uncertainty comes from")
puts weight pi[i, m] = w[i, m] / M on component (exit i, member m). Reading (i, m) as a random variable Z with
law pi, the total predictive entropy splits, per sample, as

    H[p] = E_Z H[p(y | Z)] + I(y; Z)

(expected entropy, the aleatoric part; mutual information, the epistemic part), for three choices of Z:

- ``members``: Z = the member m; p(y | m) is member m's own mixture over its exits, sum_i w[i, m] p_im;
- ``exits``: Z = the exit i; p(y | i) = sum_m pi[i, m] p_im / pi_i with pi_i = sum_m pi[i, m] (the members
  at exit i weighted as the mixture weights them, so the identity holds for learned per-member weights);
- ``both``: Z = (i, m); p(y | i, m) = p_im, the component itself.

By the chain rule I(y; i, m) = I(y; m) + I(y; i | m) = I(y; i) + I(y; m | i), so ``mi_both`` is at least
``mi_members`` and ``mi_exits``. All in nats, computed in float64; 0 log 0 = 0, and a component of weight 0
(a pruned exit) contributes nothing. The mutual informations are differences of entropies: they are >= 0 up
to rounding (about 1e-15), not clamped, so that ``total = expected + mi`` holds exactly for each split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SPLITS = ("members", "exits", "both")


def check_logits(logits: Tensor, weights: Tensor) -> None:
    """Refuse anything but logits (B, D, M, K) with weights (D, M)."""
    if logits.dim() != 4 or weights.shape != logits.shape[1:3]:
        raise ValueError(f"logits must be (B, D, M, K) and weights (D, M), got {tuple(logits.shape)} "
                         f"and {tuple(weights.shape)}")


def entropy(log_probs: Tensor, dim: int = -1) -> Tensor:
    """Entropy in nats of the distributions ``log_probs`` along ``dim`` (0 log 0 = 0)."""
    return -torch.where(log_probs.isneginf(), 0.0, log_probs.exp() * log_probs).sum(dim=dim)


def component_weights(weights: Tensor, num_members: int) -> Tensor:
    """pi = w / M, the mixture weight of each component (D, M), float64; each column of w is renormalised to sum
    to 1 in float64 (float32 weights sum to 1 only to about 1e-7, which would show as a mutual information)."""
    weights = weights.detach().to(torch.float64)
    return weights / weights.sum(dim=0, keepdim=True) / num_members


def _weighted_sum(values: Tensor, weights: Tensor) -> Tensor:
    """sum_j weights[j] values[:, j] over the last dimension, a term of weight 0 counting 0 whatever its value."""
    return torch.where(weights > 0, values * weights, 0.0).sum(dim=-1)


def decompose(logits: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Per sample (B,): ``total`` entropy of the mixture, and per split in :data:`SPLITS` its ``expected_<split>``
    entropy and ``mi_<split>`` mutual information (total = expected + mi); see the module docstring."""
    check_logits(logits, weights)
    num_members = logits.shape[2]
    log_p = F.log_softmax(logits.detach().to(torch.float64), dim=-1)  # (B, D, M, K)
    pi = component_weights(weights, num_members).to(log_p.device)  # (D, M)
    log_pi = pi.log()  # log 0 = -inf
    mixture = torch.logsumexp((log_p + log_pi[None, :, :, None]).flatten(1, 2), dim=1)  # (B, K)
    total = entropy(mixture)

    parts = {"total": total}
    component_entropy = entropy(log_p)  # (B, D, M)
    parts["expected_both"] = _weighted_sum(component_entropy.flatten(1), pi.flatten())

    member_weight = pi.sum(dim=0)  # (M,): 1/M each
    member_mixture = torch.logsumexp(log_p + (log_pi - member_weight.log())[None, :, :, None], dim=1)  # (B, M, K)
    parts["expected_members"] = _weighted_sum(entropy(member_mixture), member_weight)

    exit_weight = pi.sum(dim=1)  # (D,)
    conditional = torch.where(pi > 0, log_pi - exit_weight.log()[:, None], -math.inf)  # log pi[i, m] / pi_i
    exit_mixture = torch.logsumexp(log_p + conditional[None, :, :, None], dim=2)  # (B, D, K); -inf at weight 0
    parts["expected_exits"] = _weighted_sum(entropy(exit_mixture), exit_weight)

    for split in SPLITS:
        parts[f"mi_{split}"] = total - parts[f"expected_{split}"]
    return {name: parts[name] for name in ("total", *(f"{kind}_{s}" for s in SPLITS for kind in ("expected", "mi")))}


def summarize_decomposition(parts: dict[str, Tensor]) -> dict[str, float]:
    """Means over the samples of every per-sample part of :func:`decompose` (nats), plus the conditional terms
    ``mi_exits_given_members`` = I(y; i | m) and ``mi_members_given_exits`` = I(y; m | i)."""
    means = {name: values.double().mean().item() for name, values in parts.items()}
    means["mi_exits_given_members"] = means["mi_both"] - means["mi_members"]
    means["mi_members_given_exits"] = means["mi_both"] - means["mi_exits"]
    return means
