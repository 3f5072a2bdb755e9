"""MixMo (Ramé et al., 2021): M separate input encoders, their features mixed, MIMO's shared rest (docs/method.md,
"The baselines' choices").

Member m's input passes its own copy of the stem's first layer (conv3x3 C->16 for the ResNet, member 0
uses the backbone's own); the M feature maps are mixed, then the rest of the stem, the stages and the
shared head Linear(F, M*K) follow. Mixing the first layer's outputs keeps FLOPs and parameters equal to
MIMO's, as in the authors' code and the paper's cost table (Tables 1-3).

Training (batch repetition R, no input repetition): per sample kappa ~ Dirichlet(alpha*1_M). Per batch,
with probability p (p0, decaying linearly to 0 over the last ``decay_fraction`` of training) CutMix
mixing: a member k per sample fills a box of area ~kappa_k (a binary mask shared by all channels), the
other members fill the rest weighted by kappa_m / sum_{m'!=k} kappa_m'; for M = 2 the mask and kappa are
flipped with probability 0.5 (the MixMo paper). Otherwise linear mixing h = M * sum_m kappa_m f_m. The
loss is sum_m mean_b w_bm NLL_bm with w_bm = M kappa_bm^(1/r) / sum_m' kappa_bm'^(1/r).
Test: every member sees the same image and h = sum_m f_m. The mixing is functional and costs 0 FLOPs.

Every draw stays on the device and the per-batch choice is a tensor (both mixings are formed and one is
selected): no host synchronisation and no Python branch on a random value, so a training step can be
captured as a CUDA graph and replayed with fresh draws of the same law.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimmo.methods.base import LossOutput, Prediction, Progress, is_finite_number, per_sample_nll, require
from mimmo.methods.mimo import MultiInputMethod
from mimmo.models.backbone import BackboneFactory, check_backbone


@dataclass(frozen=True)
class MixingDraw:
    """The random choices of one training batch's mixing."""

    kappa: Tensor  # (B, M) mixing proportions (after a CutMix flip, the flipped ones)
    member: Tensor | None = None  # (B,) member k filling the mask; None: linear mixing
    mask: Tensor | None = None  # binary, (B, 1, H, W) for maps, (B, F) for flat features; None: linear
    # 0-dim bool: whether this batch mixes by CutMix (member and mask) or linearly. None: CutMix exactly when a
    # mask is given.
    cutmix: Tensor | None = None


def loss_weights(kappa: Tensor, r: float) -> Tensor:
    """w_m = M kappa_m^(1/r) / sum_m' kappa_m'^(1/r), per sample: (B, M), each row sums to M."""
    powered = kappa.clamp_min(0).pow(1.0 / r)
    return kappa.shape[-1] * powered / powered.sum(dim=-1, keepdim=True)


