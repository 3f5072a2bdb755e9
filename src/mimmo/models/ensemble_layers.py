"""Layers of the efficient ensembles (docs/method.md, "BatchEnsemble" and "Packed-Ensembles").

:class:`RankOneLayer` wraps a Conv2d or Linear with BatchEnsemble's per-member rank-1 fast weights (Wen et al.,
ICLR 2020, Eq. 1); :class:`GroupedLinear` is a Linear split into independent groups, the fully connected
counterpart of a grouped convolution (Packed-Ensembles, Laurent et al., ICLR 2023). Both have FLOP rules in
:mod:`mimmo.evaluation.cost`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAST_WEIGHT_INITS = ("normal", "random_sign")
FAST_WEIGHT_STD = 0.5  # N(1, 0.5^2): the BatchEnsemble authors' CIFAR code (random_sign_init = -0.5)


def init_fast_weights(weights: Tensor, init: str) -> None:
    """``normal``: N(1, 0.5^2) entries (the authors' public CIFAR code); ``random_sign``: +1 or -1 with
    probability 1/2 each (the paper's random sign vectors)."""
    with torch.no_grad():
        if init == "normal":
            weights.normal_(1.0, FAST_WEIGHT_STD)
        elif init == "random_sign":
            weights.copy_(torch.randint_like(weights, 2) * 2 - 1)
        else:
            raise ValueError(f"fast_weight_init must be one of {FAST_WEIGHT_INITS}, got {init!r}")


class RankOneLayer(nn.Module):
    """BatchEnsemble around a Conv2d or Linear W (bias-free inside): member m computes
    ``W(x * r_m) * s_m + b_m``.

    The batch holds the members' rows one after the other: rows [m B, (m+1) B) are member m's (B = rows / M).
    r (M, C_in) and s (M, C_out) are the fast weights; b (M, C_out) is a bias per member, present when the
    wrapped layer had one (every member starts from that layer's bias)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, num_members: int, init: str = "normal") -> None:
        super().__init__()
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise TypeError(f"RankOneLayer wraps a Conv2d or Linear, got {type(layer).__name__}")
        conv = isinstance(layer, nn.Conv2d)
        in_features = layer.in_channels if conv else layer.in_features
        out_features = layer.out_channels if conv else layer.out_features
        self.num_members = num_members
        self.r = nn.Parameter(torch.empty(num_members, in_features))
        self.s = nn.Parameter(torch.empty(num_members, out_features))
        init_fast_weights(self.r, init)
        init_fast_weights(self.s, init)
        if layer.bias is not None:
            self.bias = nn.Parameter(layer.bias.detach().clone().repeat(num_members, 1))
            layer.bias = None  # the member biases replace it
        else:
            self.register_parameter("bias", None)
        self.layer = layer

    def per_row(self, weights: Tensor, rows: int, dims: int) -> Tensor:
        """(M, C) member weights as (rows, C, 1, ...) for a batch of ``rows`` rows of ``dims`` dimensions."""
        if rows % self.num_members:
            raise ValueError(f"a BatchEnsemble layer takes the batch repeated once per member: {rows} rows is not "
                             f"a multiple of M = {self.num_members}")
        per_member = rows // self.num_members
        expanded = weights[:, None, :].expand(self.num_members, per_member, weights.shape[1])
        return expanded.reshape(rows, weights.shape[1], *([1] * (dims - 2)))

    def forward(self, x: Tensor) -> Tensor:
        rows, dims = x.shape[0], x.dim()
        y = self.layer(x * self.per_row(self.r, rows, dims)) * self.per_row(self.s, rows, dims)
        return y if self.bias is None else y + self.per_row(self.bias, rows, dims)


class GroupedLinear(nn.Module):
    """A Linear whose inputs and outputs are split into ``groups`` equal blocks, block g of the output reading
    only block g of the input (a 1x1 grouped convolution on flat features). The weight (out, in / groups) stacks
    the groups' weights as a grouped Conv2d does; initialisation is nn.Linear's for each group."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"in_features ({in_features}) and out_features ({out_features}) must be multiples "
                             f"of groups ({groups})")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's, with fan_in = in / groups
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_features // groups)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight, self.bias)
        per_in, per_out = self.in_features // self.groups, self.out_features // self.groups
        weight = self.weight.view(self.groups, per_out, per_in)
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (self.groups, per_in)), weight).flatten(-2)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}, "
                f"bias={self.bias is not None}")
