"""Anytime inference over a test set: the accuracy-cost curve of an exit method (see mimmo.methods.exits).

For each threshold the test set is predicted with :func:`~mimmo.methods.exits.predict_anytime`: every sample
stops at the first exit where its partial mixture's top probability exceeds the threshold. Its cost is the
cost of a prediction that stops at that exit, in the paper's convention, from the cost counter
(:func:`exit_costs`); the mean over the samples is the mean FLOPs per image. The wall-clock time of the whole
sweep point (the stages, the exits and the early stopping) is measured too. The reference point is the
method's own full prediction (every exit, every sample).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from mimmo.data.datasets import ImageSet, Normalizer
from mimmo.evaluation.cost import count_cost
from mimmo.evaluation.evaluate import method_device
from mimmo.evaluation.metrics import classification_metrics
from mimmo.methods.base import Method, mixture_log_probs
from mimmo.methods.exits import PrunedExits, StagedExits, check_threshold, used_exits
from mimmo.methods.registry import exit_methods

DEFAULT_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
ANYTIME_METRICS = ("accuracy", "nll", "ece")


def is_exit_method(method: Method) -> bool:
    """Whether ``method`` can stop early (MIMMO, MIMMO-γ, DUN, Early Exit) and has more than one exit."""
    return isinstance(method, StagedExits) and method.num_exits > 1


def exit_costs(method: Method, input_shape: tuple[int, ...], weights: Tensor | None = None) -> list[int | None]:
    """Per exit i, the FLOPs of one prediction that stops at exit i (None for an exit no member uses).

    That prediction runs the stem, stages 0..i, the used exits' adapters and heads up to i and their softmaxes:
    it is the cost counter's count of the network truncated after exit i."""
    if not isinstance(method, StagedExits):
        raise TypeError(f"{method.name} has no early exits; exit costs are for {', '.join(exit_methods())}")
    weights = (method.prediction_weights() if weights is None else weights).detach().float().cpu()
    used = used_exits(weights)
    costs: list[int | None] = []
    for index in range(method.num_exits):
        if not used[index]:
            costs.append(None)
            continue
        truncated = weights.clone()
        truncated[index + 1:] = 0.0
        costs.append(count_cost(PrunedExits(method, truncated), input_shape).flops)
    return costs


def _normalised(images_u8: Tensor, normalizer: Normalizer, device: torch.device) -> Tensor:
    normalize = Normalizer(normalizer.mean.flatten(), normalizer.std.flatten(), normalizer.flatten).to(device)
    return normalize(Normalizer.to_unit(images_u8.to(device)))


def _timed(fn, inputs: Tensor, batch_size: int) -> tuple[list, float]:
    """``fn`` on every batch of ``inputs``; the outputs and the wall-clock seconds it took."""
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    start = time.perf_counter()
    outputs = [fn(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    return outputs, time.perf_counter() - start


def _metrics(log_probs: Tensor, targets: Tensor) -> dict[str, float]:
    metrics = classification_metrics(log_probs, targets)
    return {key: metrics[key] for key in ANYTIME_METRICS}


@torch.no_grad()
def anytime_sweep(method: Method, data: ImageSet, normalizer: Normalizer,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS, batch_size: int = 500,
                  device: torch.device | str | None = None) -> dict:
    """The anytime table of ``method`` on ``data``: one row per threshold and the full prediction.

    Returns ``{"thresholds": [{"threshold", "flops", "accuracy", "nll", "ece", "seconds_per_image",
    "exit_fractions"}, ...], "full": {"flops", "accuracy", "nll", "ece", "seconds_per_image"}, "exit_flops": [...],
    "num_images", "batch_size", "device", "threads"}``: ``flops`` is the mean FLOPs per image (paper convention),
    ``exit_fractions`` the fraction of the images that stopped at each exit.
    """
    if not is_exit_method(method):
        raise TypeError(f"{method.name} has no early exits to stop at; anytime inference is for the exit methods "
                        f"({', '.join(exit_methods())})")
    thresholds = [check_threshold(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one anytime threshold")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else method_device(method)
    was_training = method.training
    method.to(device).eval()
    try:
        inputs = _normalised(data.images, normalizer, device)
        targets = data.labels
        costs = exit_costs(method, tuple(inputs.shape[1:]))  # the backbone's input (flat for an MLP)
        per_exit = torch.tensor([float(c) if c is not None else float("nan") for c in costs], dtype=torch.float64)
        with torch.inference_mode():
            # One untimed batch of each path first: the first call pays one-time costs (allocator, thread pool,
            # kernel selection) that made the full mixture's time 10x too high when it was measured first.
            method(inputs[:batch_size])
            method.predict_anytime(inputs[:batch_size], thresholds[0])
            predictions, seconds = _timed(lambda x: method(x), inputs, batch_size)
            full_log_probs = torch.cat([mixture_log_probs(p.logits, p.weights).cpu() for p in predictions])
            full = {"flops": float(count_cost(method, tuple(inputs.shape[1:])).flops),
                    **_metrics(full_log_probs, targets), "seconds_per_image": seconds / len(inputs)}
            rows = []
            for threshold in thresholds:
                outputs, seconds = _timed(lambda x, t=threshold: method.predict_anytime(x, t), inputs, batch_size)
                log_probs = torch.cat([o.log_probs.cpu() for o in outputs])
                exits = torch.cat([o.exits.cpu() for o in outputs])
                counts = torch.bincount(exits, minlength=method.num_exits).double()
                rows.append({"threshold": threshold, "flops": (per_exit[exits].mean()).item(),
                             **_metrics(log_probs, targets), "seconds_per_image": seconds / len(inputs),
                             "exit_fractions": (counts / len(exits)).tolist()})
    finally:
        method.train(was_training)
    return {"thresholds": rows, "full": full, "exit_flops": costs, "num_images": len(inputs),
            "batch_size": batch_size, "device": str(device), "threads": torch.get_num_threads()}


def cheapest_within(rows: Sequence[dict], full_accuracy: float, points: float = 0.5) -> dict | None:
    """The cheapest of an anytime sweep's threshold ``rows`` (lowest mean FLOPs, then the most accurate) whose
    accuracy is within ``points`` percentage points of ``full_accuracy``; None when no row is."""
    within = [row for row in rows if row["accuracy"] >= full_accuracy - points / 100.0 - 1e-12]
    return min(within, key=lambda row: (row["flops"], -row["accuracy"])) if within else None
