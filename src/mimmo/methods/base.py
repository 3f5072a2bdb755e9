"""What every method is: a network returning logits (B, D, M, K) and a weight table (D, M) (docs/method.md, "One
output shape for every method").

The predictive distribution is the mixture in probability space

    p(y|x) = sum_m (1/M) sum_i w[i, m] softmax(logits[:, i, m])(y).

A method also says how a training batch is formed and what its training loss is. Nothing else: the
optimiser, the schedule and the loop live in :mod:`mimmo.training`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.models.backbone import BackboneFactory, check_backbone


@dataclass(frozen=True)
class Prediction:
    """Logits of every exit and member, and the weight of each exit per member."""

    logits: Tensor  # (B, D, M, K)
    weights: Tensor  # (D, M), columns sum to 1

    def log_probs(self) -> Tensor:
        """Log of the predictive mixture, (B, K), computed stably with logsumexp."""
        return mixture_log_probs(self.logits, self.weights)

    def probs(self) -> Tensor:
        """The predictive mixture, (B, K)."""
        return self.log_probs().exp()


def mixture_log_probs(logits: Tensor, weights: Tensor) -> Tensor:
    """log sum_{i,m} (w[i,m]/M) softmax(logits[:, i, m]) for logits (B, D, M, K) and weights (D, M)."""
    num_members = logits.shape[2]
    log_weights = torch.log(weights.to(torch.float32)) - math.log(num_members)  # (D, M); log 0 = -inf
    component = F.log_softmax(logits.float(), dim=-1) + log_weights[None, :, :, None]
    return torch.logsumexp(component.flatten(1, 2), dim=1)


@dataclass(frozen=True)
class Progress:
    """Where training stands, for methods whose behaviour changes over the run."""

    epoch: int  # 0-based epoch index
    num_epochs: int
    # Progress through the whole run in [0, 1): a float, or a 0-dim tensor in the graphed training step (where it
    # changes between replays of one captured graph, so a method must read it with tensor operations).
    fraction: float | Tensor
    num_train: int  # N, the training-set size (the KL term of an ELBO is divided by it)


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor
    logs: dict[str, Tensor]


def per_sample_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of logits (..., K) against integer targets (...), without reduction."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           reduction="none").view(targets.shape)


def is_integer(value: object) -> bool:
    """An int that is not a bool (YAML's ``true`` is a bool, and Python's bool is an int subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An int or float that is not a bool, NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(condition: bool, message: str) -> None:
    """Raise ValueError with ``message`` unless ``condition`` holds (config validation at the boundary)."""
    if not condition:
        raise ValueError(message)


class Method(nn.Module):
    """Base class of every method.

    Subclasses implement :meth:`forward` (test-time prediction for a batch of single images) and
    :meth:`training_loss`. ``num_members`` (M), ``num_exits`` (D) and ``num_classes`` (K) describe the
    shape of the logits.
    """

    name: str = "method"  # the config's method.name (``method=<name>``)
    # How reports show the method: its name in tables and figures ("" shows ``name``), and the matplotlib colour
    # and marker every figure draws it with.
    display_name: str = ""
    colour: str = "black"
    marker: str = "o"
    # Whether M is an ensemble size, so that the report makes one table per M (False: the method's rows join every
    # table, as M is 1 or counts something else, such as MC Dropout's samples).
    tabulated_by_members: bool = False
    # Whether it has early exits (anytime prediction, exit pruning; set by :class:`~mimmo.methods.exits.StagedExits`)
    # and learns the weights over them (the report shows how they converge).
    has_exits: bool = False
    learns_exit_weights: bool = False
    num_members: int = 1
    num_exits: int = 1
    num_classes: int
    # How many independently shuffled copies of the training set a training batch carries. With S > 1
    # the loader passes x (B, S, C, ...) and y (B, S) to training_loss, stream s being its own shuffle
    # (the Ensemble: one stream per member, each member with its own data order).
    data_streams: int = 1
    # How many views of each training image a batch carries under ``train.augment``: with V > 1 the trainer
    # passes x (B, V, C, ...) and y (B, V), V copies of each sample that it augmented independently, and member
    # m reads view m (the multi-input methods, whose members otherwise read the same image of a sample).
    augment_views: int = 1

    def forward(self, x: Tensor) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def graph_key(self, progress: Progress) -> object:
        """What of ``progress`` (other than ``fraction``) :meth:`training_loss` turns into Python control flow.

        A training step captured as a CUDA graph replays the operations of its capture, so a step is captured
        once per distinct key. The default (None): the loss reads nothing of ``progress`` but tensors."""
        return None

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """The predictive mixture p(y|x), (B, K)."""
        return self(x).probs()

    def predict_anytime(self, x: Tensor, threshold: float) -> object:
        """Anytime prediction (see :mod:`mimmo.methods.exits`): only the exit methods have it."""
        from mimmo.methods.registry import exit_methods

        raise TypeError(f"{self.name} has no early exits to stop at; anytime prediction is for the exit methods "
                        f"({', '.join(exit_methods())})")

    def exit_weights(self) -> Tensor | None:
        """The learned weights over exits (D, M), or None if the method has none to learn."""
        return None

    def parameters_without_weight_decay(self) -> list[nn.Parameter]:
        """Parameters that ``train.weight_decay`` leaves alone (the network's weights all decay)."""
        return []

    def member_input_weights(self) -> list[Tensor] | None:
        """Per member, the weights of the first layer that read that member's input (feature-reuse probe,
        paper B.1): a list of M tensors (C_out, ...). None for methods without member inputs."""
        return None

    def member_output_weights(self) -> list[Tensor] | None:
        """Per member, the rows of the output layer that produce that member's logits: M tensors (K, F)."""
        return None


class Base(Method):
    """A single network trained with cross-entropy: D = M = 1."""

    name = "base"
    display_name, colour, marker = "Base", "tab:gray", "o"

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = check_backbone(backbone(in_channels, num_classes))
        self.register_buffer("unit_weight", torch.ones(1, 1), persistent=False)

    def forward(self, x: Tensor) -> Prediction:
        logits = self.backbone(x)
        return Prediction(logits[:, None, None, :], self.unit_weight)

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        nll = F.cross_entropy(self.backbone(x).float(), y)
        return LossOutput(nll, {"nll": nll.detach()})
