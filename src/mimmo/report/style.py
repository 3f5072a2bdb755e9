"""How methods are shown: one colour and marker per method that every figure uses (MIMMO looks the same in every
file), next to the catalogue's order and display names (:mod:`mimmo.methods.registry`)."""

from __future__ import annotations

from mimmo.methods.registry import DISPLAY_NAMES, METHODS, display_name

METHOD_ORDER = tuple(METHODS)  # the paper's row order, from the method catalogue
# (colour, marker) per method: distinct colours (matplotlib's tab10, then two named ones) and distinct markers.
METHOD_STYLES = {
    "base": ("tab:gray", "o"),
    "ensemble": ("tab:brown", "s"),
    "batch_ensemble": ("goldenrod", "d"),
    "packed_ensemble": ("navy", "p"),
    "mc_dropout": ("tab:pink", "D"),
    "dun": ("tab:olive", "v"),
    "early_exit": ("tab:cyan", "^"),
    "mimo": ("tab:blue", "P"),
    "datamux": ("tab:purple", "X"),
    "mixmo": ("tab:green", "h"),
    "mimmo_gamma": ("tab:orange", "<"),
    "mimmo": ("tab:red", "*"),
}
OTHER_STYLE = ("black", "o")  # a method this version does not know (a run from a newer or extended mimmo)


def method_colour(method: str) -> str:
    return METHOD_STYLES.get(method, OTHER_STYLE)[0]


def method_marker(method: str) -> str:
    return METHOD_STYLES.get(method, OTHER_STYLE)[1]


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the paper's method order, unknown methods last by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


__all__ = ["DISPLAY_NAMES", "METHOD_ORDER", "METHOD_STYLES", "display_name", "method_colour", "method_marker",
           "method_rank"]
