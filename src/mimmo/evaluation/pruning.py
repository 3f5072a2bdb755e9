"""Exits pruned by their weight at test time (``evaluation.prune_exits=EPS``; see mimmo.methods.exits).

For an exit method with more than one exit, exit i is dropped for member m when its weight w[i, m] < EPS, and
each member's remaining weights are renormalised. The pruned network computes an exit's adapter only if some
member keeps that exit, and no stage after the deepest kept exit. Its predictions equal the full network's
logits mixed with the pruned weights, so its metrics come from the same pass over a set as the full network's
(:class:`~mimmo.evaluation.evaluate.Readout`); its cost is counted on the pruned network itself.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mimmo.evaluation.cost import count_cost
from mimmo.methods.base import Method
from mimmo.methods.exits import PrunedExits, StagedExits, prune_weights, used_exits
from mimmo.methods.registry import exit_methods


def can_prune(method: Method) -> bool:
    """Whether ``method`` has exits to prune: an exit method with more than one exit."""
    return isinstance(method, StagedExits) and method.num_exits > 1


def pruned_weights(method: Method, eps: float) -> Tensor:
    """The method's prediction weights (D, M) pruned at ``eps``; TypeError for a method without exits."""
    if not can_prune(method):
        raise TypeError(f"{method.name} has no exits to prune; exits are pruned for {', '.join(exit_methods())}")
    return prune_weights(method.prediction_weights().detach().cpu(), eps)  # type: ignore[attr-defined]


def pruned_network(method: Method, eps: float) -> PrunedExits:
    """The network that computes only what the exits kept at ``eps`` need."""
    return PrunedExits(method, pruned_weights(method, eps).to(next(method.parameters()).device))


def pruned_cost(method: Method, eps: float, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """FLOPs and params of one prediction of the pruned network, with the pruned weights and the exits it runs."""
    network = pruned_network(method, eps)
    cost = count_cost(network, input_shape, used_parameters=True)
    weights = network.full_weights.cpu()
    return {"prune_exits": float(eps), "weights": weights.tolist(), "exits_used": used_exits(weights),
            "deepest_stage": network.deepest + 1, "cost": {"flops": cost.flops, "params": cost.params}}
