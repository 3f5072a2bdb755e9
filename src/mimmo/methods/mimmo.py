"""MIMMO (Ferianc & Rodrigues, 2023): MIMO whose members also predict from early exits, weighted by a
learned per-member distribution over depth theta with a prior gamma (docs/method.md, "MIMMO: loss and mixture").

Exit i < D maps stage i's output through an adapter (conv1x1 -> BN -> ReLU -> pool) to the width F of
the final layer and reuses the shared head Linear(F, M*K). The loss is the negative ELBO per data point

    (1/B') sum_b sum_i sum_m theta[i,m] NLL(b,i,m) + (alpha/N) sum_m sum_i theta[i,m] log(theta[i,m]/gamma[i,m]).

This is the paper's objective (1) divided by N, so alpha = 1 is exactly the ELBO (``kl_convention="paper"``, the
default). ``kl_convention="authors"`` computes what the authors' public code computes with its defaults,

    (1/B') * (1/B') sum_b sum_i sum_m theta[i,m] NLL(b,i,m) + alpha sum_m sum_i theta[i,m] log(theta[i,m]/gamma[i,m]),

with B' the repeated batch size: B' times that is the paper convention's loss at alpha * B' * N (docs/method.md,
"Two KL conventions").

During the warm start (and for MIMMO-gamma throughout) theta is fixed to gamma and the KL term is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Prediction, Progress, is_finite_number, is_integer, per_sample_nll, require
from mimmo.methods.exits import StagedExits
from mimmo.methods.mimo import MultiInputMethod
from mimmo.models.backbone import BackboneFactory, check_backbone

KL_CONVENTIONS = ("paper", "authors")


def make_prior(prior: Sequence | Tensor | None, num_exits: int, num_members: int) -> Tensor:
    """The prior gamma as a (D, M) table: uniform 1/D by default; a (D,) vector is shared by all members."""
    if prior is None:
        return torch.full((num_exits, num_members), 1.0 / num_exits)
    allowed = f"null (uniform 1/D), a list of D={num_exits} numbers or D lists of M={num_members} numbers"
    require(not isinstance(prior, (str, bytes, bool, int, float)), f"prior must be {allowed}, got {prior!r}")
    try:
        table = torch.as_tensor(prior, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"prior must be {allowed}, got {prior!r} ({error})") from error
    given_shape = tuple(table.shape)  # report the shape the user gave, not the expanded one
    if table.dim() == 1:
        table = table[:, None].expand(-1, num_members)
    require(table.shape == (num_exits, num_members),
            f"prior must have shape (D,)=({num_exits},) or (D, M)=({num_exits}, {num_members}), "
            f"got {given_shape}")
    require(bool((table > 0).all()), f"every prior entry must be > 0 (KL needs gamma > 0), got {table.tolist()}")
    sums = table.sum(0)
    require(bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-5)),
            f"each member's prior must sum to 1 over the {num_exits} exits, got sums {sums.tolist()}")
    return table.clone()


class ExitNetwork(nn.Module):
    """A backbone with exits after every stage but the last; returns per-exit head outputs (B, D, out)."""

    def __init__(self, backbone: nn.Module, per_exit_heads: bool) -> None:
        super().__init__()
        self.backbone = check_backbone(backbone)
        num_stages = len(self.backbone.stages)
        self.exits = nn.ModuleList(self.backbone.exit_adapter(i) for i in range(num_stages - 1))
        head = self.backbone.head
        self.exit_heads = (nn.ModuleList(nn.Linear(head.in_features, head.out_features)
                                         for _ in range(num_stages - 1)) if per_exit_heads else None)
        self.num_exits = num_stages

    def forward(self, x: Tensor) -> Tensor:
        stage_outputs = self.backbone.features(x)
        features = [adapter(h) for adapter, h in zip(self.exits, stage_outputs[:-1], strict=True)]
        features.append(self.backbone.pool(stage_outputs[-1]))
        if self.exit_heads is None:  # one shared head for every exit: one batched matrix product
            return self.backbone.head(torch.stack(features, dim=1))
        heads = [*self.exit_heads, self.backbone.head]
        return torch.stack([head(f) for head, f in zip(heads, features, strict=True)], dim=1)


class MIMMO(StagedExits, MultiInputMethod):
    """MIMO plus early exits and learned per-member depth weights theta (D, M)."""

    name = "mimmo"
    display_name, colour, marker = "MIMMO", "tab:red", "*"
    tabulated_by_members = True
    learns_exit_weights = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 repetitions: int = 2, input_repetition: float = 0.25, alpha: float = 1.0,
                 warm_start_epochs: int = 0, prior: Sequence | Tensor | None = None,
                 optimise_depth: bool = True, per_exit_heads: bool = False,
                 kl_convention: str = "paper") -> None:
        super().__init__(num_members, repetitions, input_repetition)
        require(kl_convention in KL_CONVENTIONS,
                f"kl_convention must be one of {list(KL_CONVENTIONS)}, got {kl_convention!r}")
        require(is_finite_number(alpha) and alpha >= 0,
                f"alpha (KL weight) must be a finite number >= 0, got {alpha!r}")
        require(is_integer(warm_start_epochs) and warm_start_epochs >= 0,
                f"warm_start_epochs must be an integer >= 0, got {warm_start_epochs!r}")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.kl_convention = kl_convention
        self.warm_start_epochs = warm_start_epochs
        self.optimise_depth = bool(optimise_depth)
        self.network = ExitNetwork(backbone(in_channels * num_members, num_classes * num_members),
                                   per_exit_heads)
        self.num_exits = self.network.num_exits
        prior_table = make_prior(prior, self.num_exits, num_members)
        # theta's logits start at log gamma: theta = gamma at the start, so nothing jumps when the warm start ends
        self.depth_logits = nn.Parameter(torch.log(prior_table))
        self.register_buffer("prior", prior_table)

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def uses_prior(self, progress: Progress | None) -> bool:
        """True while theta is held at gamma: MIMMO-gamma always, MIMMO during the warm start."""
        return not self.optimise_depth or (progress is not None and progress.epoch < self.warm_start_epochs)

    def graph_key(self, progress: Progress) -> bool:
        """The warm start changes the step's computation (theta fixed, no KL): one graph for each phase."""
        return self.uses_prior(progress)

    def depth_weights(self, progress: Progress | None = None) -> Tensor:
        """theta = softmax over exits of the logits, per member; gamma when :meth:`uses_prior`."""
        if self.uses_prior(progress):
            return self.prior
        return F.softmax(self.depth_logits, dim=0)

    def exit_weights(self) -> Tensor:
        return self.depth_weights().detach()

    def parameters_without_weight_decay(self) -> list[nn.Parameter]:
        """theta's logits: their regulariser is the KL to the prior (weight decay would pull theta to uniform)."""
        return [self.depth_logits]

    def kl_divergence(self, weights: Tensor) -> Tensor:
        """KL(theta || gamma) summed over members and exits."""
        return (torch.xlogy(weights, weights) - weights * torch.log(self.prior)).sum()

    def exit_logits(self, inputs: Tensor) -> Tensor:
        return self.split_members(self.network(inputs))  # (B, D, M, K)

    def forward(self, x: Tensor) -> Prediction:
        return Prediction(self.exit_logits(self.tile_members(x)), self.depth_weights())

    def exit_stem(self, x: Tensor) -> Tensor:
        return self.backbone.stem(self.tile_members(x))

    def exit_stage(self, index: int, h: Tensor, compute_exit: bool) -> tuple[Tensor, Tensor | None]:
        h = self.backbone.stages[index](h)
        if not compute_exit:
            return h, None
        network = self.network
        if index == self.num_exits - 1:
            feature, head = self.backbone.pool(h), self.backbone.head
        else:
            feature = network.exits[index](h)
            head = self.backbone.head if network.exit_heads is None else network.exit_heads[index]
        return h, self.split_members(head(feature))

    def prediction_weights(self) -> Tensor:
        return self.depth_weights()

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        inputs, targets = self.training_batch(x, y)
        logits = self.exit_logits(inputs)
        weights = self.depth_weights(progress)
        nll = per_sample_nll(logits, targets[:, None, :].expand(-1, self.num_exits, -1))  # (B', D, M)
        data_term = (nll * weights).sum(dim=(1, 2)).mean()
        if self.uses_prior(progress):
            kl = torch.zeros((), device=x.device)
        else:
            kl = self.kl_divergence(weights)
        if self.kl_convention == "paper":  # objective (1) per data point: alpha = 1 is the ELBO
            loss = data_term + self.alpha / progress.num_train * kl
        else:  # the authors' code: the data term divided by B' once more, the KL not divided by N
            loss = data_term / inputs.shape[0] + self.alpha * kl
        return LossOutput(loss, {"nll": data_term.detach(), "kl": kl.detach()})


class MIMMOGamma(MIMMO):
    """MIMMO-gamma: theta is the prior for the whole run (the exit weights are never learned)."""

    name = "mimmo_gamma"
    display_name, colour, marker = "MIMMO-γ", "tab:orange", "<"
    learns_exit_weights = False

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 repetitions: int = 2, input_repetition: float = 0.25,
                 prior: Sequence | Tensor | None = None, per_exit_heads: bool = False) -> None:
        super().__init__(backbone, in_channels, num_classes, num_members, repetitions, input_repetition,
                         prior=prior, optimise_depth=False, per_exit_heads=per_exit_heads)
