"""Risk-coverage, AURC and E-AURC on hand-worked rankings, ties in expectation."""

from __future__ import annotations

import math

import pytest
import torch

from mimmo.evaluation.selective import (
    cumulative_errors,
    oracle_aurc,
    risk_at_coverage,
    risk_coverage,
    selective_metrics,
)


def _log_probs(confidence: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class log probabilities with top probability ``confidence`` on class 0, and targets (0 when correct)."""
    top = torch.tensor(confidence, dtype=torch.float64)
    targets = torch.tensor([0 if c else 1 for c in correct])
    return torch.stack([top, 1 - top], dim=1).log(), targets


def test_perfect_ranking_has_zero_excess():
    metrics = selective_metrics(*_log_probs([0.9, 0.8, 0.7, 0.6], [True, True, False, False]))
    # Risks after 1..4 accepted: 0, 0, 1/3, 2/4.
    assert metrics["aurc"] == pytest.approx((1 / 3 + 1 / 2) / 4)
    assert metrics["oracle_aurc"] == pytest.approx(metrics["aurc"])
    assert metrics["e_aurc"] == pytest.approx(0.0, abs=1e-15)


def test_reversed_ranking():
    metrics = selective_metrics(*_log_probs([0.9, 0.8, 0.7, 0.6], [False, False, True, True]))
    # Risks 1, 1, 2/3, 2/4; the oracle's are 0, 0, 1/3, 2/4.
    assert metrics["aurc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert metrics["e_aurc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)


def test_ties_count_in_expectation_whatever_the_order():
    errors = torch.tensor([0.0, 1.0, 0.0, 0.0])
    for permutation in ([0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]):
        coverage, risk = risk_coverage(torch.full((4,), 0.5), errors[permutation])
        torch.testing.assert_close(risk, torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(coverage, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert oracle_aurc(errors) == pytest.approx(0.25 / 4)
    # Ties within groups only: group {0.9, 0.9} holds one error, group {0.5, 0.5} none.
    cumulative = cumulative_errors(torch.tensor([0.5, 0.9, 0.5, 0.9]), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(cumulative, torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_risk_at_coverage_takes_the_ceiling():
    risk = torch.arange(1, 21, dtype=torch.float64)  # risk[k - 1] marks k accepted samples
    assert risk_at_coverage(risk, 0.9) == 18 and risk_at_coverage(risk, 0.95) == 19
    assert risk_at_coverage(risk, 0.8) == 16 and risk_at_coverage(risk, 0.81) == 17
    assert risk_at_coverage(risk, 1.0) == 20
    with pytest.raises(ValueError, match="coverage must be in"):
        risk_at_coverage(risk, 0.0)


def test_metrics_hold_the_curve_and_the_risks():
    confidence = [1 - i / 40 for i in range(20)]
    correct = [i not in (3, 18, 19) for i in range(20)]
    metrics = selective_metrics(*_log_probs(confidence, correct))
    assert metrics["risk_at_80"] == pytest.approx(1 / 16)
    assert metrics["risk_at_90"] == pytest.approx(1 / 18)
    assert metrics["risk_at_95"] == pytest.approx(2 / 19)
    assert len(metrics["curve"]["coverage"]) == len(metrics["curve"]["risk"]) == 20
    assert metrics["curve"]["risk"][-1] == pytest.approx(3 / 20)
    assert metrics["e_aurc"] > 0 and math.isclose(metrics["aurc"] - metrics["oracle_aurc"], metrics["e_aurc"])


def test_nan_predictions_give_nan():
    metrics = selective_metrics(torch.full((3, 2), math.nan), torch.zeros(3, dtype=torch.long))
    assert math.isnan(metrics["aurc"]) and metrics["curve"] is None
