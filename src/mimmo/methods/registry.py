"""Method names as used in configs (``method=<name>``) and how to build one from a config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mimmo.methods.base import Base, Method
from mimmo.methods.datamux import DataMUX
from mimmo.methods.dun import DUN
from mimmo.methods.early_exit import EarlyExit
from mimmo.methods.ensemble import Ensemble
from mimmo.methods.mc_dropout import MCDropout
from mimmo.methods.mimmo import MIMMO, MIMMOGamma
from mimmo.methods.mimo import MIMO
from mimmo.methods.mixmo import MixMo
from mimmo.models.backbone import BackboneFactory

# In the paper's row order.
METHODS: dict[str, type[Method]] = {
    "base": Base,
    "ensemble": Ensemble,
    "mc_dropout": MCDropout,
    "dun": DUN,
    "early_exit": EarlyExit,
    "mimo": MIMO,
    "datamux": DataMUX,
    "mixmo": MixMo,
    "mimmo_gamma": MIMMOGamma,
    "mimmo": MIMMO,
}


def method_options(name: str) -> list[str]:
    """The keyword options a method accepts beyond the backbone and the data shape."""
    parameters = inspect.signature(METHODS[name].__init__).parameters
    return [p for p in parameters if p not in {"self", "backbone", "in_channels", "num_classes"}]


def build_method(name: str, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 options: Mapping[str, Any] | None = None) -> Method:
    """Build method ``name`` on ``backbone`` for inputs of ``in_channels`` channels and ``num_classes``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    options = dict(options or {})
    allowed = method_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options are {allowed}")
    return METHODS[name](backbone, in_channels, num_classes, **options)
