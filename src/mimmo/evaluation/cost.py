"""FLOPs and parameters of one test-time prediction in the paper's convention (docs/method.md, "The paper's cost
convention").

Rules: conv and linear (grouped ones included) count one per multiply-add plus one per output for a bias;
BatchEnsemble's fast weights one per element they scale, its member bias one per output; BatchNorm 2 per
element; ReLU, residual add and dropout 1 per output element; pooling 1 per input element; the softmax
of every exit and member 1 per logit; reshapes, flatten and identity 0. The count runs forward hooks on
leaf modules during one prediction on a batch of one; a leaf module without a rule is an error rather
than a silent zero (register a rule with :func:`register_cost_rule`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimmo.models.backbone import Add, count_parameters
from mimmo.models.ensemble_layers import GroupedLinear, RankOneLayer

CostRule = Callable[[nn.Module, tuple[Tensor, ...], Tensor], int]


def _conv_flops(module: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
    flops = kernel * output.numel()
    if module.bias is not None:
        flops += output.numel()
    return flops


def _linear_flops(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    flops = module.in_features * output.numel()
    if module.bias is not None:
        flops += output.numel()
    return flops


def _grouped_linear_flops(module: GroupedLinear, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    flops = module.in_features // module.groups * output.numel()
    if module.bias is not None:
        flops += output.numel()
    return flops


def _rank_one_flops(module: RankOneLayer, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    """BatchEnsemble's fast weights (the wrapped layer counts itself): r and s one multiply per element they
    scale, the member bias one add per output."""
    return inputs[0].numel() + output.numel() * (1 if module.bias is None else 2)


def _per_input_element(factor: int) -> CostRule:
    return lambda module, inputs, output: factor * inputs[0].numel()


def _per_output_element(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    return output.numel()


def _free(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    return 0


COST_RULES: dict[type[nn.Module], CostRule] = {
    nn.Conv2d: _conv_flops,
    nn.Linear: _linear_flops,
    GroupedLinear: _grouped_linear_flops,
    RankOneLayer: _rank_one_flops,
    nn.BatchNorm1d: _per_input_element(2),
    nn.BatchNorm2d: _per_input_element(2),
    nn.ReLU: _per_output_element,
    Add: _per_output_element,
    nn.Dropout: _per_output_element,
    nn.AdaptiveAvgPool2d: _per_input_element(1),
    nn.AvgPool2d: _per_input_element(1),
    nn.MaxPool2d: _per_input_element(1),
    nn.Flatten: _free,
    nn.Identity: _free,
    nn.Unflatten: _free,
}


def register_cost_rule(module_type: type[nn.Module], rule: CostRule) -> None:
    """Teach the counter a new leaf module type (e.g. a user backbone's activation)."""
    COST_RULES[module_type] = rule


def _rule_for(module: nn.Module) -> CostRule | None:
    for cls in type(module).__mro__:
        if cls in COST_RULES:
            return COST_RULES[cls]
    return None


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int

    def millions(self) -> tuple[float, float]:
        return self.flops / 1e6, self.params / 1e6


class FlopCounter:
    """Counts the FLOPs that the watched leaf modules compute, by forward hooks (see :func:`counting_flops`)."""

    def __init__(self) -> None:
        self.flops = 0
        self.ran: set[int] = set()  # ids of the leaf modules that ran

    def hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.flops += _rule_for(module)(module, inputs, output)
        self.ran.add(id(module))


@contextmanager
def counting_flops(method: nn.Module) -> Iterator[FlopCounter]:
    """Count the FLOPs of everything ``method``'s leaf modules compute inside the block (any batch size: the
    rules scale with it). Softmaxes are not modules: the caller adds them. Raises NotImplementedError for a leaf
    module type without a rule."""
    leaves = [m for m in method.modules() if not list(m.children()) or type(m) in COST_RULES]
    unknown = sorted({type(m).__name__ for m in leaves if _rule_for(m) is None
                      and not isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict)})
    if unknown:
        raise NotImplementedError(f"no FLOP rule for module types {unknown}; add one with "
                                  "mimmo.evaluation.cost.register_cost_rule")
    counter = FlopCounter()
    handles = [m.register_forward_hook(counter.hook) for m in leaves if _rule_for(m) is not None]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def _used_parameters(method: nn.Module, ran: set[int]) -> int:
    """Trainable parameters of the leaf modules that ran, plus those held by containers (such as theta)."""
    total = 0
    for module in method.modules():
        if _rule_for(module) is not None and id(module) not in ran:
            continue
        total += sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    return total


@torch.no_grad()
def count_cost(method: nn.Module, input_shape: tuple[int, ...], used_parameters: bool = False) -> Cost:
    """FLOPs and trainable parameters of one test-time prediction for one input of ``input_shape``.

    With ``used_parameters`` only the parameters of the modules the prediction ran count (and those held by
    containers, such as MIMMO's theta): the parameters of a network with exits pruned."""
    was_training = method.training
    method.eval()
    try:
        with counting_flops(method) as counter:
            parameter = next(method.parameters())
            x = torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype)
            prediction = method(x)
        total = counter.flops + prediction.logits.numel()  # one softmax per exit and member
    finally:
        method.train(was_training)
    params = _used_parameters(method, counter.ran) if used_parameters else count_parameters(method)
    return Cost(flops=int(total), params=params)
