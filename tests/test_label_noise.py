"""Symmetric label noise on the training split (data.label_noise): exact fraction, seeded, clean held-out splits."""

from __future__ import annotations

import pytest
import torch

from mimmo.config import compose
from mimmo.data import load_data
from mimmo.data.datasets import ImageSet, Splits, with_label_noise
from mimmo.training import validate_training


def splits(noise: float, seed: int = 0):
    return load_data(compose([f"data.label_noise={noise}", "data.train_size=500"]).data, seed)


def test_exactly_the_fraction_of_training_labels_changes_to_another_class():
    clean, noisy = splits(0.0), splits(0.3)
    assert torch.equal(clean.train.images, noisy.train.images)
    changed = clean.train.labels != noisy.train.labels
    assert int(changed.sum()) == round(0.3 * 500)  # every replaced label is another class
    assert int(noisy.train.labels.min()) >= 0 and int(noisy.train.labels.max()) < noisy.num_classes
    for part in ("validation", "test"):  # held-out splits stay clean
        assert torch.equal(getattr(clean, part).labels, getattr(noisy, part).labels)
        assert torch.equal(getattr(clean, part).images, getattr(noisy, part).images)


def test_the_noise_is_drawn_from_the_seed_only():
    assert torch.equal(splits(0.3, seed=1).train.labels, splits(0.3, seed=1).train.labels)
    a, b = splits(0.3, seed=1), splits(0.3, seed=2)
    clean_a, clean_b = splits(0.0, seed=1), splits(0.0, seed=2)
    assert not torch.equal(a.train.labels != clean_a.train.labels, b.train.labels != clean_b.train.labels)


def test_zero_noise_is_the_clean_data_and_the_new_labels_are_uniform_over_the_other_classes():
    clean = splits(0.0)
    assert with_label_noise(clean, 0.0, 0) is clean
    images = torch.zeros(20_000, *clean.input_shape, dtype=torch.uint8)
    all_zero = Splits(clean.name, ImageSet(images, torch.zeros(20_000, dtype=torch.long)), clean.validation,
                      clean.test, 10)
    noisy = with_label_noise(all_zero, 0.9, 0)
    counts = torch.bincount(noisy.train.labels, minlength=10)
    assert counts[0] == 2_000  # the 10% kept
    assert ((counts[1:].float() - 2_000).abs() < 200).all()  # 18,000 spread evenly over the 9 other classes


@pytest.mark.parametrize("noise", [-0.1, 1.0, 1.5, "a", True])
def test_a_bad_fraction_is_refused_naming_the_value(noise):
    with pytest.raises(ValueError, match=r"data.label_noise must be a number in \[0, 1\)"):
        validate_training(compose([f"data.label_noise={noise}"]))
    if isinstance(noise, float):
        with pytest.raises(ValueError, match=r"data.label_noise must lie in \[0, 1\)"):
            with_label_noise(splits(0.0), noise, 0)
