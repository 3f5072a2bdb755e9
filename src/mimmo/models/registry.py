"""Backbone names as used in configs (``model=<name>``) and how to build a factory from a ``model`` config.

Each entry maps a name to a callable taking the config's options as keyword arguments and returning a
:class:`~mimmo.models.backbone.BackboneFactory`; its keyword arguments are the options
``configs/model/<name>.yaml`` may set. Adding a backbone: write it (see :class:`~mimmo.models.Backbone`), give
it a factory (with ``input_shape_for`` to check the data it takes), add it here and add its yaml file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mimmo.models.backbone import BackboneFactory
from mimmo.models.mlp import MLPFactory
from mimmo.models.resnet import ResNetConfig, ResNetFactory
from mimmo.models.resnet18 import ResNet18Factory
from mimmo.models.wrn import WideResNetFactory


def resnet(layers: Sequence[int] = (1, 2, 3, 1), planes: Sequence[int] = (16, 32, 64, 128),
           strides: Sequence[int] = (1, 2, 2, 2), stem_channels: int = 16, width: float = 1.0) -> ResNetFactory:
    """The paper's bottleneck ResNet (docs/method.md, "Backbones and exits")."""
    return ResNetFactory(ResNetConfig(layers=tuple(layers), planes=tuple(planes), strides=tuple(strides),
                                      stem_channels=stem_channels, width=width))


BACKBONES: dict[str, Callable[..., BackboneFactory]] = {
    "resnet": resnet,
    "wrn": WideResNetFactory,
    "resnet18": ResNet18Factory,
    "mlp": MLPFactory,
}


def register_backbone(name: str, build: Callable[..., BackboneFactory]) -> None:
    """Make ``model=<name>`` build ``build(**options)`` (a config ``configs/model/<name>.yaml`` gives them)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a backbone name must be a non-empty string, got {name!r}")
    BACKBONES[name] = build


def backbone_options(name: str) -> list[str]:
    """The keyword options backbone ``name`` accepts."""
    return [p for p in inspect.signature(BACKBONES[name]).parameters if p != "self"]


def build_backbone_factory(model: Mapping[str, Any]) -> BackboneFactory:
    """The factory described by a ``model`` config: ``name`` plus that backbone's options (lists become tuples)."""
    options = dict(model)
    name = options.pop("name", None)
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BACKBONES)}")
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; its options are {allowed}")
    options = {key: tuple(value) if isinstance(value, list | tuple) else value for key, value in options.items()}
    return BACKBONES[name](**options)
