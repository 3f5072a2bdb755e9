"""The CIFAR ResNet-18 used by most uncertainty papers: a 3x3 stem without max-pool, basic blocks.

Stem conv3x3 C -> 64 (stride 1, no bias), BN, ReLU; four stages of two basic blocks, widths 64, 128, 256,
512, strides 1, 2, 2, 2. A block is conv3x3 (stride s), BN, ReLU, conv3x3, BN, plus the identity or a conv1x1
(stride s) + BN projection where the width or the resolution changes, then ReLU. Global average pooling and a
linear head: 11,173,962 parameters with 10 classes. Exits attach after stages 1, 2 and 3.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mimmo.models.backbone import Add, Backbone, check_image_input

RESNET18_PLANES = (64, 128, 256, 512)
RESNET18_STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        project = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels)) if project else nn.Identity())
        self.add = Add()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.add(self.branch(x), self.shortcut(x)))


def check_resnet18_shape(layers: Sequence[int], width: float) -> tuple[int, ...]:
    layers = tuple(layers)
    if len(layers) != len(RESNET18_PLANES) or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"resnet18 layers must be {len(RESNET18_PLANES)} integers >= 1 (blocks per stage), "
                         f"got {layers}")
    if not isinstance(width, int | float) or isinstance(width, bool) or width <= 0:
        raise ValueError(f"resnet18 width must be a positive number, got {width!r}")
    return layers


class ResNet18(Backbone):
    """CIFAR ResNet-18 (or another depth through ``layers``), every stage's width times ``width``."""

    def __init__(self, in_channels: int, num_outputs: int, layers: Sequence[int] = (2, 2, 2, 2),
                 width: float = 1.0) -> None:
        super().__init__()
        layers = check_resnet18_shape(layers, width)
        if in_channels < 1 or num_outputs < 1:
            raise ValueError(f"in_channels ({in_channels}) and num_outputs ({num_outputs}) must be >= 1")
        planes = [max(1, round(p * width)) for p in RESNET18_PLANES]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        stages, channels = [], planes[0]
        for num_blocks, p, stride in zip(layers, planes, RESNET18_STRIDES, strict=True):
            blocks = []
            for b in range(num_blocks):
                blocks.append(BasicBlock(channels, p, stride if b == 0 else 1))
                channels = p
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(planes)
        self.feature_dim = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(channels, num_outputs)


class ResNet18Factory:
    """Builds :class:`ResNet18` backbones of one shape."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), width: float = 1.0) -> None:
        self.layers, self.width = check_resnet18_shape(layers, width), width

    def __call__(self, in_channels: int, num_outputs: int) -> ResNet18:
        return ResNet18(in_channels, num_outputs, self.layers, self.width)

    def input_shape_for(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Images (C, H, W) at least 8 pixels a side (three stride-2 stages)."""
        return check_image_input(data_shape, RESNET18_STRIDES, "resnet18")

    def __repr__(self) -> str:
        return f"ResNet18Factory(layers={self.layers}, width={self.width})"
