"""The paper's CIFAR backbone: a bottleneck ResNet with four stages (docs/method.md, "Backbones and exits").

Defaults give the paper's network: layers (1,2,3,1), planes (16,32,64,128), inner width 2p, output
width 4p, a projection shortcut on the first block of every stage, no stem pooling. With 3x32x32 inputs
and 100 classes it has 1,756,340 parameters and 109,852,872 FLOPs in the paper's convention.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mimmo.models.backbone import Add, Backbone, check_image_input

BOTTLENECK_EXPANSION = 4  # output width = 4p
BOTTLENECK_INNER = 2  # inner width = 2p ("base width 32, multiplier 2")


class Bottleneck(nn.Module):
    """conv1x1 in->2p, conv3x3 2p->2p (stride s), conv1x1 2p->4p, each with BN; projection shortcut."""

    def __init__(self, in_channels: int, planes: int, stride: int, project: bool) -> None:
        super().__init__()
        inner, out = BOTTLENECK_INNER * planes, BOTTLENECK_EXPANSION * planes
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out)) if project else nn.Identity())
        self.add = Add()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.add(self.branch(x), self.shortcut(x)))


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of the bottleneck ResNet. ``width`` multiplies every stage's planes and the stem."""

    layers: tuple[int, ...] = (1, 2, 3, 1)
    planes: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem_channels: int = 16
    width: float = 1.0

    def __post_init__(self) -> None:
        if not (len(self.layers) == len(self.planes) == len(self.strides)) or len(self.layers) < 1:
            raise ValueError(f"layers {self.layers}, planes {self.planes} and strides {self.strides} must be "
                             "non-empty and of the same length (one entry per stage)")
        if any(n < 1 for n in self.layers):
            raise ValueError(f"every stage needs at least one block, got layers={self.layers}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides must be 1 or 2, got {self.strides}")
        if self.width <= 0 or any(p < 1 for p in self.planes) or self.stem_channels < 1:
            raise ValueError(f"width ({self.width}), planes ({self.planes}) and stem_channels "
                             f"({self.stem_channels}) must be positive")


class ResNet(Backbone):
    """Bottleneck ResNet exposing its stage outputs (exits attach after stages 1..D-1)."""

    def __init__(self, in_channels: int, num_outputs: int, config: ResNetConfig | None = None) -> None:
        super().__init__()
        config = config or ResNetConfig()
        if in_channels < 1 or num_outputs < 1:
            raise ValueError(f"in_channels ({in_channels}) and num_outputs ({num_outputs}) must be >= 1")
        stem_channels = max(1, round(config.stem_channels * config.width))
        planes = [max(1, round(p * config.width)) for p in config.planes]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        stages, channels = [], stem_channels
        for num_blocks, p, stride in zip(config.layers, planes, config.strides, strict=True):
            blocks = []
            for b in range(num_blocks):
                blocks.append(Bottleneck(channels, p, stride if b == 0 else 1, project=b == 0))
                channels = BOTTLENECK_EXPANSION * p
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(BOTTLENECK_EXPANSION * p for p in planes)
        self.feature_dim = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(channels, num_outputs)


class ResNetFactory:
    """Builds :class:`ResNet` backbones of one shape; picklable, so it can live in a config."""

    def __init__(self, config: ResNetConfig | None = None) -> None:
        self.config = config or ResNetConfig()

    def __call__(self, in_channels: int, num_outputs: int) -> ResNet:
        return ResNet(in_channels, num_outputs, self.config)

    def input_shape_for(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Images (C, H, W) whose sides survive the strides (16 pixels for the paper's)."""
        return check_image_input(data_shape, self.config.strides, "ResNet")

    def __repr__(self) -> str:
        return f"ResNetFactory({self.config})"
