"""DataMUX (Murahari et al., 2022) in the MIMO setting: learned per-member input coders and separate
output heads (docs/method.md, "The baselines' choices").

Member m's input passes its own coder (conv3x3 C->C, no bias, BN, ReLU; for flat inputs Linear C->C, no
bias, BN1d, ReLU); the M codes are concatenated along channels into the backbone's stem (M*C inputs). The
shared feature goes through M separate Linear(F, K) demultiplexer heads. Batch and input repetition, the
loss sum_m mean_b NLL and the tiled test input are MIMO's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Prediction, Progress, per_sample_nll
from mimmo.methods.mimo import MultiInputMethod
from mimmo.models.backbone import BackboneFactory, check_backbone, first_layer


def make_coder(channels: int, flat: bool) -> nn.Sequential:
    """One member's multiplexing coder; the bias is dropped because BatchNorm follows."""
    if flat:
        return nn.Sequential(nn.Linear(channels, channels, bias=False), nn.BatchNorm1d(channels),
                             nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class DataMUX(MultiInputMethod):
    """Per-member coders -> shared backbone -> per-member heads; logits (B, 1, M, K)."""

    name = "datamux"
    display_name, colour, marker = "DataMUX", "tab:purple", "X"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 repetitions: int = 2, input_repetition: float = 0.25) -> None:
        super().__init__(num_members, repetitions, input_repetition)
        self.num_classes = num_classes
        # The backbone's own head is member 0's demultiplexer (F -> K); members 1..M-1 get their own.
        self.backbone = check_backbone(backbone(in_channels * num_members, num_classes))
        head = self.backbone.head
        self.extra_heads = nn.ModuleList(nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
                                         for _ in range(num_members - 1))
        flat = isinstance(first_layer(self.backbone.stem), nn.Linear)
        self.coders = nn.ModuleList(make_coder(in_channels, flat) for _ in range(num_members))
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    def heads(self) -> list[nn.Linear]:
        """The M demultiplexer heads, member 0 first."""
        return [self.backbone.head, *self.extra_heads]

    def encode(self, inputs: Tensor) -> Tensor:
        """(B, M*C, ...) -> the M codes concatenated along channels, (B, M*C, ...)."""
        chunks = inputs.chunk(self.num_members, dim=1)
        return torch.cat([coder(chunk) for coder, chunk in zip(self.coders, chunks, strict=True)], dim=1)

    def member_logits(self, inputs: Tensor) -> Tensor:
        """(B, M*C, ...) -> (B, M, K)."""
        feature = self.backbone.pool(self.backbone.features(self.encode(inputs))[-1])
        return torch.stack([head(feature) for head in self.heads()], dim=1)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.member_logits(self.tile_members(x))[:, None], self.uniform_weights)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        inputs, targets = self.training_batch(x, y)
        nll = per_sample_nll(self.member_logits(inputs), targets).mean(0).sum()
        return LossOutput(nll, {"nll": nll.detach()})

    def member_output_weights(self) -> list[Tensor]:
        return [head.weight.detach() for head in self.heads()]
