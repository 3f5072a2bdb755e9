"""Metrics on hand-computed cases and against torchmetrics; the feature-reuse probe; evaluate_method."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassCalibrationError

from mimmo.data import Normalizer, load_embedded
from mimmo.evaluation.evaluate import evaluate_method, predict
from mimmo.evaluation.metrics import (
    binary_auroc,
    classification_metrics,
    exit_log_probs,
    exit_metrics,
    expected_calibration_error,
    member_log_probs,
    member_metrics,
    misclassification_auroc,
    reliability_bins,
)
from mimmo.evaluation.probes import (
    feature_overlap,
    feature_profiles,
    feature_reuse,
    feature_reuse_from_weights,
)
from mimmo.methods import MIMMO, MIMO, Base, mixture_log_probs
from mimmo.models import ResNetConfig, ResNetFactory

# Five samples, three classes; confidences 0.7, 0.55, 0.45, 0.5, 0.72 sit away from the bin edges.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.15, 0.55, 0.3], [0.3, 0.25, 0.45], [0.25, 0.5, 0.25],
                      [0.72, 0.18, 0.1]])
TARGETS = torch.tensor([0, 2, 2, 1, 1])  # correct, wrong, correct, correct, wrong


def test_classification_metrics_by_hand():
    metrics = classification_metrics(PROBS.log(), TARGETS)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.45) + math.log(0.5)
                                             + math.log(0.18)) / 5, rel=1e-6)
    onehot = torch.nn.functional.one_hot(TARGETS, 3).float()
    assert metrics["brier"] == pytest.approx(((PROBS - onehot) ** 2).sum().item() / 15, rel=1e-6)
    entropy = -(PROBS * PROBS.log()).sum(1).mean().item()
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-6)
    # bins: {0.7, 0.72} together (acc 0.5, conf 0.71), 0.55 wrong, 0.45 and 0.5 correct, each alone
    assert metrics["ece"] == pytest.approx((2 * 0.21 + 0.55 + 0.55 + 0.5) / 5, rel=1e-5)
    confidence = (0.7 + 0.55 + 0.45 + 0.5 + 0.72) / 5
    assert metrics["confidence"] == pytest.approx(confidence, rel=1e-6)
    assert metrics["accuracy_minus_confidence"] == pytest.approx(3 / 5 - confidence, abs=1e-6)


def test_accuracy_minus_confidence_is_the_signed_ece_with_one_bin():
    torch.manual_seed(0)
    log_probs = torch.randn(200, 5).mul(2).log_softmax(1)
    targets = torch.randint(0, 5, (200,))
    metrics = classification_metrics(log_probs, targets)
    assert abs(metrics["accuracy_minus_confidence"]) == pytest.approx(
        expected_calibration_error(log_probs, targets, num_bins=1), rel=1e-6)
    assert metrics["accuracy_minus_confidence"] < 0  # random labels: over-confident


def test_reliability_bins_by_hand_and_consistent_with_ece():
    bins = reliability_bins(PROBS.log(), TARGETS)
    assert len(bins["edges"]) == 16 and len(bins["count"]) == 15
    assert sum(bins["count"]) == 5
    assert bins["count"][10] == 2  # (10/15, 11/15] holds 0.7 and 0.72
    assert bins["confidence"][10] == pytest.approx(0.71, rel=1e-6)
    assert bins["accuracy"][10] == pytest.approx(0.5)
    assert bins["count"][0] == 0 and bins["confidence"][0] == 0.0
    ece = sum(c / 5 * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"],
                                                      strict=True))
    assert ece == pytest.approx(expected_calibration_error(PROBS.log(), TARGETS), rel=1e-9)


def test_auroc_by_hand():
    assert binary_auroc(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.75)
    # a tie counts one half
    assert binary_auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    assert math.isnan(binary_auroc(torch.tensor([0.5, 0.6]), torch.tensor([1, 1])))
    # correct: 0.7, 0.45, 0.5; wrong: 0.55, 0.72; only 0.7 > 0.55 ranks a correct one above a wrong one
    assert misclassification_auroc(PROBS.log(), TARGETS) == pytest.approx(1 / 6)


def test_member_metrics_by_hand():
    targets = torch.tensor([0, 1, 2, 2])
    predicted = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 1, 2], [0, 1, 1]])  # (N, M) top classes
    member_lp = torch.nn.functional.one_hot(predicted, 3).float().mul(5).log_softmax(-1)
    metrics = member_metrics(member_lp, targets)
    assert metrics["member_accuracy"] == pytest.approx([0.75, 0.5, 0.75])
    # pairs (0,1): differ at samples 2, 3; (0,2): at 3; (1,2): at 2 -> (0.5 + 0.25 + 0.25) / 3
    assert metrics["disagreement"] == pytest.approx(1 / 3)
    assert len(metrics["member_nll"]) == 3
    top = member_lp.exp().max(dim=2).values.mean(dim=0)  # every member's top probability is e^5/(e^5+2)
    assert metrics["member_confidence"] == pytest.approx(top.tolist(), rel=1e-6)
    assert metrics["member_accuracy_minus_confidence"] == pytest.approx(
        [a - c for a, c in zip([0.75, 0.5, 0.75], top.tolist(), strict=True)], rel=1e-6)
    assert member_metrics(member_lp[:, :1], targets)["disagreement"] == 0.0


def test_exit_metrics_by_hand():
    # two samples, D = 2 exits, M = 2 members, K = 2 classes
    probs = torch.tensor([[[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.4, 0.6]]],
                          [[[0.3, 0.7], [0.1, 0.9]], [[0.6, 0.4], [0.8, 0.2]]]])  # (B, D, M, K)
    exits = exit_log_probs(probs.log())
    assert exits.exp() == pytest.approx(probs.mean(dim=2))  # each exit: the equal-weight members' average
    targets = torch.tensor([0, 1])
    metrics = exit_metrics(exits, targets)
    # exit 1: (0.7, 0.3) correct, (0.2, 0.8) correct; exit 2: (0.3, 0.7) wrong, (0.7, 0.3) wrong
    assert metrics["exit_accuracy"] == pytest.approx([1.0, 0.0])
    assert metrics["exit_confidence"] == pytest.approx([0.75, 0.7])
    assert metrics["exit_accuracy_minus_confidence"] == pytest.approx([0.25, -0.7])
    assert metrics["exit_nll"] == pytest.approx([-(math.log(0.7) + math.log(0.8)) / 2,
                                                 -(math.log(0.3) + math.log(0.3)) / 2])
    with pytest.raises(ValueError, match="exit_log_probs must be"):
        exit_metrics(exits[0], targets)


def test_member_mixtures_average_to_the_predictive_mixture():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, 2, 4)  # (B, D, M, K)
    weights = torch.softmax(torch.randn(3, 2), dim=0)
    members = member_log_probs(logits, weights)
    manual = (weights[None, :, :, None] * logits.softmax(-1)).sum(1)
    assert torch.allclose(members.exp(), manual, atol=1e-6)
    assert torch.allclose(members.exp().mean(1), mixture_log_probs(logits, weights).exp(), atol=1e-6)


def test_metrics_agree_with_torchmetrics():
    torch.manual_seed(1)
    logits = torch.randn(3000, 10) * 2.0
    targets = torch.where(torch.rand(3000) < 0.6, logits.argmax(1), torch.randint(0, 10, (3000,)))
    log_probs = logits.log_softmax(1)
    metrics = classification_metrics(log_probs, targets)
    probs = log_probs.exp()
    assert metrics["accuracy"] == pytest.approx(
        MulticlassAccuracy(num_classes=10, average="micro")(probs, targets).item(), abs=1e-6)
    assert metrics["ece"] == pytest.approx(
        MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(probs, targets).item(), abs=1e-5)
    confidence, predicted = probs.max(1)
    assert misclassification_auroc(log_probs, targets) == pytest.approx(
        BinaryAUROC()(confidence, (predicted == targets).long()).item(), abs=1e-5)
    nll = torch.nn.functional.cross_entropy(logits, targets).item()
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)


def test_metrics_refuse_bad_shapes():
    with pytest.raises(ValueError, match="log_probs"):
        classification_metrics(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        member_log_probs(torch.zeros(3, 2, 2, 4), torch.ones(1, 2))


# --- feature-reuse probe ---------------------------------------------------------------------------------

def test_probe_identical_members_overlap_fully():
    torch.manual_seed(0)
    stem = torch.randn(8, 3, 3, 3)
    head = torch.randn(10, 16)
    probe = feature_reuse_from_weights([stem, stem.clone()], [head, head.clone()])
    assert probe["input"]["overlap"] == pytest.approx(1.0, abs=1e-6)
    assert probe["output"]["overlap"] == pytest.approx(1.0, abs=1e-6)
    assert len(probe["input"]["profiles"]) == 2 and len(probe["input"]["profiles"][0]) == 8
    assert len(probe["output"]["profiles"][0]) == 16
    assert max(probe["input"]["profiles"][0]) == pytest.approx(1.0, abs=1e-6)


def test_probe_disjoint_members_do_not_overlap():
    first, second = torch.zeros(10, 16), torch.zeros(10, 16)
    first[:, :8] = 1.0
    second[:, 8:] = -2.0
    assert feature_overlap(feature_profiles([first, second], feature_dim=1)) == pytest.approx(0.0, abs=1e-6)
    stem_first, stem_second = torch.zeros(4, 3), torch.zeros(4, 3)
    stem_first[:2], stem_second[2:] = 1.0, 1.0
    assert feature_overlap(feature_profiles([stem_first, stem_second], feature_dim=0)) == pytest.approx(0.0)


def test_probe_by_hand():
    profiles = feature_profiles([torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[4.0, 2.0, 1.0]])], 1)
    assert torch.allclose(profiles, torch.tensor([[0.25, 0.5, 1.0], [1.0, 0.5, 0.25]]), atol=1e-6)
    assert feature_overlap(profiles) == pytest.approx((0.25 + 1.0 + 0.25) / 3, abs=1e-6)


def test_probe_on_methods():
    factory = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4)))
    probe = feature_reuse(MIMO(factory, 1, 10, num_members=3))
    assert len(probe["input"]["profiles"]) == 3 and len(probe["input"]["profiles"][0]) == 16
    assert len(probe["output"]["profiles"][0]) == 16  # F = 4 * 4 planes
    assert 0.0 <= probe["output"]["overlap"] <= 1.0
    assert feature_reuse(Base(factory, 1, 10)) is None


# --- evaluate_method --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup():
    splits = load_embedded(0)
    return splits.test.subset(torch.arange(40)), Normalizer.fit(splits.train.images)


def test_evaluate_method_returns_every_key(tiny_setup):
    data, normalizer = tiny_setup
    torch.manual_seed(0)
    factory = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4)))
    method = MIMO(factory, 1, 10, num_members=2)
    method.train()
    results = evaluate_method(method, data, normalizer, batch_size=16)
    assert method.training  # the mode is restored
    test = results["test"]
    for key in ("accuracy", "nll", "ece", "brier", "entropy", "confidence", "accuracy_minus_confidence",
                "misclassification_auroc", "member_accuracy", "member_nll", "member_confidence",
                "member_accuracy_minus_confidence", "disagreement", "reliability"):
        assert key in test
    assert "exit_accuracy" not in test  # one exit
    assert len(test["member_accuracy"]) == 2
    assert sum(test["reliability"]["count"]) == 40
    sets = results["shifted"]["sets"]
    assert len(sets) == 25 and "rotate/45" in sets and "pixelate/0.5" in sets
    summary = results["shifted"]["summary"]
    assert set(summary) >= {"accuracy", "nll", "ece", "brier", "entropy", "confidence", "accuracy_minus_confidence",
                            "disagreement"}
    nll = torch.tensor([s["nll"] for s in sets.values()], dtype=torch.float64)
    assert summary["nll"]["mean"] == pytest.approx(nll.mean().item())
    assert summary["nll"]["std"] == pytest.approx(nll.std(correction=0).item())
    # rotation by 0 is the clean set
    assert sets["rotate/0"]["nll"] == pytest.approx(test["nll"], rel=1e-5)
    # the same numbers whatever the batch size
    again = evaluate_method(method, data, normalizer, batch_size=40)
    assert again["shifted"]["sets"]["translate/0.3"]["nll"] == pytest.approx(sets["translate/0.3"]["nll"],
                                                                              rel=1e-4)


def test_evaluate_single_member_and_exits(tiny_setup):
    data, normalizer = tiny_setup
    factory = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4)))
    results = evaluate_method(Base(factory, 1, 10), data, normalizer, shifted=False)
    assert results["shifted"] is None and "member_accuracy" not in results["test"]
    method = MIMMO(factory, 1, 10, num_members=2)
    prediction = predict(method, data.images, normalizer, batch_size=32)
    assert prediction.log_probs.shape == (40, 10) and prediction.member_log_probs.shape == (40, 2, 10)
    assert prediction.weights.shape == (4, 2)
    assert prediction.exit_log_probs.shape == (40, 4, 10)
    test = evaluate_method(method, data, normalizer, shifted=False)["test"]
    for key in ("exit_accuracy", "exit_nll", "exit_confidence", "exit_accuracy_minus_confidence"):
        assert len(test[key]) == 4
    # the last exit's ensemble of the members is what MIMO's mixture would be from the same logits
    with torch.no_grad():
        logits = method(Normalizer.to_unit(data.images[:8]).sub(0.5)).logits
    assert torch.allclose(exit_log_probs(logits)[:, -1], mixture_log_probs(logits[:, -1:], torch.ones(1, 2)),
                          atol=1e-5)
