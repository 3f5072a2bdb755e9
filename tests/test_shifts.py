"""The 25 shifted test sets: names, validation, what each shift does, determinism and batch independence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimmo.data import load_embedded
from mimmo.data.shifts import (
    DIRECTIONS,
    SHIFTS,
    apply_shift,
    parse_set_name,
    set_name,
    shift_images,
    shifted_sets,
    translation_directions,
)

SRC = str(Path(__file__).parents[1] / "src")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """40 real embedded test images as [0, 1] floats (1, 28, 28)."""
    return load_embedded(0).test.images[:40].float() / 255.0


def test_shifted_sets_are_the_25_of_spec():
    sets = shifted_sets()
    assert len(sets) == 25
    assert [kind for kind, _ in sets[::5]] == ["translate", "rotate", "brightness", "contrast", "pixelate"]
    assert SHIFTS["rotate"] == (0, 45, 90, 135, 180)
    assert SHIFTS["pixelate"] == (0.9, 0.8, 0.7, 0.6, 0.5)
    names = [set_name(kind, level) for kind, level in sets]
    assert names[:2] == ["translate/0.1", "translate/0.2"]
    assert "rotate/45" in names and "brightness/0.1" in names and "contrast/0.9" in names
    assert len(set(names)) == 25
    assert all(parse_set_name(name) == pair for name, pair in zip(names, sets, strict=True))


@pytest.mark.parametrize("kind, level", [("blur", 0.5), ("rotate", 30), ("brightness", 1.0)])
def test_invalid_shift_is_refused(images, kind, level):
    with pytest.raises(ValueError, match=kind if kind == "blur" else "allowed"):
        apply_shift(images, kind, level)


def test_uint8_input_is_refused(images):
    with pytest.raises(ValueError, match="float"):
        apply_shift((images * 255).to(torch.uint8), "rotate", 45)


@pytest.mark.parametrize("kind", list(SHIFTS))
def test_mildest_level_changes_little_and_strongest_a_lot(images, kind):
    index = torch.arange(len(images))
    change = [(apply_shift(images, kind, level, index) - images).abs().mean().item()
              for level in SHIFTS[kind]]
    assert change[0] < 0.6 * change[-1]
    assert change[-1] > 0.05
    for level in SHIFTS[kind]:
        shifted = apply_shift(images, kind, level, index)
        assert shifted.shape == images.shape and shifted.dtype == images.dtype
        assert shifted.min() >= 0 and shifted.max() <= 1


def test_rotation_by_zero_is_the_identity_and_by_180_a_double_flip(images):
    assert torch.equal(apply_shift(images, "rotate", 0), images)
    assert torch.equal(apply_shift(images, "rotate", 180), images.flip(-1).flip(-2))
    quarter = apply_shift(images, "rotate", 90)
    assert torch.equal(quarter, torch.rot90(images, 1, dims=(-2, -1)))  # counter-clockwise


def test_brightness_and_contrast_are_exact(images):
    assert torch.allclose(apply_shift(images, "brightness", 0.3), images * 0.3)
    shifted = apply_shift(images, "contrast", 0.5)
    mean = images.mean(dim=(1, 2, 3))
    assert torch.allclose(shifted.mean(dim=(1, 2, 3)), mean, atol=1e-5)  # the grey mean is kept
    assert torch.allclose(shifted - mean[:, None, None, None], 0.5 * (images - mean[:, None, None, None]),
                          atol=1e-6)


def test_contrast_uses_the_grey_mean_of_colour_images():
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[:, 0] = 1.0  # pure red: grey level 0.299
    shifted = apply_shift(rgb, "contrast", 0.5)
    assert torch.allclose(shifted[0, 0], torch.full((4, 4), 0.5 + 0.5 * 0.299))
    assert torch.allclose(shifted[0, 1], torch.full((4, 4), 0.5 * 0.299))


def test_translation_moves_each_image_by_round_level_size_with_zero_fill(images):
    index = torch.arange(len(images)) + 1000
    shifted = apply_shift(images, "translate", 0.3, index, seed=3)
    pixels = round(0.3 * 28)  # 8
    directions = translation_directions(index, 3, 0.3)
    assert set(directions.tolist()) == {0, 1, 2, 3}
    for image, out, direction in zip(images, shifted, directions.tolist(), strict=True):
        dx, dy = DIRECTIONS[direction]
        expected = torch.zeros_like(image)
        if dx == 1:
            expected[..., pixels:] = image[..., :-pixels]
        elif dx == -1:
            expected[..., :-pixels] = image[..., pixels:]
        elif dy == 1:
            expected[..., pixels:, :] = image[..., :-pixels, :]
        else:
            expected[..., :-pixels, :] = image[..., pixels:, :]
        assert torch.equal(out, expected)


def test_pixelate_keeps_the_size_and_makes_blocks(images):
    shifted = apply_shift(images, "pixelate", 0.5)  # 28 -> 14 -> 28: 2x2 blocks
    assert shifted.shape == images.shape
    assert torch.equal(shifted[..., ::2, ::2], shifted[..., 1::2, 1::2])


def test_shifted_sets_are_deterministic_and_independent_of_batching(images):
    index = torch.arange(len(images))
    for kind, level in shifted_sets():
        whole = apply_shift(images, kind, level, index, seed=7)
        again = apply_shift(images.clone(), kind, level, index, seed=7)
        batched = torch.cat([apply_shift(images[i:i + 7], kind, level, index[i:i + 7], seed=7)
                             for i in range(0, len(images), 7)])
        assert torch.equal(whole, again)
        assert torch.equal(whole, batched)


def test_translation_directions_depend_on_seed_and_are_balanced():
    index = torch.arange(4000)
    first = translation_directions(index, 0, 0.1)
    assert torch.equal(first, translation_directions(index, 0, 0.1))
    assert not torch.equal(first, translation_directions(index, 1, 0.1))
    assert not torch.equal(first, translation_directions(index, 0, 0.2))
    counts = first.bincount(minlength=4)
    assert counts.min() > 900


def test_shift_images_accepts_uint8():
    data = load_embedded(0).test.images[:4]
    assert torch.equal(shift_images(data, "brightness", 0.5), (data.float() / 255 * 0.5).clamp(0, 1))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 13, 17)])
@pytest.mark.parametrize("level", SHIFTS["translate"])
def test_translation_is_bit_identical_to_kornias(shape, level):
    """The torch translation replaced kornia's ``translate`` (nearest, zero padding, align_corners): every level,
    all four directions, square and non-square random images, equal to the bit. Skipped where kornia is absent."""
    kornia_translate = pytest.importorskip("kornia.geometry.transform").translate
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, *shape, generator=generator)
    indices = torch.arange(64) * 7 + 3  # positions in a larger set
    directions = translation_directions(indices, 5, level)
    assert set(directions.tolist()) == {0, 1, 2, 3}
    pixels = torch.tensor([max(1, int(level * shape[2] + 0.5)), max(1, int(level * shape[1] + 0.5))])
    offsets = (torch.tensor(DIRECTIONS) * pixels)[directions].float()
    expected = kornia_translate(images, offsets, mode="nearest", padding_mode="zeros", align_corners=True)
    assert torch.equal(apply_shift(images, "translate", level, indices, seed=5), expected.clamp(0.0, 1.0))


def test_the_package_runs_without_kornia():
    """kornia is no dependency: with it made unimportable, the CLI and every shift still import and run."""
    code = ("import sys; sys.modules['kornia'] = None\n"
            "import torch, mimmo.cli, mimmo.evaluation.evaluate\n"
            "from mimmo.data.shifts import apply_shift, shifted_sets\n"
            "x = torch.rand(4, 3, 8, 8)\n"
            "assert all(apply_shift(x, k, v).shape == x.shape for k, v in shifted_sets())\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=300)