def box_mask(area: Tensor, feature_shape: tuple[int, ...]) -> Tensor:
    """A binary CutMix mask per sample covering about ``area`` (B,) of the map.

    For maps (C, H, W): a box of sides floor(H sqrt(a)) x floor(W sqrt(a)) centred uniformly, half-sides
    floored and clamped to the map, shape (B, 1, H, W) (shared across channels). For flat features (F,):
    an interval of length floor(F a), shape (B, F).
    """
    batch, device = area.shape[0], area.device
    if len(feature_shape) == 1:
        sides, ratios = feature_shape, area[:, None]
    elif len(feature_shape) == 3:
        sides, ratios = feature_shape[1:], area.clamp_min(0).sqrt()[:, None].expand(-1, 2)
    else:
        raise ValueError(f"CutMix needs features (C, H, W) or (F,) per sample, got {feature_shape}")
    inside = torch.ones(batch, *sides, dtype=torch.bool, device=device)
    for axis, side in enumerate(sides):
        cut = torch.floor(side * ratios[:, axis]).long()
        centre = torch.randint(side, (batch,), device=device)
        low = (centre - cut // 2).clamp(0, side)
        high = (centre + cut // 2).clamp(0, side)
        position = torch.arange(side, device=device)
        within = (position[None] >= low[:, None]) & (position[None] < high[:, None])  # (B, side)
        view = [batch] + [1] * len(sides)
        view[1 + axis] = side
        inside = inside & within.view(view)
    mask = inside.float()
    return mask[:, None] if len(feature_shape) == 3 else mask


def mix_features(features: Tensor, draw: MixingDraw) -> Tensor:
    """Mix member features (B, M, ...) into (B, ...) as ``draw`` says (scaled by M)."""
    batch, num_members = features.shape[:2]
    expand = (batch, num_members) + (1,) * (features.dim() - 2)
    linear = num_members * (draw.kappa.to(features.dtype).view(expand) * features).sum(dim=1)
    if draw.mask is None:
        return linear
    rows = torch.arange(batch, device=features.device)
    chosen = features[rows, draw.member]
    others = draw.kappa.to(features.dtype).clone()
    others[rows, draw.member] = 0.0
    others = others / others.sum(dim=1, keepdim=True).clamp_min(torch.finfo(others.dtype).tiny)
    rest = (others.view(expand) * features).sum(dim=1)
    mask = draw.mask.to(features.dtype)
    cut = num_members * (mask * chosen + (1.0 - mask) * rest)
    return cut if draw.cutmix is None else torch.where(draw.cutmix, cut, linear)


class MixMo(MultiInputMethod):
    """M encoders, mixed features, MIMO's shared network and head; logits (B, 1, M, K)."""

    name = "mixmo"
    display_name, colour, marker = "MixMo", "tab:green", "h"
    tabulated_by_members = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, num_members: int = 2,
                 repetitions: int = 2, dirichlet_alpha: float = 2.0, cutmix_probability: float = 0.5,
                 decay_fraction: float = 1.0 / 12.0, r: float = 3.0) -> None:
        super().__init__(num_members, repetitions, input_repetition=0.0)
        require(is_finite_number(r) and r > 0, f"r (loss-weight temperature) must be a finite number > 0, got {r!r}")
        require(is_finite_number(dirichlet_alpha) and dirichlet_alpha > 0,
                f"dirichlet_alpha must be a finite number > 0, got {dirichlet_alpha!r}")
        require(is_finite_number(cutmix_probability) and 0.0 <= cutmix_probability <= 1.0,
                f"cutmix_probability must lie in [0, 1], got {cutmix_probability!r}")
        require(is_finite_number(decay_fraction) and 0.0 <= decay_fraction <= 1.0,
                f"decay_fraction must lie in [0, 1], got {decay_fraction!r}")
        self.num_classes = num_classes
        self.r = float(r)
        self.dirichlet_alpha = float(dirichlet_alpha)
        self.cutmix_probability = float(cutmix_probability)
        self.decay_fraction = float(decay_fraction)
        self.backbone = check_backbone(backbone(in_channels, num_classes * num_members))
        first = self._first_layer(self.backbone)
        self.extra_encoders = nn.ModuleList(
            self._first_layer(check_backbone(backbone(in_channels, num_classes * num_members)))
            for _ in range(num_members - 1))
        if not all(type(encoder) is type(first) for encoder in self.extra_encoders):
            raise TypeError("the backbone factory built stems of different types; MixMo needs identical "
                            "encoders")
        self.register_buffer("uniform_weights", torch.ones(1, num_members), persistent=False)

    @staticmethod
    def _first_layer(backbone: nn.Module) -> nn.Module:
        stem = backbone.stem
        if (not isinstance(stem, nn.Sequential) or len(stem) < 1
                or not isinstance(stem[0], nn.Conv2d | nn.Linear)):
            raise TypeError(f"MixMo needs a stem that is an nn.Sequential starting with a Conv2d or Linear "
                            f"(the per-member encoder); {type(backbone).__name__}.stem is "
                            f"{type(stem).__name__}")
        return stem[0]

    def encoders(self) -> list[nn.Module]:
        """The M member encoders (member 0's is the backbone's own stem layer)."""
        return [self.backbone.stem[0], *self.extra_encoders]

    def encode(self, member_inputs: Tensor) -> Tensor:
        """(B, M, C, ...) -> member features (B, M, C', ...)."""
        return torch.stack([encoder(member_inputs[:, m]) for m, encoder in enumerate(self.encoders())], dim=1)

    def decode(self, mixed: Tensor) -> Tensor:
        """Mixed first-layer features (B, C', ...) -> member logits (B, M, K)."""
        h = mixed
        for layer in list(self.backbone.stem)[1:]:
            h = layer(h)
        outputs = self.backbone.head(self.backbone.pool(self.backbone.stage_outputs(h)[-1]))
        return self.split_members(outputs)

    def forward(self, x: Tensor) -> Prediction:
        features = torch.stack([encoder(x) for encoder in self.encoders()], dim=1)
        return Prediction(self.decode(features.sum(dim=1))[:, None], self.uniform_weights)

    def cutmix_probability_at(self, progress: Progress) -> Tensor:
        """p0 until the last ``decay_fraction`` of training, then linearly down to 0 at the end (a 0-dim
        tensor; ``progress.fraction`` may be a float or a 0-dim tensor)."""
        remaining = 1.0 - torch.as_tensor(progress.fraction, dtype=torch.float32)
        if self.decay_fraction == 0.0:
            return torch.full_like(remaining, self.cutmix_probability)
        decayed = self.cutmix_probability * (remaining / self.decay_fraction).clamp(0.0, 1.0)
        return torch.where(remaining >= self.decay_fraction, torch.full_like(remaining, self.cutmix_probability),
                           decayed)

    def draw_mixing(self, features: Tensor, progress: Progress) -> MixingDraw:
        """Draw kappa per sample and, per batch, CutMix (a member and a box per sample) or linear mixing.

        All draws are made every batch and the choice is a tensor (see the module's docstring); the law is
        the same as drawing the CutMix parts only when the batch's coin says so."""
        batch, device = features.shape[0], features.device
        concentration = torch.full((self.num_members,), self.dirichlet_alpha, device=device)
        # validate_args=False: the argument check would read a device value on the host
        kappa = torch.distributions.Dirichlet(concentration, validate_args=False).sample((batch,))
        # (a 0-dim CPU probability enters a device comparison as a scalar: no copy, no sync)
        cutmix = torch.rand((), device=device) < self.cutmix_probability_at(progress)
        member = torch.randint(self.num_members, (batch,), device=device)
        mask = box_mask(kappa[torch.arange(batch, device=device), member], tuple(features.shape[2:]))
        if self.num_members == 2:  # flip the mask and kappa with probability 0.5 (CutMix batches only)
            flip = cutmix & (torch.rand((), device=device) < 0.5)
            mask = torch.where(flip, 1.0 - mask, mask)
            kappa = torch.where(flip, 1.0 - kappa, kappa)
        return MixingDraw(kappa, member, mask, cutmix)

    def mixed_loss(self, features: Tensor, targets: Tensor, draw: MixingDraw) -> Tensor:
        """Loss of member features (B, M, ...) with targets (B, M) under a given mixing draw."""
        logits = self.decode(mix_features(features, draw))
        weights = loss_weights(draw.kappa, self.r).to(logits.dtype)
        return (weights * per_sample_nll(logits, targets)).mean(0).sum()

    def training_loss(self, x: Tensor, y: Tensor, progress: Progress) -> LossOutput:
        inputs, targets = self.training_batch(x, y)
        features = self.encode(inputs.unflatten(1, (self.num_members, -1)))
        draw = self.draw_mixing(features, progress)
        loss = self.mixed_loss(features, targets, draw)
        return LossOutput(loss, {"nll": loss.detach(), "cutmix": draw.cutmix.float()})

    def member_input_weights(self) -> list[Tensor]:
        return [encoder.weight.detach() for encoder in self.encoders()]

