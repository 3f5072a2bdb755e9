"""OOD scores and detection metrics: against torchmetrics, hand-worked FPR95 cases, the mixture's energy."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from mimmo.evaluation.ood import (
    HIGHER_IS_OOD,
    average_precision,
    detection_metrics,
    energy,
    fpr_at_tpr,
    ood_metrics,
    ood_scores,
    score_names,
)
from mimmo.methods import mixture_log_probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_torchmetrics_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    id_scores = (torch.randn(40, generator=generator) * 2).round() / 2  # many ties, within and across the sets
    ood = (torch.randn(25, generator=generator) * 2 + 1).round() / 2
    metrics = detection_metrics(id_scores, ood, higher_is_ood=True)
    scores, is_ood = torch.cat([id_scores, ood]), torch.cat([torch.zeros(40), torch.ones(25)]).long()
    assert math.isclose(metrics["auroc"], BinaryAUROC()(scores, is_ood).item(), abs_tol=1e-6)
    assert math.isclose(metrics["aupr_out"], BinaryAveragePrecision()(scores, is_ood).item(), abs_tol=1e-6)
    assert math.isclose(metrics["aupr_in"], BinaryAveragePrecision()(-scores, 1 - is_ood).item(), abs_tol=1e-6)
    # A score read the other way round (higher = in-distribution) gives the same metrics.
    assert detection_metrics(-id_scores, -ood, higher_is_ood=False) == metrics


def test_average_precision_by_hand():
    # Ranked: pos, neg, pos, neg -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert math.isclose(average_precision(torch.tensor([4.0, 3, 2, 1]), torch.tensor([1, 0, 1, 0])), 5 / 6)
    # A positive tied with a negative at the top crosses the threshold with it: precision 1/2 at recall 1/2.
    assert math.isclose(average_precision(torch.tensor([2.0, 2, 1]), torch.tensor([1, 0, 1])), 0.5 * 0.5 + 0.5 * 2 / 3)


def test_fpr95_hand_worked():
    id_scores = torch.arange(20.0)  # higher = more OOD; 19 of 20 (95%) accepted at threshold 18
    assert fpr_at_tpr(id_scores, torch.tensor([18.5, 18.0, 17.0, 25.0]), higher_is_ood=True) == 0.5  # 18 tied: in
    assert fpr_at_tpr(id_scores, torch.tensor([19.0, 30.0]), higher_is_ood=True) == 0.0
    assert fpr_at_tpr(id_scores, torch.tensor([-1.0, 5.0]), higher_is_ood=True) == 1.0
    # Ten ID samples: 95% needs all ten, so the threshold is the highest ID score.
    assert fpr_at_tpr(torch.arange(10.0), torch.tensor([9.0, 9.5, 8.0, 10.0]), higher_is_ood=True) == 0.5
    # Confidence (higher = ID) 1, 0.95, ..., 0.05: 19 of 20 accepted at confidence >= 0.1 (0.1 tied: accepted).
    confidence = torch.arange(20, 0, -1) / 20
    assert fpr_at_tpr(confidence, torch.tensor([2, 1, 10]) / 20, higher_is_ood=False) == pytest.approx(2 / 3)


def test_perfect_and_reversed_detectors():
    id_scores, ood = torch.arange(10.0), torch.arange(10.0) + 100
    assert detection_metrics(id_scores, ood, True) == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    reversed_metrics = detection_metrics(ood, id_scores, True)
    assert reversed_metrics["auroc"] == 0.0 and reversed_metrics["fpr95"] == 1.0


def test_both_sets_are_needed_and_nan_scores_give_nan():
    with pytest.raises(ValueError, match="in-distribution and OOD samples, got 3 and 0"):
        detection_metrics(torch.ones(3), torch.ones(0), True)
    metrics = detection_metrics(torch.tensor([1.0, math.nan]), torch.ones(2), True)
    assert all(math.isnan(v) for v in metrics.values())


def test_energy_of_the_mixture():
    logits = torch.randn(5, 1, 1, 4)
    torch.testing.assert_close(energy(logits, torch.ones(1, 1)), -torch.logsumexp(logits[:, 0, 0].double(), dim=-1))
    # Two members (M = 2, pi = 1/2 each): sum_y exp(f) = 2 and 6, so E = -log(0.5 * 2 + 0.5 * 6) = -log 4.
    two = torch.stack([torch.zeros(2), torch.tensor([math.log(3), math.log(3)])])[None, None]  # (1, 1, 2, 2)
    assert math.isclose(energy(two, torch.ones(1, 2)).item(), -math.log(4.0), rel_tol=1e-6)
    # An exit of weight 0 does not count.
    three = torch.cat([two, torch.full((1, 1, 2, 2), 50.0)], dim=1)
    assert math.isclose(energy(three, torch.tensor([[1.0, 1.0], [0.0, 0.0]])).item(), -math.log(4.0), rel_tol=1e-6)


def test_scores_per_shape_and_their_values():
    assert score_names(1, 1) == ["msp", "entropy", "energy"]
    assert score_names(1, 3) == ["msp", "entropy", "energy", "mi_members"]
    assert score_names(4, 1) == ["msp", "entropy", "energy", "mi_exits"]
    assert score_names(4, 3) == ["msp", "entropy", "energy", "mi_members", "mi_exits", "mi_both"]
    logits, weights = torch.randn(6, 2, 3, 5), torch.tensor([[0.3, 0.5, 0.9], [0.7, 0.5, 0.1]])
    scores = ood_scores(logits, weights)
    assert set(scores) == set(score_names(2, 3)) and all(v.shape == (6,) for v in scores.values())
    torch.testing.assert_close(scores["msp"].float(), mixture_log_probs(logits, weights).max(dim=1).values.exp())
    assert set(HIGHER_IS_OOD) >= set(scores)


def test_ood_metrics_per_score_on_a_separable_case():
    # ID: confident one-hot-like logits; OOD: flat logits. Every score should separate them perfectly.
    id_logits = torch.zeros(12, 2, 2, 3)
    id_logits[..., 0] = 8.0
    ood_logits = torch.randn(15, 2, 2, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    weights = torch.full((2, 2), 0.5)
    metrics = ood_metrics(ood_scores(id_logits, weights), ood_scores(ood_logits, weights))
    assert set(metrics) == set(score_names(2, 2))
    for name in ("msp", "entropy", "energy"):
        assert metrics[name]["auroc"] == 1.0 and metrics[name]["fpr95"] == 0.0, name
