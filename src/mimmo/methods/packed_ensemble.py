"""Packed-Ensembles (Laurent et al., ICLR 2023): M narrow members packed side by side in one wide network.

Every layer of the backbone is rebuilt wider and grouped (the convention of the authors' torch-uncertainty code):
a layer of C channels gets w(C) = alpha * C channels in all, rounded up to a multiple of M * gamma, and every
Conv2d and Linear becomes a grouped one with M * gamma groups, so member m owns the m-th block of w(C) / M channels
of every layer, split into gamma independent subgroups. The stem's first layer reads the raw input with one group
(its output blocks are M separate first layers reading the same image); the head has M groups and M * K outputs,
unit m * K + k being member m's class k. BatchNorm, ReLU, pooling and residual additions act per channel, so with
gamma = 1 the network is exactly M independent networks of width w(C) / M (alpha = M: M copies of the backbone,
a Deep Ensemble). Training shows every member the same batch; the loss sums the members' mean cross-entropies
(the authors' code averages them: M times smaller, the same Adam steps without weight decay). The prediction is
the uniform mixture of the M members. New layers take PyTorch's default initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Method, Prediction, Progress, is_finite_number, is_integer, require
from mimmo.models.backbone import BackboneFactory, check_backbone, first_layer
from mimmo.models.ensemble_layers import GroupedLinear


class Packing:
    """How one backbone is packed: M members, width factor alpha, gamma subgroups per member."""

    def __init__(self, num_members: int, alpha: float, gamma: int, first: nn.Module, head: nn.Module) -> None:
        self.num_members, self.alpha, self.gamma = num_members, alpha, gamma
        self.first, self.head = first, head

    def width(self, channels: int) -> int:
        """w(C): alpha * C rounded up to a multiple of M * gamma (so every subgroup is whole)."""
        groups = self.num_members * self.gamma
        return groups * math.ceil(self.alpha * channels / groups - 1e-9)

    def conv(self, layer: nn.Conv2d) -> nn.Conv2d:
        if layer.groups != 1:
            raise NotImplementedError(f"packed_ensemble cannot pack a grouped convolution ({layer}); the backbone's "
                                      "convolutions must have groups=1")
        first = layer is self.first
        return nn.Conv2d(layer.in_channels if first else self.width(layer.in_channels), self.width(layer.out_channels),
                         layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         groups=1 if first else self.num_members * self.gamma, bias=layer.bias is not None,
                         padding_mode=layer.padding_mode)

    def linear(self, layer: nn.Linear) -> nn.Module:
        bias = layer.bias is not None
        if layer is self.head:  # M groups: member m's logits from member m's features
            return GroupedLinear(self.width(layer.in_features), self.num_members * layer.out_features,
                                 self.num_members, bias)
        if layer is self.first:
            return nn.Linear(layer.in_features, self.width(layer.out_features), bias)
        return GroupedLinear(self.width(layer.in_features), self.width(layer.out_features),
                             self.num_members * self.gamma, bias)

    def norm(self, layer: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
        return type(layer)(self.width(layer.num_features), layer.eps, layer.momentum, layer.affine,
                           layer.track_running_stats)

    def pack(self, module: nn.Module) -> None:
        """Replace every Conv2d, Linear and BatchNorm below ``module`` by its packed version, in place."""
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(module, name, self.conv(child))
            elif isinstance(child, nn.Linear):
                setattr(module, name, self.linear(child))
            elif isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
                setattr(module, name, self.norm(child))
            elif not list(child.children()) and (list(child.parameters()) or list(child.buffers())):
                raise NotImplementedError(
                    f"packed_ensemble packs Conv2d, Linear and BatchNorm layers; {type(child).__name__} holds "
                    "per-channel parameters or buffers it cannot widen")
            else:
                self.pack(child)


class PackedEnsemble(Method):
    """M members as the groups of one wide grouped network; logits (B, 1, M, K), uniform weights."""

    name = "packed_ensemble"
    display_name, colour, marker = "Packed-Ensembles", "navy", "p"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 alpha: float = 2.0, gamma: int = 2) -> None:
        super().__init__()
        require(is_integer(num_members) and num_members >= 1,
                f"num_members (ensemble size) must be an integer >= 1, got {num_members!r}")
        require(is_finite_number(alpha) and alpha > 0, f"alpha (width factor) must be a number > 0, got {alpha!r}")
        require(is_integer(gamma) and gamma >= 1,
                f"gamma (subgroups per member) must be an integer >= 1, got {gamma!r}")
        self.num_classes = num_classes
        self.num_members = num_members
        self.alpha, self.gamma = float(alpha), gamma
        self.backbone = check_backbone(backbone(in_channels, num_classes))
        head = self.backbone.head
        Packing(num_members, self.alpha, gamma, first_layer(self.backbone.stem), head).pack(self.backbone)
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits, (B, M, K)."""
        return self.backbone(x).view(x.shape[0], self.num_members, self.num_classes)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.member_logits(x)[:, None], self.uniform_weights)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        logits = self.member_logits(x)  # (B, M, K)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat_interleave(self.num_members))
        return LossOutput(nll * self.num_members, {"nll": nll.detach()})
