"""The cost columns of the paper's tables: FLOPs and parameters of every method for one M (Tables 1-3).

Methods with an ensemble size take ``num_members``; the others use their own defaults (MC Dropout 10
samples; Base, DUN and EE do not depend on M).
"""

from __future__ import annotations

from mimmo.evaluation.cost import count_cost
from mimmo.methods.registry import METHODS, build_method, display_name, method_options
from mimmo.models.backbone import BackboneFactory
from mimmo.models.resnet import ResNetFactory


def cost_table(num_members: int, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 100,
               factory: BackboneFactory | None = None) -> list[dict]:
    """Rows {method, flops, params} (exact counts) for every registered method, in the paper's order."""
    if not isinstance(num_members, int) or num_members < 1:
        raise ValueError(f"num_members must be an integer >= 1, got {num_members!r}")
    factory = factory or ResNetFactory()
    rows = []
    for name in METHODS:
        options = {"num_members": num_members} if "num_members" in method_options(name) else {}
        method = build_method(name, factory, input_shape[0], num_classes, options)
        cost = count_cost(method, input_shape)
        rows.append({"method": name, "flops": cost.flops, "params": cost.params})
    return rows


def format_cost_table(rows: list[dict], num_members: int) -> str:
    """A Markdown table: FLOPs [M] and params [M] with two decimals."""
    lines = [f"Cost of one test-time prediction, M = {num_members}", "",
             "| method | FLOPs [M] | params [M] |", "|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {display_name(row['method'])} | {row['flops'] / 1e6:.2f} | {row['params'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"
