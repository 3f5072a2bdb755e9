"""Total entropy = expected entropy + mutual information, over members, exits and both."""

from __future__ import annotations

import math

import torch

from mimmo.evaluation.decomposition import SPLITS, decompose, entropy, summarize_decomposition
from mimmo.evaluation.metrics import member_log_probs


def _one_hot_logits(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits (..., K) of one-hot distributions on ``classes``: 0 on the class, -inf elsewhere."""
    logits = torch.full((*classes.shape, num_classes), -math.inf, dtype=torch.float64)
    return logits.scatter(-1, classes[..., None], 0.0)


def _random(seed: int, shape=(6, 3, 2, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    weights = torch.rand(shape[1:3], generator=generator, dtype=torch.float64).softmax(dim=0)  # columns sum to 1
    return logits, weights


def test_identical_components_have_no_mutual_information():
    logits = torch.randn(4, 1, 1, 5).expand(4, 3, 2, 5)
    parts = decompose(logits, torch.full((3, 2), 1 / 3))
    for split in SPLITS:
        assert parts[f"mi_{split}"].abs().max() < 1e-12
        torch.testing.assert_close(parts[f"expected_{split}"], parts["total"])
    torch.testing.assert_close(parts["total"], entropy(logits[:, 0, 0].double().log_softmax(-1)))


def test_members_on_disjoint_classes_give_log_m():
    num_exits, num_members = 2, 3
    classes = torch.arange(num_members).expand(4, num_exits, num_members)  # member m always says class m
    parts = decompose(_one_hot_logits(classes, num_members), torch.full((num_exits, num_members), 1 / num_exits))
    torch.testing.assert_close(parts["mi_members"], torch.full((4,), math.log(num_members), dtype=torch.float64))
    torch.testing.assert_close(parts["mi_both"], torch.full((4,), math.log(num_members), dtype=torch.float64))
    assert parts["mi_exits"].abs().max() < 1e-12  # every exit holds the same uniform mixture over the members
    assert parts["expected_both"].abs().max() == 0


def test_exits_on_disjoint_classes_give_log_d():
    num_exits, num_members = 4, 2
    classes = torch.arange(num_exits)[:, None].expand(3, num_exits, num_members)  # exit i always says class i
    parts = decompose(_one_hot_logits(classes, num_exits + 1), torch.full((num_exits, num_members), 1 / num_exits))
    torch.testing.assert_close(parts["mi_exits"], torch.full((3,), math.log(num_exits), dtype=torch.float64))
    assert parts["mi_members"].abs().max() < 1e-12
    torch.testing.assert_close(parts["total"], torch.full((3,), math.log(num_exits), dtype=torch.float64))


def test_splits_add_up_and_obey_the_chain_rule():
    for seed in range(3):
        logits, weights = _random(seed)
        parts = decompose(logits, weights)
        for split in SPLITS:
            torch.testing.assert_close(parts[f"expected_{split}"] + parts[f"mi_{split}"], parts["total"])
            assert parts[f"mi_{split}"].min() > -1e-12
        assert (parts["mi_both"] >= parts["mi_members"] - 1e-12).all()
        assert (parts["mi_both"] >= parts["mi_exits"] - 1e-12).all()
        # The members' part against the evaluation's own member mixtures (an independent computation).
        members = member_log_probs(logits.float(), weights.float()).double()
        torch.testing.assert_close(parts["expected_members"], entropy(members).mean(dim=1), atol=1e-5, rtol=1e-5)


def test_exits_use_the_weighted_conditional_mixture():
    # One sample, 2 exits, 2 members, 2 classes; hand-computed with pi = w / 2.
    logits = _one_hot_logits(torch.tensor([[[0, 1], [1, 1]]]), 2)  # exit 0: members say 0, 1; exit 1: both say 1
    weights = torch.tensor([[0.5, 0.25], [0.5, 0.75]], dtype=torch.float64)
    parts = decompose(logits, weights)
    # p(y) = 0.25 e0 + 0.125 e1 + 0.25 e1 + 0.375 e1 = (0.25, 0.75); exit 0 mixes (0.25 e0 + 0.125 e1) / 0.375.
    h = lambda *p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    assert math.isclose(parts["total"].item(), h(0.25, 0.75))
    assert math.isclose(parts["expected_exits"].item(), 0.375 * h(2 / 3, 1 / 3))
    # member 0 mixes 0.5 e0 + 0.5 e1, member 1 is e1: expected entropy (1/2) log 2.
    assert math.isclose(parts["expected_members"].item(), 0.5 * math.log(2))


def test_a_pruned_exit_counts_nothing():
    logits, weights = _random(7)
    pruned = weights.clone()
    pruned[0] = 0.0
    pruned = pruned / pruned.sum(dim=0)
    parts, without = decompose(logits, pruned), decompose(logits[:, 1:], pruned[1:])
    for name, values in parts.items():
        assert values.isfinite().all(), name
        torch.testing.assert_close(values, without[name])


def test_summary_holds_the_conditional_terms():
    summary = summarize_decomposition(decompose(*_random(1)))
    assert math.isclose(summary["mi_exits_given_members"], summary["mi_both"] - summary["mi_members"])
    assert math.isclose(summary["mi_members_given_exits"], summary["mi_both"] - summary["mi_exits"])
    assert math.isclose(summary["total"], summary["expected_both"] + summary["mi_both"])
