"""Depth Uncertainty Networks (Antorán et al., 2020) as the paper runs them: MIMMO with M = 1 (docs/method.md, "The
baselines' choices").

The same exit adapters after every stage but the last, the shared head, a learned distribution theta
over the D exits with prior gamma, the loss (1/B) sum_b sum_i theta_i NLL(b, i) + (alpha/N) KL(theta||gamma)
and a warm start with theta fixed to gamma. No input tiling and no batch repetition.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mimmo.methods.mimmo import MIMMO
from mimmo.models.backbone import BackboneFactory


class DUN(MIMMO):
    """MIMMO with one member, R = 1 and rho = 0: logits (B, D, 1, K), weights theta (D, 1)."""

    name = "dun"
    display_name, colour, marker = "DUN", "tab:olive", "v"
    tabulated_by_members = False
    learns_exit_weights = True

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int, alpha: float = 1.0,
                 warm_start_epochs: int = 0, prior: Sequence | Tensor | None = None,
                 per_exit_heads: bool = False) -> None:
        super().__init__(backbone, in_channels, num_classes, num_members=1, repetitions=1,
                         input_repetition=0.0, alpha=alpha, warm_start_epochs=warm_start_epochs, prior=prior,
                         optimise_depth=True, per_exit_heads=per_exit_heads)

    def member_input_weights(self) -> None:
        """DUN has a single member: the feature-reuse probe does not apply."""
        return None

    def member_output_weights(self) -> None:
        return None
