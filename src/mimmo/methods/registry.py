"""Method names as used in configs (``method=<name>``) and how to build one from a config.

This is the one method catalogue: the training loop, ``mimmo cost --table`` and the reports take the methods and
their order (the paper's rows) from here, and what else they show of a method from its class attributes
(:class:`~mimmo.methods.Method`: display name, colour and marker, tabulated by M, exits)."""

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
METHODS: dict[str, type[Method]] = {method.name: method for method in (
    Base, Ensemble, BatchEnsemble, PackedEnsemble, MCDropout, DUN, EarlyExit, MIMO, DataMUX, MixMo, MIMMOGamma, MIMMO,
)}



def register_method(method: type[Method]) -> None:
    """Make ``method=<method.name>`` build ``method`` (a config ``configs/method/<name>.yaml`` gives its options);
    its class attributes say how reports show it (:class:`~mimmo.methods.Method`)."""
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(f"a registered method must be a subclass of mimmo.methods.Method, got {method!r}")
    if not method.name or not isinstance(method.name, str) or method.name == Method.name:
        raise ValueError(f"{method.__name__}.name must be the method's config name (a non-empty string other than "
                         f"{Method.name!r}), got {method.name!r}")
    METHODS[method.name] = method


def display_name(name: str) -> str:
    """The name tables and figures show for method ``name`` (``name`` itself for a method not registered)."""
    method = METHODS.get(name)
    return method.display_name or name if method is not None else name


def exit_methods() -> list[str]:
    """The registered methods with early exits, in the catalogue's order."""
    return [name for name, method in METHODS.items() if method.has_exits]


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
