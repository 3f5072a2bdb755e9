"""A fully connected backbone for flat inputs (B, C): the second backbone every method must run on.

It follows the same protocol as the ResNet (stem, stages, pool, head), so multi-input methods multiply
the stem's input features, exits attach after every stage but the last, and the exit adapter is
:class:`~mimmo.models.backbone.LinearExitAdapter` instead of the convolutional one. Image data must be
flattened first (``in_features = C*H*W``): :meth:`MLPFactory.input_shape_for` says so, and ``mimmo train``
flattens the normalised images for it. A multi-input method then concatenates the M flattened images.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mimmo.models.backbone import Backbone, LinearExitAdapter


def _dense(in_features: int, out_features: int) -> list[nn.Module]:
    """Linear (no bias: BatchNorm follows) -> BatchNorm1d -> ReLU."""
    return [nn.Linear(in_features, out_features, bias=False), nn.BatchNorm1d(out_features),
            nn.ReLU(inplace=True)]


def _check_widths(hidden: Sequence[int], stem_features: int, blocks_per_stage: int) -> tuple[int, ...]:
    hidden = tuple(hidden)
    if len(hidden) < 1 or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive integers (one width per stage), "
                         f"got {hidden}")
    if not isinstance(stem_features, int) or stem_features < 1:
        raise ValueError(f"stem_features must be a positive integer, got {stem_features!r}")
    if not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be an integer >= 1, got {blocks_per_stage!r}")
    return hidden


class MLP(Backbone):
    """Stem and stages of Linear+BN+ReLU blocks (stage i: width hidden[i], ``blocks_per_stage`` blocks)."""

    def __init__(self, in_features: int, num_outputs: int, hidden: Sequence[int] = (64, 64, 64, 64),
                 stem_features: int = 64, blocks_per_stage: int = 1) -> None:
        super().__init__()
        if in_features < 1 or num_outputs < 1:
            raise ValueError(f"in_features ({in_features}) and num_outputs ({num_outputs}) must be >= 1")
        hidden = _check_widths(hidden, stem_features, blocks_per_stage)
        self.stem = nn.Sequential(*_dense(in_features, stem_features))
        stages, width = [], stem_features
        for stage_width in hidden:
            layers: list[nn.Module] = []
            for _ in range(blocks_per_stage):
                layers += _dense(width, stage_width)
                width = stage_width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = hidden
        self.feature_dim = hidden[-1]
        self.pool = nn.Identity()
        self.head = nn.Linear(self.feature_dim, num_outputs)

    def exit_adapter(self, stage_index: int) -> nn.Module:
        return LinearExitAdapter(self.stage_channels[stage_index], self.feature_dim)


class MLPFactory:
    """Builds :class:`MLP` backbones of one shape; picklable, so it can live in a config."""

    def __init__(self, hidden: Sequence[int] = (64, 64, 64, 64), stem_features: int = 64,
                 blocks_per_stage: int = 1) -> None:
        self.hidden = _check_widths(hidden, stem_features, blocks_per_stage)
        self.stem_features = stem_features
        self.blocks_per_stage = blocks_per_stage

    def __call__(self, in_channels: int, num_outputs: int) -> MLP:
        return MLP(in_channels, num_outputs, self.hidden, self.stem_features, self.blocks_per_stage)

    def input_shape_for(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Flat vectors: images (C, H, W) are flattened to (C*H*W,) (the normaliser does it, after the shifts)."""
        features = 1
        for side in data_shape:
            features *= side
        return (features,)

    def __repr__(self) -> str:
        return (f"MLPFactory(hidden={self.hidden}, stem_features={self.stem_features}, "
                f"blocks_per_stage={self.blocks_per_stage})")
