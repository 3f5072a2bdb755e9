"""The 25 shifted test sets: 5 shifts x 5 levels, applied to [0, 1] images before normalisation.

Every shift is batched and runs on the images' device. The only randomness, the direction of each
image's translation, is a pure function of (seed, level, image index), so a shifted set is the same for
every seed-equal call and every batch size.

- translate: shift by round(level * size) pixels right, left, down or up (one per image), zero fill: a
  gather of whole pixels (the same pixels as kornia's ``translate`` with nearest sampling, which earlier
  versions used; ``tests/test_shifts.py`` compares the two when kornia is installed);
- rotate: rotate counter-clockwise by exactly ``level`` degrees about the centre, nearest sampling,
  zero fill (0 degrees is the identity). The source pixel of every output pixel is computed once in
  float64 on the CPU and gathered on the device, so the result is the same on every device (kornia's
  float32 nearest sampling picked different pixels on CUDA and CPU for up to 4% of the pixels at 135°);
- brightness: x * level;
- contrast: (x - mean) * level + mean with the image's grey-level mean;
- pixelate: resize to round(level * size) and back, nearest sampling both ways (the paper's "amble",
  unresolved; this implementation takes pixelate).

Results are clamped to [0, 1].
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

SHIFTS: dict[str, tuple[float, ...]] = {
    "translate": (0.1, 0.2, 0.3, 0.4, 0.5),
    "rotate": (0.0, 45.0, 90.0, 135.0, 180.0),
    "brightness": (0.9, 0.7, 0.5, 0.3, 0.1),
    "contrast": (0.9, 0.7, 0.5, 0.3, 0.1),
    "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
}

# Translation directions as (dx, dy) in pixels per unit shift: right, left, down, up.
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
GREY_WEIGHTS = (0.299, 0.587, 0.114)
_MASK32 = 0xFFFFFFFF


def shifted_sets() -> list[tuple[str, float]]:
    """The 25 (shift, level) pairs in the order translate, rotate, brightness, contrast, pixelate."""
    return [(kind, level) for kind, levels in SHIFTS.items() for level in levels]


def set_name(kind: str, level: float) -> str:
    """The name of a shifted set, like ``"rotate/45"`` or ``"translate/0.1"``."""
    return f"{kind}/{check_shift(kind, level):g}"


def parse_set_name(name: str) -> tuple[str, float]:
    """Inverse of :func:`set_name`: ``"rotate/45"`` -> ``("rotate", 45.0)``."""
    kind, sep, level = name.partition("/")
    if not sep:
        raise ValueError(f"a shifted-set name looks like 'rotate/45', got {name!r}")
    try:
        value = float(level)
    except ValueError:
        raise ValueError(f"the level in shifted-set name {name!r} is not a number") from None
    return kind, check_shift(kind, value)


def check_shift(kind: str, level: float) -> float:
    """Validate a (shift, level) pair and return the canonical level from :data:`SHIFTS`."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown shift {kind!r}; choose one of {list(SHIFTS)}")
    for allowed in SHIFTS[kind]:
        if math.isclose(float(level), allowed, rel_tol=1e-9, abs_tol=1e-9):
            return allowed
    raise ValueError(f"level {level!r} is not a level of shift {kind!r}; allowed: {list(SHIFTS[kind])}")


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32); every product stays below 2^59,
    so no int64 overflow on any device."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def translation_directions(indices: Tensor, seed: int, level: float) -> Tensor:
    """Direction index (0 right, 1 left, 2 down, 3 up) of each image, a pure function of
    (seed, level, image index): the same whatever the batching."""
    key = zlib.crc32(f"{int(seed)}/translate/{check_shift('translate', level):g}".encode())
    x = (indices.to(torch.int64) & _MASK32) ^ key
    x = _mix32((_mix32(x) + key) & _MASK32)
    return x % len(DIRECTIONS)


def _pixels(level: float, size: int) -> int:
    """round(level * size) with halves rounded up, at least 1."""
    return max(1, int(math.floor(level * size + 0.5)))


