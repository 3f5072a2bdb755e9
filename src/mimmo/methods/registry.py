"""Method names as used in configs (``method=<name>``), their display names, and how to build one from a config.

This is the one method catalogue: the training loop, ``mimmo cost --table`` and the reports take the methods,
their order (the paper's rows) and their display names from here."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mimmo.methods.base import Base, Method
from mimmo.methods.batch_ensemble import BatchEnsemble
from mimmo.methods.datamux import DataMUX
from mimmo.methods.dun import DUN
from mimmo.methods.early_exit import EarlyExit
from mimmo.methods.ensemble import Ensemble
from mimmo.methods.mc_dropout import MCDropout
from mimmo.methods.mimmo import MIMMO, MIMMOGamma
from mimmo.methods.mimo import MIMO
from mimmo.methods.mixmo import MixMo
from mimmo.methods.packed_ensemble import PackedEnsemble
from mimmo.models.backbone import BackboneFactory

# In the paper's row order; the efficient ensembles it does not have follow the Ensemble.
METHODS: dict[str, type[Method]] = {
    "base": Base,
    "ensemble": Ensemble,
    "batch_ensemble": BatchEnsemble,
    "packed_ensemble": PackedEnsemble,
    "mc_dropout": MCDropout,
    "dun": DUN,
    "early_exit": EarlyExit,
    "mimo": MIMO,
    "datamux": DataMUX,
    "mixmo": MixMo,
    "mimmo_gamma": MIMMOGamma,
    "mimmo": MIMMO,
}

# How tables and figures name each method (a method without an entry is shown by its config name).
DISPLAY_NAMES: dict[str, str] = {
    "base": "Base", "ensemble": "Ensemble", "batch_ensemble": "BatchEnsemble", "packed_ensemble": "Packed-Ensembles",
    "mc_dropout": "MC Dropout", "dun": "DUN", "early_exit": "EE",
    "mimo": "MIMO", "datamux": "DataMUX", "mixmo": "MixMo", "mimmo_gamma": "MIMMO-γ", "mimmo": "MIMMO",
}


def register_method(name: str, method: type[Method], display_name: str | None = None) -> None:
    """Make ``method=<name>`` build ``method`` (a config ``configs/method/<name>.yaml`` gives its options)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(f"method {name!r} must be a subclass of mimmo.methods.Method, got {method!r}")
    METHODS[name] = method
    if display_name is not None:
        DISPLAY_NAMES[name] = display_name


def display_name(name: str) -> str:
    """The name tables and figures show for method ``name``."""
    return DISPLAY_NAMES.get(name, name)


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
