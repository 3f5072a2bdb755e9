"""Exits one stage at a time: anytime prediction, and exits pruned by their weight.

The exit methods (MIMMO, MIMMO-γ, DUN, Early Exit) compute D exits after the D stages of one backbone. A
:class:`StagedExits` method can run that computation stage by stage, which gives two test-time uses the paper
does not have:

* **Anytime prediction** (:func:`predict_anytime`), in the spirit of MSDNet's budgeted classification (Huang et
  al., ICLR 2018): after each exit the sample's *partial mixture* is formed (the method's own weights over the
  exits computed so far, renormalised per member); the samples whose top probability exceeds a threshold stop
  there and only the others go on to the next stage, so the work done is the work counted.
* **Exits pruned by their weight** (:func:`prune_weights`, :class:`PrunedExits`): exit i is dropped for member
  m when its weight w[i, m] is below EPS, and each member's remaining weights are renormalised. An exit's
  adapter (and its head) runs only if some member keeps the exit, and the stages after the deepest kept exit
  do not run at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mimmo.methods.base import LossOutput, Method, Prediction, Progress, require


@dataclass(frozen=True)
class AnytimePrediction:
    """What :func:`predict_anytime` returns for a batch."""

    log_probs: Tensor  # (B, K): log of the partial mixture each sample stopped with
    exits: Tensor  # (B,) int64: the exit (0-based, of the D exits) each sample stopped at

    def probs(self) -> Tensor:
        return self.log_probs.exp()


class StagedExits:
    """Mixin for methods whose D exits follow the D stages of one backbone and can be computed stage by stage.

    A subclass implements :meth:`exit_stem`, :meth:`exit_stage` and :meth:`prediction_weights`; running the stem
    and then every stage with ``compute_exit=True`` must give the logits of :meth:`forward`, exit by exit.
    """

    has_exits = True
    num_exits: int
    num_members: int

    def exit_stem(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The input of stage 0 for test inputs ``x`` (B, C, ...) (the stem's output)."""
        raise NotImplementedError

    def exit_stage(self, index: int, h: Tensor, compute_exit: bool) -> tuple[Tensor, Tensor | None]:
        """Stage ``index`` on ``h``: its output and, when ``compute_exit``, exit ``index``'s logits (B, M, K)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prediction_weights(self) -> Tensor:  # pragma: no cover - abstract
        """The weights (D, M) that :meth:`forward` mixes the exits with."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_anytime(self, x: Tensor, threshold: float, weights: Tensor | None = None) -> AnytimePrediction:
        """Anytime prediction of a batch; see :func:`predict_anytime`."""
        return predict_anytime(self, x, threshold, weights)  # type: ignore[arg-type]


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"an anytime threshold is a probability in [0, 1], got {threshold!r}")
    return float(threshold)


def used_exits(weights: Tensor) -> list[bool]:
    """Per exit, whether some member gives it a positive weight (only those exits are computed)."""
    return [bool(row.gt(0).any()) for row in weights]


@torch.no_grad()
def predict_anytime(method: StagedExits, x: Tensor, threshold: float,
                    weights: Tensor | None = None) -> AnytimePrediction:
    """Run the stages in order and stop each sample at the first exit where its partial mixture is confident.

    After exit i the partial mixture is ``(1/M') sum_m sum_{j<=i} w[j,m] softmax(logits_j,m) / sum_{j<=i} w[j,m]``
    over the M' members with some weight so far (each member's weights renormalised over the exits computed so
    far). A sample stops when the partial mixture's top probability *exceeds* ``threshold`` (strictly: with 0
    every sample stops at the first exit, with 1 none stops early and the result is the full mixture); at the
    deepest exit every remaining sample stops. Only the samples still running enter the next stage. Exits
    whose weight is 0 for every member (see :func:`prune_weights`) are not computed, and no stage after the
    deepest used exit runs. ``weights`` (D, M) replaces the method's own (pruned weights, for instance).
    """
    threshold = check_threshold(threshold)
    weights = method.prediction_weights() if weights is None else weights
    weights = weights.detach().to(device=x.device, dtype=torch.float32)
    require(weights.shape == (method.num_exits, method.num_members),
            f"weights must have shape (D, M) = ({method.num_exits}, {method.num_members}), "
            f"got {tuple(weights.shape)}")
    used = used_exits(weights)
    require(any(used), "every exit weight is 0: there is nothing to predict with")
    last = max(i for i, u in enumerate(used) if u)
    batch = x.shape[0]
    active = torch.arange(batch, device=x.device)
    exits = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    log_probs: Tensor | None = None
    accumulated: Tensor | None = None  # (n, M, K): log sum_{j<=i} w[j,m] softmax(logits_j,m)
    weight_so_far = torch.zeros(method.num_members, device=x.device)
    h = method.exit_stem(x)
    for index in range(last + 1):
        h, logits = method.exit_stage(index, h, compute_exit=used[index])
        if logits is None:
            continue
        component = F.log_softmax(logits.float(), dim=-1) + torch.log(weights[index])[None, :, None]
        accumulated = component if accumulated is None else torch.logaddexp(accumulated, component)
        weight_so_far = weight_so_far + weights[index]
        present = weight_so_far > 0
        members = (accumulated - torch.log(weight_so_far)[None, :, None])[:, present]
        mixture = torch.logsumexp(members, dim=1) - math.log(int(present.sum()))
        if log_probs is None:
            log_probs = mixture.new_empty(batch, mixture.shape[-1])
        stop = (mixture.max(dim=1).values.exp() > threshold) if index < last else \
            torch.ones(len(active), dtype=torch.bool, device=x.device)
        log_probs[active[stop]] = mixture[stop]
        exits[active[stop]] = index
        if bool(stop.all()):
            break
        going = ~stop
        active, h, accumulated = active[going], h[going], accumulated[going]
    assert log_probs is not None
    return AnytimePrediction(log_probs, exits)