def rotation_source(height: int, width: int, angle: float) -> tuple[Tensor, Tensor]:
    """For a counter-clockwise rotation by ``angle`` degrees about the image centre: the flat index of each
    output pixel's nearest source pixel, (H*W,), and whether that source lies inside the image."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    # (u, v): output offsets with v pointing up; the source is the output rotated back by -angle.
    u, v = cols - centre_col, centre_row - rows
    source_col = torch.floor(centre_col + u * cos + v * sin + 0.5)
    source_row = torch.floor(centre_row + u * sin - v * cos + 0.5)
    inside = (source_col >= 0) & (source_col < width) & (source_row >= 0) & (source_row < height)
    index = (source_row.clamp(0, height - 1) * width + source_col.clamp(0, width - 1)).long()
    return index.flatten(), inside.flatten()


def _translate(images: Tensor, offsets: Tensor) -> Tensor:
    """Move image b by offsets[b] = (dx, dy) whole pixels (right and down positive), zero fill."""
    batch, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :, None] - offsets[:, 1, None, None]  # (B, H, 1)
    cols = torch.arange(width, device=images.device)[None, None, :] - offsets[:, 0, None, None]  # (B, 1, W)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # (B, H, W)
    index = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).reshape(batch, 1, height * width)
    flat = images.reshape(batch, channels, height * width)
    moved = flat.gather(2, index.expand(batch, channels, height * width)).reshape(images.shape)
    return moved * inside[:, None].to(images.dtype)


def _rotate(images: Tensor, angle: float) -> Tensor:
    batch, channels, height, width = images.shape
    index, inside = rotation_source(height, width, angle)
    index, inside = index.to(images.device), inside.to(images.device)
    flat = images.reshape(batch, channels, height * width)
    return (flat[:, :, index] * inside.to(images.dtype)).reshape(batch, channels, height, width)


def apply_shift(images: Tensor, kind: str, level: float, indices: Tensor | None = None,
                seed: int = 0) -> Tensor:
    """Shift a batch of [0, 1] float images (B, C, H, W) on their device.

    ``indices`` (B,) are the images' positions in the whole set; they decide the translation direction
    (default ``arange(B)``: only right when the batch is the whole set). ``seed`` picks the directions.
    """
    level = check_shift(kind, level)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, C, H, W) in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if kind == "translate":
        if indices is None:
            indices = torch.arange(batch)
        indices = torch.as_tensor(indices, device=images.device)
        if indices.shape != (batch,):
            raise ValueError(f"indices must have shape ({batch},), got {tuple(indices.shape)}")
        steps = torch.tensor(DIRECTIONS, dtype=torch.int64, device=images.device)
        steps = steps * torch.tensor([_pixels(level, width), _pixels(level, height)], dtype=torch.int64,
                                     device=images.device)
        out = _translate(images, steps[translation_directions(indices, seed, level)])
    elif kind == "rotate":
        out = _rotate(images, level)
    elif kind == "brightness":
        out = images * level
    elif kind == "contrast":
        if channels == 3:
            weights = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device)
            grey = (images * weights[None, :, None, None]).sum(dim=1)
        else:
            grey = images.mean(dim=1)
        mean = grey.mean(dim=(1, 2))[:, None, None, None]
        out = (images - mean) * level + mean
    else:  # pixelate
        small = (_pixels(level, height), _pixels(level, width))
        out = F.interpolate(images, size=small, mode="nearest-exact")
        out = F.interpolate(out, size=(height, width), mode="nearest-exact")
    return out.clamp_(0.0, 1.0)


def shift_images(images_u8: Tensor, kind: str, level: float, indices: Tensor | None = None,
                 seed: int = 0) -> Tensor:
    """Convenience for uint8 images: to [0, 1] floats, then :func:`apply_shift`."""
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"images_u8 must be uint8, got {images_u8.dtype}")
    return apply_shift(images_u8.float().div_(255.0), kind, level, indices, seed)
