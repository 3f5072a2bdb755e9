"""Deep Ensemble (Lakshminarayanan et al., 2017): M independently initialised networks (docs/method.md, "The
baselines' choices").

Every member trains on the whole training set with its own data order. The loader delivers that as
``data_streams = M`` independent shuffles of the training set: a training batch is x (B, M, C, ...) and
y (B, M), and member m trains on stream m only. The loss is the sum of the members' mean cross-entropies,
so each member's gradient equals that of its standalone training. The prediction is the uniform mixture of
the members' probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Method, Prediction, Progress, is_integer, require
from mimmo.models.backbone import BackboneFactory, check_backbone


class Ensemble(Method):
    """M separate backbones; logits (B, 1, M, K), weights ones (1, M)."""

    name = "ensemble"
    display_name, colour, marker = "Ensemble", "tab:brown", "s"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 num_members: int = 2) -> None:
        super().__init__()
        require(is_integer(num_members) and num_members >= 1,
                f"num_members (ensemble size) must be an integer >= 1, got {num_members!r}")
        self.num_classes = num_classes
        self.num_members = num_members
        self.data_streams = num_members  # one independent data order per member
        self.members = nn.ModuleList(check_backbone(backbone(in_channels, num_classes))
                                     for _ in range(num_members))
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    def forward(self, x: Tensor) -> Prediction:
        logits = torch.stack([member(x) for member in self.members], dim=1)  # (B, M, K)
        return Prediction(logits[:, None], self.uniform_weights)

    def check_streams(self, x: Tensor, y: Tensor) -> None:
        """A training batch must carry one data stream per member: x (B, M, C, ...), y (B, M)."""
        if y.dim() != 2 or y.shape[1] != self.num_members or x.dim() < 3 or x.shape[:2] != y.shape:
            raise ValueError(
                f"Ensemble training takes one data stream per member: x (B, {self.num_members}, C, ...) and "
                f"y (B, {self.num_members}); got x {tuple(x.shape)} and y {tuple(y.shape)}. The loader must "
                "honour Method.data_streams.")

    def member_losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of every member on its own stream, (M,)."""
        self.check_streams(x, y)
        return torch.stack([F.cross_entropy(member(x[:, m]).float(), y[:, m])
                            for m, member in enumerate(self.members)])

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        losses = self.member_losses(x, y)
        loss = losses.sum()
        return LossOutput(loss, {"nll": loss.detach() / self.num_members})
