"""BatchEnsemble (Wen, Tran & Ba, ICLR 2020): one shared network, rank-1 fast weights per member.

Every Conv2d and Linear of the backbone (the stem's first layer and the head included) becomes a
:class:`~mimmo.models.ensemble_layers.RankOneLayer`: member m computes ``W(x * r_m) * s_m + b_m`` (the paper's
Eq. 1 written per layer; W shared, r_m, s_m and the bias b_m its own). BatchNorm stays shared, as in the authors'
code. The batch is repeated M times, member m taking the m-th copy, in training (as in the authors' code, every
member sees every image of the batch) and at test; the prediction is the uniform mixture of the M members. The
loss is the sum over members of their mean cross-entropy (the convention of this library's Ensemble and MIMO; the
authors' code averages over the M copies, M times smaller: the same Adam steps without weight decay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Method, Prediction, Progress, is_integer, require
from mimmo.models.backbone import BackboneFactory, check_backbone
from mimmo.models.ensemble_layers import FAST_WEIGHT_INITS, RankOneLayer


def insert_rank_one(module: nn.Module, num_members: int, init: str) -> int:
    """Wrap every Conv2d and Linear below ``module`` in a :class:`RankOneLayer`; returns how many were wrapped."""
    wrapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d | nn.Linear):
            setattr(module, name, RankOneLayer(child, num_members, init))
            wrapped += 1
        else:
            wrapped += insert_rank_one(child, num_members, init)
    return wrapped


class BatchEnsemble(Method):
    """One backbone with per-member rank-1 fast weights; logits (B, 1, M, K), uniform weights."""

    name = "batch_ensemble"
    display_name, colour, marker = "BatchEnsemble", "goldenrod", "d"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 fast_weight_init: str = "normal") -> None:
        super().__init__()
        require(is_integer(num_members) and num_members >= 1,
                f"num_members (ensemble size) must be an integer >= 1, got {num_members!r}")
        require(fast_weight_init in FAST_WEIGHT_INITS,
                f"fast_weight_init must be one of {FAST_WEIGHT_INITS}, got {fast_weight_init!r}")
        self.num_classes = num_classes
        self.num_members = num_members
        self.fast_weight_init = fast_weight_init
        self.backbone = check_backbone(backbone(in_channels, num_classes))
        insert_rank_one(self.backbone, num_members, fast_weight_init)
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits for every input, (B, M, K): the batch repeated M times, member-major."""
        batch = x.shape[0]
        logits = self.backbone(x.repeat(self.num_members, *([1] * (x.dim() - 1))))  # (M B, K)
        return logits.view(self.num_members, batch, -1).transpose(0, 1)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.member_logits(x)[:, None], self.uniform_weights)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        logits = self.member_logits(x)  # (B, M, K)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat_interleave(self.num_members))
        loss = nll * self.num_members  # sum over members of each member's mean cross-entropy
        return LossOutput(loss, {"nll": nll.detach()})
