"""Held-out classes, the OOD sets (noise, other datasets) and the evaluation's ood/selective/decomposition
sections."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from mimmo.data import ImageSet, Normalizer, Splits, dataset_shape, load_data
from mimmo.data.holdout import check_holdout_classes, hold_out_classes
from mimmo.evaluation.evaluate import evaluate_method
from mimmo.evaluation.ood_sets import check_ood_config, match_images, noise_images, ood_sets
from mimmo.methods import MIMMO
from mimmo.models import ResNetConfig, ResNetFactory


def _splits(num_classes: int = 4, per_class: int = 12, random: bool = False) -> Splits:
    """Every class's images one grey level (10 k), or random images."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = (labels * 10).to(torch.uint8)[:, None, None, None].expand(-1, 1, 8, 8).clone()
    if random:
        images = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageSet(images, labels)
    return Splits("toy", data, data.subset(torch.arange(0, len(labels), 3)), data, num_classes,
                  tuple(f"c{k}" for k in range(num_classes)))


def test_holdout_remaps_labels_and_keeps_the_held_out_test_images():
    splits = hold_out_classes(_splits(), [2, 0])
    assert splits.num_classes == 2 and splits.class_map == (1, 3) and splits.class_names == ("c1", "c3")
    for part in (splits.train, splits.validation, splits.test):
        assert set(part.labels.tolist()) == {0, 1}
        assert torch.equal(part.images[:, 0, 0, 0], torch.tensor([10, 30])[part.labels].to(torch.uint8))
    assert sorted(set(splits.holdout.labels.tolist())) == [0, 2] and len(splits.holdout) == 24
    unchanged = _splits()
    assert hold_out_classes(unchanged, []) is unchanged


@pytest.mark.parametrize("value, message", [
    ([4], r"class labels in \[0, 3\], got 4"), ([-1], "got -1"), ([True], "got True"), ("1", "must be a list"),
    ([1, 1], r"lists \[1\] more than once"), ([0, 1, 2], "leaves 1 of the 4 classes"),
    ([0, 1, 2, 3], "leaves 0 of the 4"),
])
def test_bad_holdout_classes_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        check_holdout_classes(value, 4)


def test_a_near_ood_set_needs_ten_images():
    with pytest.raises(ValueError, match="have 6 test images.*at least 10"):
        hold_out_classes(_splits(per_class=6), [1])


def test_holdout_from_the_data_config():
    data = OmegaConf.create({"name": "embedded", "test_fraction": 0.2, "validation_fraction": 0.1,
                             "train_size": None, "label_noise": 0.0, "holdout_classes": [5, 6, 7, 8, 9]})
    assert dataset_shape(data) == ((1, 28, 28), 5)
    splits = load_data(data, 0)
    assert splits.num_classes == 5 and splits.class_map == (0, 1, 2, 3, 4)
    assert int(splits.train.labels.max()) == 4 and set(splits.holdout.labels.tolist()) == {5, 6, 7, 8, 9}
    full = load_data(OmegaConf.merge(data, {"holdout_classes": None}), 0)
    assert len(splits.test) + len(splits.holdout) == len(full.test)


def test_noise_is_drawn_from_the_seed():
    a, b = noise_images("gaussian", 5, (3, 4, 4), 0), noise_images("gaussian", 5, (3, 4, 4), 0)
    assert a.dtype == torch.uint8 and a.shape == (5, 3, 4, 4) and torch.equal(a, b)
    assert not torch.equal(a, noise_images("gaussian", 5, (3, 4, 4), 1))
    gaussian = noise_images("gaussian", 200, (1, 8, 8), 0).float()
    assert 0.25 < (gaussian == 0).float().mean() < 0.37  # N(0.5, 1) clipped: P(x < 0) = 0.31
    uniform = noise_images("uniform", 200, (1, 8, 8), 0).float()
    assert abs(uniform.mean() - 127.5) < 3


def test_images_are_matched_to_the_data_shape():
    rgb = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 0] = 100  # red only: luma 0.299 * 100
    grey = match_images(rgb, (1, 8, 8))
    assert grey.shape == (2, 1, 8, 8) and int(grey.unique()) == 30
    assert match_images(grey, (3, 2, 2)).shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="2 channels cannot be matched to 3"):
        match_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), (3, 4, 4))


def _cfg(**evaluation) -> OmegaConf:
    return OmegaConf.create({"seed": 3, "data": {"name": "embedded", "root": None},
                             "evaluation": {"ood": True, "ood_sets": [], **evaluation}})


def test_ood_config_is_checked():
    check_ood_config(_cfg())
    check_ood_config(OmegaConf.create({"seed": 0, "data": {"name": "embedded"}, "evaluation": {}}))  # older run
    with pytest.raises(ValueError, match="evaluation.ood must be true or false, got 'yes'"):
        check_ood_config(_cfg(ood="yes"))
    with pytest.raises(ValueError, match="'mnist' is not a dataset"):
        check_ood_config(_cfg(ood_sets=["mnist"]))
    with pytest.raises(ValueError, match="names 'embedded' twice"):
        check_ood_config(_cfg(ood_sets=["embedded", "embedded"]))


def test_ood_sets_of_a_run():
    splits = hold_out_classes(_splits(per_class=12), [3])
    sets = ood_sets(_cfg(), splits)
    assert list(sets) == ["holdout", "gaussian", "uniform"]
    assert len(sets["holdout"]) == 12 and len(sets["gaussian"]) == len(splits.test) == 36
    assert sets["uniform"].images.shape[1:] == (1, 8, 8)
    assert ood_sets(_cfg(ood=False), splits) == {}


def test_evaluation_writes_the_three_sections():
    splits = hold_out_classes(_splits(num_classes=4, per_class=12, random=True), [3])
    torch.manual_seed(0)
    method = MIMMO(ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4))), 1, 3, num_members=2)
    normalizer = Normalizer.fit(splits.train.images)
    sets = ood_sets(_cfg(), splits)
    results = evaluate_method(method, splits.test, normalizer, batch_size=16, ood_sets=sets)
    ood = results["ood"]
    assert ood["in_distribution_size"] == 36 and set(ood["sets"]) == {"holdout", "gaussian", "uniform"}
    assert ood["scores"] == ["msp", "entropy", "energy", "mi_members", "mi_exits", "mi_both"]
    for entry in ood["sets"].values():
        for metrics in entry["metrics"].values():
            assert set(metrics) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
            assert all(0.0 <= value <= 1.0 for value in metrics.values())
        histogram = entry["histograms"]["entropy"]
        assert sum(histogram["in"]) == 36 and sum(histogram["ood"]) == entry["size"]
    decomposition = results["decomposition"]["test"]
    assert decomposition["total"] == pytest.approx(decomposition["expected_members"] + decomposition["mi_members"])
    assert decomposition["total"] == pytest.approx(results["test"]["entropy"], rel=1e-5)
    selective = results["selective"]
    assert 0.0 <= selective["test"]["e_aurc"] <= selective["test"]["aurc"] <= 1.0
    assert set(selective["shifted"]) >= {"aurc", "e_aurc", "risk_at_90"} and "curve" not in selective["shifted"]
    assert results["decomposition"]["shifted"]["mi_both"]["mean"] >= 0
    # The same numbers whatever the batch size.
    again = evaluate_method(method, splits.test, normalizer, batch_size=7, shifted=False, ood_sets=sets)
    for score, metrics in ood["sets"]["holdout"]["metrics"].items():
        assert again["ood"]["sets"]["holdout"]["metrics"][score] == pytest.approx(metrics), score
    assert not math.isnan(again["selective"]["test"]["aurc"])
