"""Wide-ResNet (Zagoruyko & Komodakis, 2016), pre-activation, for CIFAR-sized images.

WRN-depth-widen: a conv3x3 stem (C -> 16), three stages of n = (depth - 4) / 6 pre-activation basic blocks
of widths 16k, 32k, 64k (strides 1, 2, 2), a final BN + ReLU, global average pooling and a linear head. A block
is BN, ReLU, conv3x3 (stride s), BN, ReLU, conv3x3; its shortcut is the identity, or a conv1x1 (stride s) on
the pre-activated input where the width or the resolution changes. All convolutions are bias-free. WRN-28-10
(MIMO's headline network) has 36,479,194 parameters with 10 classes. Exits attach after stages 1 and 2.
"""

from __future__ import annotations

from torch import Tensor, nn

from mimmo.models.backbone import Add, Backbone, check_image_input

WRN_STAGE_WIDTHS = (16, 32, 64)
WRN_STRIDES = (1, 2, 2)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the identity or a conv1x1 projection of the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        project = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if project else None
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        branch = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return self.add(branch, x if self.shortcut is None else self.shortcut(activated))


def check_wrn_shape(depth: int, widen: int | float) -> None:
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
    if not isinstance(widen, int | float) or isinstance(widen, bool) or widen <= 0:
        raise ValueError(f"WRN widen must be a positive number, got {widen!r}")


class WideResNet(Backbone):
    """Pre-activation WRN-depth-widen with three stages (the last one ends in BN + ReLU)."""

    def __init__(self, in_channels: int, num_outputs: int, depth: int = 28, widen: int | float = 10) -> None:
        super().__init__()
        check_wrn_shape(depth, widen)
        if in_channels < 1 or num_outputs < 1:
            raise ValueError(f"in_channels ({in_channels}) and num_outputs ({num_outputs}) must be >= 1")
        blocks_per_stage = (depth - 4) // 6
        widths = [max(1, round(w * widen)) for w in WRN_STAGE_WIDTHS]
        stem_channels = WRN_STAGE_WIDTHS[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False))
        stages, channels = [], stem_channels
        for width, stride in zip(widths, WRN_STRIDES, strict=True):
            blocks: list[nn.Module] = []
            for b in range(blocks_per_stage):
                blocks.append(PreActBlock(channels, width, stride if b == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        stages[-1].append(nn.BatchNorm2d(channels))  # pre-activation: the last block's output is activated here
        stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(widths)
        self.feature_dim = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(channels, num_outputs)


class WideResNetFactory:
    """Builds :class:`WideResNet` backbones of one depth and widening factor."""

    def __init__(self, depth: int = 28, widen: int | float = 10) -> None:
        check_wrn_shape(depth, widen)
        self.depth, self.widen = depth, widen

    def __call__(self, in_channels: int, num_outputs: int) -> WideResNet:
        return WideResNet(in_channels, num_outputs, self.depth, self.widen)

    def input_shape_for(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Images (C, H, W) at least 4 pixels a side (two stride-2 stages)."""
        return check_image_input(data_shape, WRN_STRIDES, f"WRN-{self.depth}-{self.widen}")

    def __repr__(self) -> str:
        return f"WideResNetFactory(depth={self.depth}, widen={self.widen})"
