"""Forming a multi-input training batch: batch repetition R and input repetition rho (docs/method.md, "Multi-input
training")."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def member_indices(batch_size: int, num_members: int, repetitions: int, input_repetition: float,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Indices (R*B, M) into a batch of B samples: column m says which sample member m receives.

    The batch indices are tiled R times and shuffled once (``main``). With n = floor(R*B*(1-rho)), every
    member re-shuffles the first n entries of ``main`` independently; the remaining entries are the
    same for every member (those rows show all members one image). Each column holds every index
    exactly R times.
    """
    total = batch_size * repetitions
    main = torch.arange(batch_size, device=device).repeat(repetitions)
    main = main[torch.randperm(total, generator=generator, device=device)]
    # + 1e-9: 1 - rho rounds down in floating point (10 * (1 - 0.8) = 1.9999999999999996, not 2).
    num_shuffled = math.floor(total * (1.0 - input_repetition) + 1e-9)
    columns = []
    for _ in range(num_members):
        head = main[:num_shuffled][torch.randperm(num_shuffled, generator=generator, device=device)]
        columns.append(torch.cat([head, main[num_shuffled:]]))
    return torch.stack(columns, dim=1)
