"""Anytime prediction and exits pruned by θ (mimmo.methods.exits, mimmo.evaluation.anytime/pruning)."""

from __future__ import annotations

import pytest
import torch

from mimmo.data.datasets import ImageSet, Normalizer
from mimmo.evaluation.anytime import anytime_sweep, cheapest_within, exit_costs
from mimmo.evaluation.cost import count_cost, counting_flops
from mimmo.evaluation.evaluate import Readout, predict, predict_readouts
from mimmo.evaluation.pruning import pruned_cost, pruned_network, pruned_weights
from mimmo.methods import DUN, MIMMO, Base, EarlyExit, MIMMOGamma, mixture_log_probs
from mimmo.methods.exits import PrunedExits, predict_anytime, prune_weights
from mimmo.models import ResNetConfig, ResNetFactory

TINY = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4), stem_channels=4))
C, K, SIZE, D = 3, 5, 8, 4


def inputs(size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, C, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def build(name: str, theta_seed: int | None = 1) -> torch.nn.Module:
    """A tiny exit method in eval mode; MIMMO's and DUN's θ drawn away from uniform (and BN statistics moved)."""
    torch.manual_seed(0)
    method = {"mimmo": lambda: MIMMO(TINY, C, K, num_members=2), "dun": lambda: DUN(TINY, C, K),
              "mimmo_gamma": lambda: MIMMOGamma(TINY, C, K, num_members=2),
              "early_exit": lambda: EarlyExit(TINY, C, K)}[name]()
    method.train()
    with torch.no_grad():
        method(inputs(32, seed=5))  # BN running statistics away from (0, 1)
        if theta_seed is not None and hasattr(method, "depth_logits"):
            generator = torch.Generator().manual_seed(theta_seed)
            method.depth_logits.copy_(2.0 * torch.randn(method.depth_logits.shape, generator=generator))
    return method.eval()


def full_log_probs(method: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        prediction = method(x)
    return mixture_log_probs(prediction.logits, prediction.weights)


EXIT_METHODS = ("mimmo", "dun", "mimmo_gamma", "early_exit")


# --------------------------------------------------------------------------------------------- anytime


@pytest.mark.parametrize("name", EXIT_METHODS)
def test_anytime_at_threshold_one_is_the_full_mixture(name):
    method, x = build(name), inputs()
    result = method.predict_anytime(x, 1.0)
    assert torch.equal(result.exits, torch.full((len(x),), D - 1))
    torch.testing.assert_close(result.log_probs, full_log_probs(method, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", EXIT_METHODS)
def test_anytime_at_threshold_zero_stops_every_sample_at_the_first_exit(name):
    method, x = build(name), inputs()
    result = method.predict_anytime(x, 0.0)
    assert torch.equal(result.exits, torch.zeros(len(x), dtype=torch.long))
    with torch.no_grad():
        first = method(x).logits[:, :1]  # exit 0 alone: each member's softmax, members averaged
    torch.testing.assert_close(result.log_probs, mixture_log_probs(first, torch.ones(1, first.shape[2])),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mimmo", "early_exit"])
@pytest.mark.parametrize("threshold", [0.25, 0.3, 0.4])
def test_each_sample_stops_at_its_first_confident_exit_with_its_partial_mixture(name, threshold):
    """Against the partial mixtures computed from the full network's logits (each member renormalised)."""
    method, x = build(name), inputs(40)
    with torch.no_grad():
        prediction = method(x)
    weights = prediction.weights
    partial = []
    for i in range(D):
        renormalised = weights[:i + 1] / weights[:i + 1].sum(0)
        partial.append(mixture_log_probs(prediction.logits[:, :i + 1], renormalised))
    result = method.predict_anytime(x, threshold)
    for b in range(len(x)):
        confident = [i for i in range(D - 1) if partial[i][b].exp().max() > threshold]
        expected = confident[0] if confident else D - 1
        assert int(result.exits[b]) == expected
        torch.testing.assert_close(result.log_probs[b], partial[expected][b], atol=1e-5, rtol=1e-5)


def test_samples_that_stopped_do_not_enter_the_next_stage():
    method, x = build("mimmo"), inputs(30)
    seen = []
    handles = [stage.register_forward_hook(lambda m, i, o: seen.append(len(o))) for stage in method.backbone.stages]
    try:
        result = method.predict_anytime(x, 0.3)
    finally:
        for handle in handles:
            handle.remove()
    reached = [int((result.exits >= i).sum()) for i in range(D)]
    assert seen == [n for n in reached if n > 0]


def test_flops_counted_per_sample_equal_the_counters_per_exit_costs():
    """The work the anytime prediction does (hooks on every module, plus a softmax per logit of every exit it
    computed) equals the sum over the samples of the cost counter's cost of stopping at their exit."""
    method, x = build("mimmo"), inputs(40)
    costs = exit_costs(method, (C, SIZE, SIZE))
    assert costs[-1] == count_cost(method, (C, SIZE, SIZE)).flops
    assert costs == sorted(costs) and len(set(costs)) == D
    for threshold in (0.0, 0.3, 1.0):
        with counting_flops(method) as counter:
            result = method.predict_anytime(x, threshold)
        softmaxes = sum(int((result.exits >= i).sum()) for i in range(D)) * method.num_members * K
        assert counter.flops + softmaxes == sum(costs[int(e)] for e in result.exits)


def test_anytime_refuses_bad_thresholds_and_methods_without_exits():
    method = build("mimmo")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            method.predict_anytime(inputs(2), bad)
    with pytest.raises(TypeError, match="no early exits"):
        Base(TINY, C, K).predict_anytime(inputs(2), 0.5)


def test_anytime_sweep_writes_one_row_per_threshold_and_ends_at_the_full_prediction():
    method = build("mimmo")
    images = (torch.rand(24, C, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    data = ImageSet(images, torch.randint(0, K, (24,), generator=torch.Generator().manual_seed(4)))
    normalizer = Normalizer(torch.full((C,), 0.5), torch.full((C,), 0.25))
    table = anytime_sweep(method, data, normalizer, thresholds=(0.0, 0.3, 1.0), batch_size=10)
    rows = table["thresholds"]
    assert [row["threshold"] for row in rows] == [0.0, 0.3, 1.0]
    assert rows[0]["flops"] == table["exit_flops"][0] and rows[0]["exit_fractions"][0] == 1.0
    assert rows[-1]["flops"] == table["full"]["flops"] == count_cost(method, (C, SIZE, SIZE)).flops
    raw = predict(method, images, normalizer).log_probs
    assert rows[-1]["accuracy"] == table["full"]["accuracy"] == (raw.argmax(1) == data.labels).float().mean().item()
    assert rows[-1]["nll"] == pytest.approx(table["full"]["nll"], abs=1e-5)
    assert all(sum(row["exit_fractions"]) == pytest.approx(1.0) and row["seconds_per_image"] > 0 for row in rows)
    best = cheapest_within(rows, table["full"]["accuracy"], points=100.0)
    assert best is rows[0]  # everything is within 100 points: the cheapest row
    assert cheapest_within([{"flops": 1, "accuracy": 0.5}], 1.0) is None
    tied = [{"flops": 2, "accuracy": 0.9}, {"flops": 1, "accuracy": 0.8}, {"flops": 1, "accuracy": 0.85}]
    assert cheapest_within(tied, 0.9, points=10.0) is tied[2]  # equally cheap: the more accurate


# --------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("name", EXIT_METHODS)
def test_pruning_with_eps_zero_changes_nothing(name):
    method, x = build(name), inputs()
    weights = method.prediction_weights()
    assert torch.equal(prune_weights(weights, 0.0), weights.float())
    pruned = pruned_network(method, 0.0)
    assert pruned.used == [True] * D and not pruned.training
    with torch.no_grad():
        full, cut = method(x), pruned(x)
    torch.testing.assert_close(cut.logits, full.logits, atol=1e-6, rtol=1e-6)
    assert torch.equal(cut.weights, full.weights)
    assert count_cost(pruned, (C, SIZE, SIZE), used_parameters=True) == count_cost(method, (C, SIZE, SIZE))
    images = (torch.rand(8, C, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    normalizer = Normalizer(torch.zeros(C), torch.ones(C))
    both = predict_readouts(method, images, normalizer,
                            {"raw": Readout(), "pruned": Readout(weights=pruned_weights(method, 0.0))})
    assert torch.equal(both["raw"].log_probs, both["pruned"].log_probs)
    assert torch.equal(both["raw"].log_probs, predict(method, images, normalizer).log_probs)


def test_prune_weights_drops_per_member_and_renormalises():
    weights = torch.tensor([[0.05, 0.30], [0.15, 0.02], [0.80, 0.68]])
    pruned = prune_weights(weights, 0.1)
    expected = torch.tensor([[0.0, 0.30 / 0.98], [0.15 / 0.95, 0.0], [0.80 / 0.95, 0.68 / 0.98]])
    torch.testing.assert_close(pruned, expected)
    assert torch.equal(prune_weights(weights, 0.01), weights)  # nothing below 0.01: exactly unchanged
    with pytest.raises(ValueError, match="every exit of member 1"):
        prune_weights(weights, 0.7)
    for bad in (-1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="prune_exits"):
            prune_weights(weights, bad)


def set_theta(method: MIMMO, theta: torch.Tensor) -> None:
    with torch.no_grad():
        method.depth_logits.copy_(theta.log())


def test_an_exit_no_member_keeps_is_skipped_and_its_cost_is_gone():
    method, x = build("mimmo"), inputs()
    set_theta(method, torch.tensor([[0.30, 0.40], [0.01, 0.02], [0.29, 0.18], [0.40, 0.40]]))
    pruned = pruned_network(method, 0.05)
    assert pruned.used == [True, False, True, True]
    adapter = count_cost_of(method.network.exits[1], method)
    full, cut = count_cost(method, (C, SIZE, SIZE)), count_cost(pruned, (C, SIZE, SIZE), used_parameters=True)
    head = method.backbone.head  # shared: one more (F -> M*K) product per exit, then M*K softmax outputs
    head_flops = head.in_features * head.out_features + head.out_features
    assert full.flops - cut.flops == adapter["flops"] + head_flops + method.num_members * K
    assert full.params - cut.params == sum(p.numel() for p in method.network.exits[1].parameters())
    with torch.no_grad():
        prediction = pruned(x)
        expected = mixture_log_probs(method(x).logits, pruned_weights(method, 0.05))
    assert prediction.logits.shape == (len(x), 3, 2, K)
    torch.testing.assert_close(mixture_log_probs(prediction.logits, prediction.weights), expected,
                               atol=1e-5, rtol=1e-5)


def count_cost_of(module: torch.nn.Module, method: MIMMO) -> dict:
    """FLOPs of ``module`` inside one prediction of ``method`` (batch of one)."""
    with counting_flops(module) as counter, torch.no_grad():
        method(torch.zeros(1, C, SIZE, SIZE))
    return {"flops": counter.flops}


def test_an_exit_one_member_keeps_still_runs_and_deep_stages_are_skipped_when_unused():
    method = build("mimmo")
    # member 0 keeps exit 1 only; member 1 keeps exits 0 and 1: nothing uses exits 2 and 3
    set_theta(method, torch.tensor([[0.01, 0.5], [0.97, 0.48], [0.01, 0.01], [0.01, 0.01]]))
    pruned = pruned_network(method, 0.05)
    assert pruned.used == [True, True, False, False] and pruned.deepest == 1
    seen = []
    handles = [stage.register_forward_hook(lambda m, i, o: seen.append(1)) for stage in method.backbone.stages]
    try:
        with torch.no_grad():
            pruned(inputs(3))
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == 2  # stages 3 and 4 never ran
    section = pruned_cost(method, 0.05, (C, SIZE, SIZE))
    assert section["exits_used"] == [True, True, False, False] and section["deepest_stage"] == 2
    assert section["cost"]["flops"] == exit_costs(method, (C, SIZE, SIZE), pruned.full_weights)[1]
    assert section["cost"]["flops"] < count_cost(method, (C, SIZE, SIZE)).flops
    anytime = pruned.predict_anytime(inputs(), 1.0)  # pruned exits are no exit points
    assert set(anytime.exits.tolist()) == {1}


def test_pruning_refuses_methods_without_exits():
    with pytest.raises(TypeError, match="no exits to prune"):
        pruned_weights(Base(TINY, C, K), 0.1)
    with pytest.raises(TypeError, match="no exits to prune"):
        PrunedExits(Base(TINY, C, K), torch.ones(1, 1))


def test_predict_anytime_takes_pruned_weights_directly():
    method, x = build("dun"), inputs()
    weights = pruned_weights(method, 0.0)
    torch.testing.assert_close(predict_anytime(method, x, 1.0, weights).log_probs, full_log_probs(method, x),
                               atol=1e-5, rtol=1e-5)