def prune_weights(weights: Tensor, eps: float) -> Tensor:
    """Drop the exits whose weight is below ``eps`` member by member and renormalise each member's weights.

    ``weights`` is (D, M). Entry (i, m) becomes 0 where w[i, m] < eps; a member that lost an exit has its
    remaining weights divided by their sum, a member that lost none keeps its weights exactly (so eps = 0
    changes nothing). ValueError when eps would drop every exit of a member.
    """
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"prune_exits (EPS) must be a number >= 0, got {eps!r}")
    weights = weights.detach().float()
    dropped = weights < eps
    kept = weights.masked_fill(dropped, 0.0)
    sums = kept.sum(dim=0)
    for member in range(weights.shape[1]):
        if not bool(sums[member] > 0):
            raise ValueError(f"prune_exits={eps:g} drops every exit of member {member}: its largest weight is "
                             f"{weights[:, member].max().item():.4g} (choose EPS <= that)")
    changed = dropped.any(dim=0)
    return torch.where(changed[None, :], kept / sums[None, :], weights)


class PrunedExits(Method):
    """An exit method with exits pruned: only the used exits' adapters run, and no stage after the deepest one.

    Its prediction is the method's mixture with the given ``weights`` (D, M) (from :func:`prune_weights`), over
    the exits some member uses: logits (B, D', M, K) and weights (D', M) for those D' exits. Test time only.
    """

    def __init__(self, method: Method, weights: Tensor) -> None:
        super().__init__()
        if not isinstance(method, StagedExits):
            raise TypeError(f"{type(method).__name__} has no exits to prune; the exit methods are MIMMO, "
                            "MIMMO-γ, DUN and Early Exit")
        require(tuple(weights.shape) == (method.num_exits, method.num_members),
                f"weights must have shape (D, M) = ({method.num_exits}, {method.num_members}), "
                f"got {tuple(weights.shape)}")
        self.method = method
        self.name = f"{method.name} (pruned)"
        self.num_classes = method.num_classes
        self.num_members = method.num_members
        self.used = used_exits(weights)
        require(any(self.used), "every exit weight is 0: there is nothing to predict with")
        self.num_exits = sum(self.used)
        self.register_buffer("full_weights", weights.detach().float().clone(), persistent=False)
        self.train(method.training)  # a new module is in training mode: keep the method's mode instead

    @property
    def deepest(self) -> int:
        return max(i for i, u in enumerate(self.used) if u)

    def forward(self, x: Tensor) -> Prediction:
        staged: StagedExits = self.method  # type: ignore[assignment]
        h = staged.exit_stem(x)
        logits = []
        for index in range(self.deepest + 1):
            h, exit_logits = staged.exit_stage(index, h, compute_exit=self.used[index])
            if exit_logits is not None:
                logits.append(exit_logits)
        used = torch.tensor(self.used, device=self.full_weights.device)
        return Prediction(torch.stack(logits, dim=1), self.full_weights[used])

    def exit_weights(self) -> Tensor:
        return self.full_weights

    @torch.no_grad()
    def predict_anytime(self, x: Tensor, threshold: float) -> AnytimePrediction:
        return predict_anytime(self.method, x, threshold, self.full_weights)  # type: ignore[arg-type]

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        raise RuntimeError("a pruned network is for test time only; train the method itself")

