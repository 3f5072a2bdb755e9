"""MIMO (Havasi et al., 2021): M members in one network, fed M inputs concatenated along channels."""

from __future__ import annotations

import torch
from torch import Tensor

from mimmo.methods.base import (
    LossOutput,
    Method,
    Prediction,
    Progress,
    is_finite_number,
    is_integer,
    per_sample_nll,
    require,
)
from mimmo.methods.repetition import member_indices
from mimmo.models.backbone import BackboneFactory, check_backbone, first_layer


def validate_multi_input(num_members: int, repetitions: int, input_repetition: float) -> None:
    require(is_integer(num_members) and num_members >= 1,
            f"num_members must be an integer >= 1, got {num_members!r}")
    require(is_integer(repetitions) and repetitions >= 1,
            f"repetitions (batch repetition R) must be an integer >= 1, got {repetitions!r}")
    require(is_finite_number(input_repetition) and 0.0 <= input_repetition <= 1.0,
            f"input_repetition (rho) must lie in [0, 1], got {input_repetition!r}")


class MultiInputMethod(Method):
    """Shared machinery of the multi-input methods: tiling at test, repetition in training.

    Member m owns input channels [m*C, (m+1)*C) and output units [m*K, (m+1)*K).
    """

    def __init__(self, num_members: int, repetitions: int, input_repetition: float) -> None:
        super().__init__()
        validate_multi_input(num_members, repetitions, input_repetition)
        self.num_members = num_members
        self.augment_views = num_members  # under train.augment every member gets its own view of a sample
        self.repetitions = repetitions
        self.input_repetition = float(input_repetition)

    def tile_members(self, x: Tensor) -> Tensor:
        """Test time: every member receives the same input, (B, C, ...) -> (B, M*C, ...)."""
        return x.repeat(1, self.num_members, *([1] * (x.dim() - 2)))

    def training_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Training inputs (R*B, M*C, ...) and the targets of what each member received, (R*B, M).

        ``x`` (B, C, ...) with ``y`` (B,); or, augmented, one view per member, x (B, M, C, ...) with y (B, M)
        (:attr:`Method.augment_views`): member m then reads view m of the sample it receives."""
        index = member_indices(x.shape[0], self.num_members, self.repetitions, self.input_repetition,
                               device=x.device)
        if y.dim() == 1:
            return x[index].flatten(1, 2), y[index]
        if y.shape[1] != self.num_members or x.shape[:2] != y.shape:
            raise ValueError(f"{self.name} takes one view per member: x (B, {self.num_members}, C, ...) and y "
                             f"(B, {self.num_members}); got x {tuple(x.shape)} and y {tuple(y.shape)}")
        members = torch.arange(self.num_members, device=x.device)
        return x[index, members].flatten(1, 2), y[:, 0][index]

    def member_input_weights(self) -> list[Tensor]:
        weight = first_layer(self.backbone.stem).weight.detach()  # (C_out, M*C, ...)
        return list(weight.chunk(self.num_members, dim=1))

    def member_output_weights(self) -> list[Tensor]:
        return list(self.backbone.head.weight.detach().chunk(self.num_members, dim=0))  # M x (K, F)

    def split_members(self, outputs: Tensor) -> Tensor:
        """(..., M*K) -> (..., M, K): unit m*K + k is member m's class k."""
        return outputs.unflatten(-1, (self.num_members, self.num_classes))


class MIMO(MultiInputMethod):
    """MIMO: one backbone with an M*C-channel stem and an M*K-unit head; loss sum_m mean_b NLL."""

    name = "mimo"
    display_name, colour, marker = "MIMO", "tab:blue", "P"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 repetitions: int = 2, input_repetition: float = 0.25) -> None:
        super().__init__(num_members, repetitions, input_repetition)
        self.num_classes = num_classes
        self.backbone = check_backbone(backbone(in_channels * num_members, num_classes * num_members))
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    def forward(self, x: Tensor) -> Prediction:
        logits = self.split_members(self.backbone(self.tile_members(x)))
        return Prediction(logits[:, None], self.uniform_weights)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        inputs, targets = self.training_batch(x, y)
        logits = self.split_members(self.backbone(inputs))
        nll = per_sample_nll(logits, targets).mean(0).sum()
        return LossOutput(nll, {"nll": nll.detach()})
