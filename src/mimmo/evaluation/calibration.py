"""Post-hoc temperature scaling for every method (Guo et al., ICML 2017; as torch-uncertainty's temperature
scaler, one temperature for the whole model).

One temperature T > 0 is fitted on the validation split by minimising the NLL of the predictive mixture with
every component's logits divided by T before its softmax:

    p_T(y|x) = sum_m (1/M) sum_i w[i, m] softmax(logits[:, i, m] / T)(y).

T = 1 is the method's own mixture, bit for bit. For one component (Base) the top class does not depend on T;
for a mixture it can (the components' relative confidences change), so accuracy may move a little.
The search is one-dimensional over log T: a grid over [0.05, 20], then a golden-section refinement around the
best grid point; T = 1 is among the candidates, so the fitted T never has a higher validation NLL than T = 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.data.datasets import ImageSet, Normalizer
from mimmo.evaluation.evaluate import predict_logits
from mimmo.methods.base import mixture_log_probs

TEMPERATURE_BOUNDS = (0.05, 20.0)
GRID_POINTS = 61
GOLDEN_STEPS = 40


def scaled_log_probs(logits: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """The mixture's log probabilities (N, K) with every component's logits (N, D, M, K) divided by T."""
    if not temperature > 0:
        raise ValueError(f"a temperature must be > 0, got {temperature!r}")
    return mixture_log_probs(logits if temperature == 1.0 else logits.float() / temperature, weights)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the validation NLL and accuracy before (T = 1) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    accuracy_before: float
    accuracy_after: float
    num_samples: int


def fit_temperature(logits: Tensor, weights: Tensor, targets: Tensor,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> TemperatureFit:
    """The temperature in ``bounds`` that minimises the mixture's NLL on (``logits`` (N, D, M, K), ``targets``)."""
    if logits.dim() != 4 or weights.shape != logits.shape[1:3] or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, D, M, K), weights (D, M) and targets (N,), got "
                         f"{tuple(logits.shape)}, {tuple(weights.shape)} and {tuple(targets.shape)}")
    if len(targets) == 0:
        raise ValueError("fitting a temperature needs at least one sample, got none")
    low, high = bounds
    if not 0 < low < 1 < high:
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds}")
    logits, weights, targets = logits.float(), weights.float(), targets.long()

    def nll(log_t: float) -> float:
        value = F.nll_loss(scaled_log_probs(logits, weights, math.exp(log_t)), targets).item()
        return value if math.isfinite(value) else math.inf

    grid = torch.linspace(math.log(low), math.log(high), GRID_POINTS).tolist()
    values = [nll(g) for g in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    nll_c, nll_d = nll(c), nll(d)
    for _ in range(GOLDEN_STEPS):
        if nll_c < nll_d:
            b, d, nll_d = d, c, nll_c
            c = b - ratio * (b - a)
            nll_c = nll(c)
        else:
            a, c, nll_c = c, d, nll_d
            d = a + ratio * (b - a)
            nll_d = nll(d)
    candidates = [(nll(0.0), 0.0), (values[best], grid[best]), (nll_c, c), (nll_d, d)]
    nll_after, log_t = min(candidates, key=lambda item: item[0])  # T = 1 first: kept on a tie
    temperature = math.exp(log_t)

    def accuracy(t: float) -> float:
        return (scaled_log_probs(logits, weights, t).argmax(1) == targets).float().mean().item()

    return TemperatureFit(temperature=temperature, nll_before=candidates[0][0], nll_after=nll_after,
                          accuracy_before=accuracy(1.0), accuracy_after=accuracy(temperature),
                          num_samples=len(targets))



def fit_on_set(method: nn.Module, normalizer: Normalizer, data: ImageSet, batch_size: int = 500,
               device: torch.device | str | None = None) -> TemperatureFit:
    """Fit the temperature of ``method`` on a set (the validation split)."""
    logits, weights = predict_logits(method, data.images, normalizer, batch_size, device)
    return fit_temperature(logits, weights, data.labels)


def calibrated_section(fit: TemperatureFit, evaluation: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``calibrated`` section: the temperature, its fit on the validation split, and the
    calibrated test and shifted metrics (``evaluation`` from a :class:`Readout` with that temperature)."""
    return {"temperature": fit.temperature,
            "validation": {key: value for key, value in asdict(fit).items() if key != "temperature"},
            "test": evaluation["test"], "shifted": evaluation["shifted"]}
