"""FLOPs and parameters of one test-time prediction in the paper's convention (SPEC §7).

Rules: conv and linear count one per multiply-add plus one per output for a bias; BatchNorm 2 per
element; ReLU, residual add and dropout 1 per output element; pooling 1 per input element; the softmax
of every exit and member 1 per logit; reshapes, flatten and identity 0. The count runs forward hooks on
leaf modules during one prediction on a batch of one; a leaf module without a rule is an error rather
than a silent zero (register a rule with :func:`register_cost_rule`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimmo.models.backbone import Add, count_parameters

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


def _per_input_element(factor: int) -> CostRule:
    return lambda module, inputs, output: factor * inputs[0].numel()


def _per_output_element(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    return output.numel()


def _free(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    return 0


COST_RULES: dict[type[nn.Module], CostRule] = {
    nn.Conv2d: _conv_flops,
    nn.Linear: _linear_flops,
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


@torch.no_grad()
def count_cost(method: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """FLOPs and trainable parameters of one test-time prediction for one input of ``input_shape``."""
    leaves = [m for m in method.modules() if not list(m.children()) or type(m) in COST_RULES]
    unknown = sorted({type(m).__name__ for m in leaves if _rule_for(m) is None
                      and not isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict)})
    if unknown:
        raise NotImplementedError(f"no FLOP rule for module types {unknown}; add one with "
                                  "mimmo.evaluation.cost.register_cost_rule")
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _rule_for(module)(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in leaves if _rule_for(m) is not None]
    was_training = method.training
    method.eval()
    try:
        parameter = next(method.parameters())
        x = torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype)
        prediction = method(x)
        total += prediction.logits.numel()  # one softmax per exit and member
    finally:
        for handle in handles:
            handle.remove()
        method.train(was_training)
    return Cost(flops=int(total), params=count_parameters(method))
