"""Feature-reuse probe (paper B.1): do the members read the same stem features and write
through the same penultimate features?

Per member, the L1 norm of the stem weights per output channel (that member's input slice) and of the
classifier weights per input feature (that member's output rows), each profile scaled to max 1. The
overlap is the mean over features of min_m / max_m: near 1 the members share features, near 0 they use
disjoint ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

EPSILON = 1e-8


def feature_profiles(weights: Sequence[Tensor], feature_dim: int) -> Tensor:
    """(M, F): per member, the L1 norm of its weights over every dimension but ``feature_dim``, divided by
    the profile's maximum (+1e-8)."""
    if len(weights) == 0:
        raise ValueError("feature_profiles needs the weights of at least one member")
    shapes = {tuple(w.shape) for w in weights}
    if len(shapes) != 1:
        raise ValueError(f"every member's weights must have the same shape, got {sorted(shapes)}")
    stacked = torch.stack([w.detach().float().cpu() for w in weights])  # (M, ...)
    dim = feature_dim % (stacked.dim() - 1) + 1
    norms = stacked.abs().movedim(dim, 1).flatten(2).sum(dim=2)  # (M, F)
    return norms / (norms.max(dim=1, keepdim=True).values + EPSILON)


def feature_overlap(profiles: Tensor) -> float:
    """Mean over features of min_m profile / (max_m profile + 1e-8) for profiles (M, F)."""
    if profiles.dim() != 2 or profiles.shape[0] < 1:
        raise ValueError(f"profiles must be (M, F), got {tuple(profiles.shape)}")
    return (profiles.min(dim=0).values / (profiles.max(dim=0).values + EPSILON)).mean().item()


def _probe(weights: Sequence[Tensor] | None, feature_dim: int) -> dict | None:
    if weights is None:
        return None
    profiles = feature_profiles(weights, feature_dim)
    return {"profiles": profiles.tolist(), "overlap": feature_overlap(profiles)}


def feature_reuse_from_weights(input_weights: Sequence[Tensor] | None,
                               output_weights: Sequence[Tensor] | None) -> dict | None:
    """The probe on per-member weights: ``input_weights`` M tensors (C_out, C, k, k) or (C_out, C), profiled
    per output channel; ``output_weights`` M tensors (K, F), profiled per input feature. None if both are
    None."""
    if input_weights is None and output_weights is None:
        return None
    return {"input": _probe(input_weights, 0), "output": _probe(output_weights, 1)}


def feature_reuse(method: nn.Module) -> dict | None:
    """``{"input": {"profiles": [[...] per member], "overlap": x}, "output": {...}}`` from the method's
    :meth:`member_input_weights` and :meth:`member_output_weights`; None for methods without them."""
    return feature_reuse_from_weights(method.member_input_weights(), method.member_output_weights())
