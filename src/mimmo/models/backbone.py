"""The backbone protocol every method builds on: a stem, a list of stages and a linear head.

A method never edits a backbone after the fact. It asks a :class:`BackboneFactory` for a backbone with
the input channels and output units it needs (MIMO asks for ``M*C`` inputs and ``M*K`` outputs), and
attaches exits after the stages. Any network that can be written as ``head(pool(stages(stem(x))))``
fits: subclass :class:`Backbone`, fill the four attributes, and pass a factory to a method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn


class Add(nn.Module):
    """Element-wise sum as a module, so that the cost counter sees residual additions."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Backbone(nn.Module):
    """A network split into ``stem``, ``stages``, ``pool`` and ``head``.

    Subclasses set:
      * ``stem``: the first layer(s), reading the raw input (its first layer is the one whose input
        channels a multi-input method multiplies);
      * ``stages``: an ``nn.ModuleList``; early exits attach after every stage but the last;
      * ``pool``: turns the last stage's output into a flat (B, F) feature vector;
      * ``head``: ``nn.Linear(F, num_outputs)``;
      * ``stage_channels``: the channel (or feature) width of each stage's output;
      * ``feature_dim``: F, the head's input width.
    """

    stem: nn.Module
    stages: nn.ModuleList
    pool: nn.Module
    head: nn.Linear
    stage_channels: tuple[int, ...]
    feature_dim: int

    def features(self, x: Tensor) -> list[Tensor]:
        """Every stage's output, shallowest first."""
        return self.stage_outputs(self.stem(x))

    def stage_outputs(self, h: Tensor) -> list[Tensor]:
        """Every stage's output for a stem output ``h`` (methods that mix stem features start here)."""
        outputs = []
        for stage in self.stages:
            h = stage(h)
            outputs.append(h)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)[-1]))

    def exit_adapter(self, stage_index: int) -> nn.Module:
        """The module that maps stage ``stage_index``'s output to the head's input width F.

        The default is the paper's adapter for convolutional stages: conv1x1 (with bias), BN, ReLU,
        global average pooling. Backbones whose stages are flat vectors override this.
        """
        return ConvExitAdapter(self.stage_channels[stage_index], self.feature_dim)


class ConvExitAdapter(nn.Sequential):
    """conv1x1 C_i -> F (with bias), BatchNorm, ReLU, global average pool, flatten."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_features, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_features),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )


class LinearExitAdapter(nn.Sequential):
    """Linear H_i -> F, BatchNorm1d, ReLU: the exit adapter for flat (MLP) stages."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU(inplace=True))


class BackboneFactory(Protocol):
    """Builds a fresh, independently initialised backbone for the given input channels and outputs."""

    def __call__(self, in_channels: int, num_outputs: int) -> Backbone: ...


def check_backbone(backbone: nn.Module) -> Backbone:
    """Refuse a network that does not declare the parts the methods rely on."""
    missing = [name for name in ("stem", "stages", "pool", "head", "stage_channels", "feature_dim")
               if not hasattr(backbone, name)]
    if missing:
        raise TypeError(
            f"{type(backbone).__name__} is not a mimmo Backbone: it lacks {missing}. A backbone declares "
            "stem, stages (nn.ModuleList), pool, head (nn.Linear), stage_channels and feature_dim; "
            "see mimmo.models.Backbone.")
    if not isinstance(backbone.stages, nn.ModuleList) or len(backbone.stages) < 1:
        raise TypeError(f"{type(backbone).__name__}.stages must be a non-empty nn.ModuleList, "
                        f"got {type(backbone.stages).__name__}")
    if not isinstance(backbone.head, nn.Linear):
        raise TypeError(f"{type(backbone).__name__}.head must be nn.Linear, got {type(backbone.head).__name__}")
    if len(backbone.stage_channels) != len(backbone.stages):
        raise TypeError(f"{type(backbone).__name__}.stage_channels has {len(backbone.stage_channels)} "
                        f"entries for {len(backbone.stages)} stages")
    return backbone  # type: ignore[return-value]


def first_layer(module: nn.Module) -> nn.Module:
    """The first Conv2d or Linear inside ``module`` (the layer reading the raw input)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            return layer
    raise TypeError(f"{type(module).__name__} contains no Conv2d or Linear layer")


FactoryFn = Callable[[int, int], Backbone]


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
