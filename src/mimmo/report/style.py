"""How methods are shown: what tables and figures read of a method by its name in a run folder, from the method
class's attributes (:class:`~mimmo.methods.Method`) in the catalogue's order (:mod:`mimmo.methods.registry`);
one colour and marker per method that every figure uses, so MIMMO looks the same in every file."""

from __future__ import annotations

from mimmo.methods.base import Method
from mimmo.methods.registry import METHODS, display_name


def method_class(method: str) -> type[Method]:
    """The registered class of ``method``; :class:`Method` (black circles, its own rows) for a method this version
    does not know (a run from a newer or extended mimmo)."""
    return METHODS.get(method, Method)


def method_colour(method: str) -> str:
    return method_class(method).colour


def method_marker(method: str) -> str:
    return method_class(method).marker


def tabulated_by_members(method: str) -> bool:
    """Whether the report makes one table per M for ``method`` (M is an ensemble size)."""
    return method_class(method).tabulated_by_members


def learns_exit_weights(method: str) -> bool:
    """Whether ``method`` learns weights over its exits (the report shows how they converge)."""
    return method_class(method).learns_exit_weights


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the catalogue's method order (the paper's rows), unknown methods last by name."""
    order = list(METHODS)
    return (order.index(method), "") if method in METHODS else (len(order), method)


__all__ = ["display_name", "learns_exit_weights", "method_class", "method_colour", "method_marker", "method_rank",
           "tabulated_by_members"]
