"""Early exits (EE): a classifier after every stage, trained jointly, averaged uniformly (docs/method.md, "The
baselines' choices").

Exit i = 1..D-1 reads stage i's output: global average pool (convolutional stages only) -> Linear(C_i, h_i)
-> ReLU -> Linear(h_i, K), with h_i = floor((1+gamma)^((D-i)/2) * F) so the shallowest exit is the widest.
The D-th exit is the backbone's own head. Loss alpha * sum_{i<D} CE_i + CE_D; prediction: the uniform
mixture of the D exits' probabilities. M = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Method, Prediction, Progress, is_finite_number, require
from mimmo.methods.exits import StagedExits
from mimmo.models.backbone import Backbone, BackboneFactory, check_backbone, first_layer


def has_flat_stages(backbone: Backbone) -> bool:
    """True when the stages are fully connected (outputs (B, H)), False for convolutional stages."""
    return isinstance(first_layer(backbone.stages[0]), nn.Linear)


def exit_widths(num_exits: int, feature_dim: int, gamma: float) -> list[int]:
    """Hidden widths h_i = floor((1+gamma)^((D-i)/2) * F) of the exits i = 1..D-1."""
    return [math.floor((1.0 + gamma) ** ((num_exits - i) / 2) * feature_dim) for i in range(1, num_exits)]


class ExitClassifier(nn.Sequential):
    """[GAP, flatten] -> Linear(C_i, h_i) -> ReLU -> Linear(h_i, K)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, pool: bool) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)] if pool else []
        layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
        super().__init__(*layers)


class EarlyExit(StagedExits, Method):
    """A backbone with its own classifier after every stage but the last; logits (B, D, 1, K)."""

    name = "early_exit"
    display_name, colour, marker = "EE", "tab:cyan", "^"

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, gamma: float = 0.3,
                 alpha: float = 1.0) -> None:
        super().__init__()
        require(is_finite_number(gamma) and gamma >= 0,
                f"gamma (exit width growth) must be a finite number >= 0, got {gamma!r}")
        require(is_finite_number(alpha) and alpha >= 0,
                f"alpha (weight of the early exits' loss) must be a finite number >= 0, got {alpha!r}")
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.backbone = check_backbone(backbone(in_channels, num_classes))
        self.num_exits = len(self.backbone.stages)
        pool = not has_flat_stages(self.backbone)
        widths = exit_widths(self.num_exits, self.backbone.feature_dim, self.gamma)
        self.exits = nn.ModuleList(ExitClassifier(self.backbone.stage_channels[i], width, num_classes, pool)
                                   for i, width in enumerate(widths))
        self.register_buffer("uniform_weights", torch.full((self.num_exits, 1), 1.0 / self.num_exits),
                             persistent=False)

    def exit_logits(self, x: Tensor) -> Tensor:
        """Logits of every exit, shallowest first, (B, D, K)."""
        stage_outputs = self.backbone.features(x)
        logits = [exit_(h) for exit_, h in zip(self.exits, stage_outputs[:-1], strict=True)]
        logits.append(self.backbone.head(self.backbone.pool(stage_outputs[-1])))
        return torch.stack(logits, dim=1)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.exit_logits(x)[:, :, None], self.uniform_weights)

    def exit_stem(self, x: Tensor) -> Tensor:
        return self.backbone.stem(x)

    def exit_stage(self, index: int, h: Tensor, compute_exit: bool) -> tuple[Tensor, Tensor | None]:
        h = self.backbone.stages[index](h)
        if not compute_exit:
            return h, None
        if index == self.num_exits - 1:
            return h, self.backbone.head(self.backbone.pool(h))[:, None]
        return h, self.exits[index](h)[:, None]

    def prediction_weights(self) -> Tensor:
        return self.uniform_weights

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        logits = self.exit_logits(x).float()
        per_exit = torch.stack([F.cross_entropy(logits[:, i], y) for i in range(self.num_exits)])  # (D,)
        loss = self.alpha * per_exit[:-1].sum() + per_exit[-1]
        return LossOutput(loss, {"nll": per_exit.mean().detach(), "nll_final": per_exit[-1].detach()})
