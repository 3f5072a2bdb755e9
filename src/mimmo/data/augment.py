"""Training-time augmentation (``train.augment``), on the device, inside the training step.

``crop_flip`` is the standard CIFAR recipe (torchvision's ``RandomCrop(size, padding=4)`` then
``RandomHorizontalFlip()``): every image is zero-padded by 4 pixels on each side, a window of its own size is
cut at a uniformly drawn offset (each of the 9 x 9 positions equally likely), and the window is mirrored left to
right with probability 1/2. It runs on the raw (uint8) images before the normaliser, so the padding is black, as
in torchvision.

Every image of the tensor is augmented independently, whatever the leading dimensions: (B, C, H, W), or
(B, V, C, H, W) where each of the V slots of a sample (an Ensemble member's own data stream, or a multi-input
member's own view: :func:`member_views`) gets its own draw. The draws come from torch's generator on the
images' device (the trainer seeds it per epoch, so a seed gives the same run), and the operations are
fixed-shape tensor operations without a host read or a branch on a drawn value: a training step that augments
can be captured as a CUDA graph (each replay draws afresh) and compiled as one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "crop_flip")
PADDING = 4


def crop_flip(images: Tensor, padding: int = PADDING, generator: torch.Generator | None = None) -> Tensor:
    """Random crop of the zero-padded image (``padding`` pixels each side) back to its size, then a horizontal
    flip with probability 1/2; every image of ``images`` (..., C, H, W) independently. Same shape and dtype."""
    if images.dim() < 3:
        raise ValueError(f"crop_flip takes images (..., C, H, W), got shape {tuple(images.shape)}")
    *leading, channels, height, width = images.shape
    flat = images.reshape(-1, channels, height, width)
    count, device = flat.shape[0], images.device
    padded = F.pad(flat, (padding, padding, padding, padding))
    # Window offsets in the padded image, 0..2*padding (a shift of -padding..padding of the original).
    top = torch.randint(2 * padding + 1, (count, 1), device=device, generator=generator)
    left = torch.randint(2 * padding + 1, (count, 1), device=device, generator=generator)
    flip = torch.randint(2, (count, 1), device=device, generator=generator).bool()
    rows = top + torch.arange(height, device=device)  # (N, H)
    columns = torch.arange(width, device=device).expand(count, width)
    columns = left + torch.where(flip, width - 1 - columns, columns)  # (N, W): the flip mirrors the window
    sample = torch.arange(count, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    out = padded[sample, channel, rows[:, None, :, None], columns[:, None, None, :]]
    return out.reshape(images.shape)


def member_views(images: Tensor, labels: Tensor, views: int) -> tuple[Tensor, Tensor]:
    """A batch (B, C, ...) with labels (B,) as ``views`` slots per sample, (B, V, C, ...) and (B, V): the copies
    that :func:`crop_flip` then augments independently, one per member of a multi-input method."""
    return (images[:, None].expand(-1, views, *images.shape[1:]),
            labels[:, None].expand(-1, views))


def augmentation(name: str):
    """The augmentation ``train.augment`` names (None for ``none``); ValueError for any other name."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"train.augment must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    return crop_flip if name == "crop_flip" else None
