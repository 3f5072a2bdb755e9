"""Base, MIMO, MIMMO and MIMMO-γ (docs/method.md): shapes, layouts, repetition, θ, KL, loss, reductions."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from mimmo.methods import MIMMO, MIMO, Base, MIMMOGamma, Prediction, Progress
from mimmo.methods.mimmo import make_prior
from mimmo.methods.repetition import member_indices
from mimmo.models import ResNetConfig, ResNetFactory
from mimmo.models.backbone import first_layer

TINY = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4), stem_channels=4))
TWO_STAGES = ResNetFactory(ResNetConfig(layers=(1, 1), planes=(4, 4), strides=(1, 2), stem_channels=4))
ONE_STAGE = ResNetFactory(ResNetConfig(layers=(1,), planes=(4,), strides=(1,), stem_channels=4))
C, K, SIZE, D = 3, 5, 8, 4  # input channels, classes, image side, exits of TINY
AFTER_WARM_START = Progress(epoch=5, num_epochs=10, fraction=0.5, num_train=123)


def batch(size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, C, SIZE, SIZE, generator=generator),
            torch.randint(0, K, (size,), generator=generator))


def build(name: str, num_members: int = 3, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "base":
        return Base(TINY, C, K)
    cls = {"mimo": MIMO, "mimmo": MIMMO, "mimmo_gamma": MIMMOGamma}[name]
    return cls(TINY, C, K, num_members=num_members, **options)


def exact_num_shuffled(total: int, rho: Fraction) -> int:
    """n = floor(B'(1 - rho)) in exact arithmetic (docs/method.md, "Multi-input training")."""
    return math.floor(total * (1 - rho))


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "depth", "members"), [
    ("base", 1, 1), ("mimo", 1, 3), ("mimmo", D, 3), ("mimmo_gamma", D, 3)])
def test_logits_and_weights_have_the_common_shape(name, depth, members):
    method = build(name).eval()
    x, y = batch(7)
    with torch.no_grad():
        prediction = method(x)
    assert isinstance(prediction, Prediction)
    assert prediction.logits.shape == (7, depth, members, K)
    assert prediction.weights.shape == (depth, members)
    assert (method.num_exits, method.num_members, method.num_classes) == (depth, members, K)
    assert torch.allclose(prediction.weights.sum(0), torch.ones(members))
    assert bool((prediction.weights >= 0).all())
    probs = method.predict_proba(x)
    assert probs.shape == (7, K)
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-6)
    method.train()
    loss = method.training_loss(x, y, AFTER_WARM_START).loss
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_base_loss_is_cross_entropy():
    method = build("base")
    x, y = batch()
    loss = method.training_loss(x, y, AFTER_WARM_START).loss
    assert torch.allclose(loss, F.cross_entropy(method.backbone(x), y))


# ----------------------------------------------------------------------------------------------- layouts


def image_per_index(num: int) -> torch.Tensor:
    """Image j is the constant j + 1: any slice of a training input says which image it holds."""
    return (torch.arange(num, dtype=torch.float32) + 1)[:, None, None, None].expand(num, C, SIZE, SIZE).clone()


@pytest.mark.parametrize("name", ["mimo", "mimmo"])
def test_training_batch_targets_follow_the_inputs(name):
    method = build(name, num_members=3, repetitions=2, input_repetition=0.25)
    x = image_per_index(8)
    y = torch.tensor([3, 1, 4, 1, 0, 2, 2, 4])
    torch.manual_seed(5)
    inputs, targets = method.training_batch(x, y)
    assert inputs.shape == (16, 3 * C, SIZE, SIZE) and targets.shape == (16, 3)
    torch.manual_seed(5)
    index = member_indices(8, 3, 2, 0.25)
    for row in range(16):
        for m in range(3):
            member_slice = inputs[row, m * C:(m + 1) * C]
            j = int(member_slice[0, 0, 0].item()) - 1
            assert torch.equal(member_slice, x[j])  # member m's channels hold exactly one whole image
            assert j == index[row, m]
            assert targets[row, m] == y[j]  # ... and member m's target is that image's label


@pytest.mark.parametrize("name", ["mimo", "mimmo"])
def test_member_m_owns_stem_input_channels(name):
    method = build(name, num_members=3)
    stem = first_layer(method.backbone.stem)
    assert stem.in_channels == 3 * C
    x, y = batch(6)
    torch.manual_seed(1)
    inputs, _ = method.training_batch(x, y)
    captured = []
    stem.register_forward_hook(lambda module, args, output: captured.append(output.detach().clone()))
    full_weight = stem.weight.detach().clone()
    method.eval()
    assert all(torch.equal(w, full_weight[:, m * C:(m + 1) * C])
               for m, w in enumerate(method.member_input_weights()))
    for m in range(3):
        own = slice(m * C, (m + 1) * C)
        with torch.no_grad():  # keep only member m's input weights
            stem.weight.zero_()
            stem.weight[:, own] = full_weight[:, own]
        delta = torch.zeros_like(inputs)
        delta[:, own] = torch.randn(inputs.shape[0], C, SIZE, SIZE)
        others = torch.zeros_like(inputs)
        others[:, [c for c in range(3 * C) if not own.start <= c < own.stop]] = 5.0
        captured.clear()
        with torch.no_grad():
            method.backbone(inputs)
            method.backbone(inputs + others)
            method.backbone(inputs + delta)
        base, with_others, with_own = captured
        assert torch.equal(base, with_others)  # other members' channels do not reach member m's weights
        predicted = F.conv2d(delta[:, own], full_weight[:, own], padding=1)
        assert torch.allclose(with_own - base, predicted, atol=1e-5)
        assert predicted.abs().max() > 0.1
    with torch.no_grad():
        stem.weight.copy_(full_weight)


@pytest.mark.parametrize("name", ["mimo", "mimmo"])
def test_every_member_receives_the_same_image_at_test_time(name):
    method = build(name, num_members=3).eval()
    stem = first_layer(method.backbone.stem)
    seen = []
    stem.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().clone()))
    x, _ = batch(4)
    with torch.no_grad():
        method(x)
    assert seen[0].shape == (4, 3 * C, SIZE, SIZE)
    for m in range(3):
        assert torch.equal(seen[0][:, m * C:(m + 1) * C], x)


@pytest.mark.parametrize("name", ["mimo", "mimmo", "mimmo_gamma"])
def test_head_unit_m_times_k_plus_k_is_member_m_class_k(name):
    method = build(name, num_members=3).eval()
    head = method.backbone.head
    assert head.out_features == 3 * K
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(3 * K, dtype=torch.float32))
        logits = method(batch(2)[0]).logits
    expected = torch.arange(3 * K, dtype=torch.float32).view(3, K)  # [m, k] = m*K + k
    assert torch.equal(logits, expected.expand_as(logits))
    outputs = method.member_output_weights()
    assert len(outputs) == 3 and all(torch.equal(outputs[m], head.weight[m * K:(m + 1) * K]) for m in range(3))


def constant_head(method: torch.nn.Module, members: int, seed: int = 3) -> torch.Tensor:
    """Make every member's logits a constant (input-independent) row; return them (M, K)."""
    bias = torch.randn(members * K, generator=torch.Generator().manual_seed(seed)) * 3
    with torch.no_grad():
        method.backbone.head.weight.zero_()
        method.backbone.head.bias.copy_(bias)
    return bias.view(members, K)


def test_mimo_loss_scores_member_m_against_its_own_targets():
    method = build("mimo", num_members=3, repetitions=2, input_repetition=0.25)
    member_logits = constant_head(method, 3)
    x, y = batch(8)
    torch.manual_seed(11)
    loss = method.training_loss(x, y, AFTER_WARM_START).loss
    torch.manual_seed(11)
    _, targets = method.training_batch(x, y)  # (16, 3)
    log_p = F.log_softmax(member_logits, dim=-1)  # (M, K)
    nll = -torch.stack([log_p[m, targets[:, m]] for m in range(3)], dim=1)  # (B', M)
    assert torch.allclose(loss, nll.mean(0).sum(), atol=1e-5)  # sum over members of the batch mean


# -------------------------------------------------------------------------------------------- repetition


@pytest.mark.parametrize(("batch_size", "repetitions", "rho"), [
    (8, 2, Fraction(1, 4)), (32, 2, Fraction(1, 4)), (7, 3, Fraction(1, 2)), (16, 1, Fraction(1, 10)),
    (5, 2, Fraction(4, 5)), (10, 1, Fraction(9, 10)), (25, 1, Fraction(14, 25)), (12, 4, Fraction(3, 5))])
@pytest.mark.parametrize("num_members", [2, 3])
def test_member_indices_repeat_and_share_exactly(batch_size, repetitions, rho, num_members):
    total = batch_size * repetitions
    num_shuffled = exact_num_shuffled(total, rho)
    shared_rows = []
    for seed in range(50):
        index = member_indices(batch_size, num_members, repetitions, float(rho),
                               generator=torch.Generator().manual_seed(seed))
        assert index.shape == (total, num_members) and index.dtype == torch.int64
        for m in range(num_members):  # every member sees every sample exactly R times
            assert torch.equal(torch.bincount(index[:, m], minlength=batch_size),
                               torch.full((batch_size,), repetitions))
        heads = index[:num_shuffled].sort(dim=0).values  # every member re-shuffles the same n entries
        assert bool((heads == heads[:, :1]).all())
        same = (index == index[:, :1]).all(dim=1).tolist()
        shared_rows.append(next((total - r for r in range(total) if all(same[r:])), 0))
    # The last B' - n rows show every member one image; row n - 1 is shuffled per member, so over 50 draws
    # it differs at least once: the shared block is exactly B' - n rows, not a row more or less (a
    # "shuffle" of n = 1 row cannot differ, so then every row is shared).
    expected = total - num_shuffled if num_shuffled >= 2 else total
    assert min(shared_rows) == expected, (total, num_shuffled, sorted(set(shared_rows)))


def test_member_indices_with_rho_zero_shuffles_every_row_per_member():
    index = member_indices(16, 3, 2, 0.0, generator=torch.Generator().manual_seed(0))
    for m in range(3):
        assert torch.equal(torch.bincount(index[:, m]), torch.full((16,), 2))
    assert not torch.equal(index[:, 0], index[:, 1]) and not torch.equal(index[:, 1], index[:, 2])
    # no forced sharing: far fewer identical rows than the 32 a shared block would give
    assert int((index == index[:, :1]).all(1).sum()) < 8


def test_member_indices_with_rho_one_shows_every_member_the_same_image():
    index = member_indices(16, 3, 2, 1.0, generator=torch.Generator().manual_seed(0))
    assert bool((index == index[:, :1]).all())
    assert torch.equal(torch.bincount(index[:, 0]), torch.full((16,), 2))
    assert not torch.equal(index[:, 0], torch.arange(16).repeat(2))  # still shuffled once


def test_member_indices_follow_the_generator():
    a = member_indices(10, 2, 2, 0.25, generator=torch.Generator().manual_seed(4))
    b = member_indices(10, 2, 2, 0.25, generator=torch.Generator().manual_seed(4))
    c = member_indices(10, 2, 2, 0.25, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("options", "match"), [
    ({"num_members": 0}, r"num_members.*0"), ({"repetitions": 0}, r"repetitions.*0"),
    ({"input_repetition": 1.5}, r"input_repetition.*1\.5"), ({"input_repetition": -0.1}, r"-0\.1")])
@pytest.mark.parametrize("name", ["mimo", "mimmo"])
def test_multi_input_options_are_validated(name, options, match):
    with pytest.raises(ValueError, match=match):
        build(name, **options)


# -------------------------------------------------------------------------------------------- theta, KL


def random_theta(method: MIMMO, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        method.depth_logits.copy_(torch.randn(method.depth_logits.shape,
                                              generator=torch.Generator().manual_seed(seed)) * 2)
    return F.softmax(method.depth_logits.detach(), dim=0)


def test_theta_is_a_distribution_over_exits_per_member():
    method = build("mimmo", num_members=3)
    assert torch.allclose(method.exit_weights(), torch.full((D, 3), 1 / D))  # zeros at init -> uniform
    theta = random_theta(method)
    assert torch.allclose(method.exit_weights(), theta)
    assert torch.allclose(method.exit_weights().sum(0), torch.ones(3))
    assert not torch.allclose(theta[:, 0], theta[:, 1])  # per-member softmax, not one shared table
    with torch.no_grad():
        weights = method.eval()(batch(2)[0]).weights
    assert torch.allclose(weights, theta) and torch.allclose(weights.sum(0), torch.ones(3))


def test_kl_is_zero_at_the_prior_and_nonnegative_elsewhere():
    prior = torch.tensor([[0.1, 0.25, 0.7], [0.2, 0.25, 0.1], [0.3, 0.25, 0.1], [0.4, 0.25, 0.1]])
    for p in (None, prior):
        method = build("mimmo", num_members=3, prior=p)
        assert abs(method.kl_divergence(method.prior).item()) < 1e-6
        for seed in range(20):
            assert method.kl_divergence(random_theta(method, seed)).item() >= 0.0
        assert method.kl_divergence(random_theta(method, 0)).item() > 1e-3


def test_kl_matches_a_hand_computed_value():
    prior = torch.tensor([[0.5, 0.2], [0.5, 0.8]])
    method = MIMMO(TWO_STAGES, C, K, num_members=2, prior=prior)
    with torch.no_grad():
        method.depth_logits.copy_(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]))
    theta = method.depth_weights(AFTER_WARM_START)
    assert torch.allclose(theta, torch.tensor([[0.75, 0.5], [0.25, 0.5]]))
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
                + 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8))
    assert method.kl_divergence(theta).item() == pytest.approx(expected, rel=1e-6)


def spec_loss(method: MIMMO, inputs: torch.Tensor, targets: torch.Tensor, theta: torch.Tensor,
              num_train: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/method.md, "MIMMO: loss and mixture", from the network's parts: data term, KL and (1/B') sum θ NLL +
    (α/N) KL."""
    network = method.network
    rows, members = targets.shape
    features = network.backbone.features(inputs)
    per_exit = [adapter(h) for adapter, h in zip(network.exits, features[:-1], strict=True)]
    per_exit.append(network.backbone.pool(features[-1]))
    logits = torch.stack([network.backbone.head(f).view(rows, members, K) for f in per_exit], dim=1)
    nll = torch.zeros(rows, len(per_exit), members)
    for b in range(rows):
        for i in range(len(per_exit)):
            for m in range(members):
                nll[b, i, m] = -F.log_softmax(logits[b, i, m], dim=-1)[targets[b, m]]
    data = (theta[None] * nll).sum() / rows
    kl = (theta * torch.log(theta / method.prior)).sum()
    return data, kl, data + method.alpha / num_train * kl


def test_mimmo_loss_is_the_spec_formula():
    prior = torch.tensor([[0.1, 0.4, 0.25], [0.2, 0.3, 0.25], [0.3, 0.2, 0.25], [0.4, 0.1, 0.25]])
    method = build("mimmo", num_members=3, repetitions=2, input_repetition=0.25, alpha=7.0, prior=prior,
                   warm_start_epochs=2)
    theta = random_theta(method, 1)
    x, y = batch(6)
    torch.manual_seed(9)
    out = method.training_loss(x, y, AFTER_WARM_START)
    torch.manual_seed(9)
    inputs, targets = method.training_batch(x, y)
    with torch.no_grad():
        data, kl, expected = spec_loss(method, inputs, targets, theta, AFTER_WARM_START.num_train)
    assert kl.item() > 1e-2  # the KL term matters in this comparison
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    assert torch.allclose(out.logs["nll"], data, rtol=1e-5)
    assert torch.allclose(out.logs["kl"], kl, rtol=1e-5)
    out.loss.backward()
    assert method.depth_logits.grad is not None and method.depth_logits.grad.abs().sum() > 0


def test_authors_kl_convention_times_batch_is_the_paper_convention_at_alpha_b_n():
    """(1/B') mean NLL + a KL, times B', is mean NLL + (a B' N / N) KL: the same loss and the same gradients."""
    alpha, rows = 3.0, 6 * 2  # B' = batch 6 x R = 2
    losses, grads = [], []
    for convention, weight in (("authors", alpha), ("paper", alpha * rows * AFTER_WARM_START.num_train)):
        method = build("mimmo", num_members=3, repetitions=2, input_repetition=0.25, alpha=weight,
                       kl_convention=convention)
        random_theta(method, 2)
        torch.manual_seed(9)
        loss = method.training_loss(*batch(6), AFTER_WARM_START).loss
        loss = loss * rows if convention == "authors" else loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None]))
    assert method.kl_divergence(method.exit_weights()).item() > 1e-2  # the KL term matters here
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert grads[0].shape == grads[1].shape and grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_authors_kl_convention_data_term_is_divided_by_the_repeated_batch_once_more():
    method = build("mimmo", num_members=2, repetitions=2, alpha=0.0, kl_convention="authors")
    reference = build("mimmo", num_members=2, repetitions=2, alpha=0.0)
    random_theta(method, 3), random_theta(reference, 3)
    x, y = batch(5)
    torch.manual_seed(4)
    authors = method.training_loss(x, y, AFTER_WARM_START).loss
    torch.manual_seed(4)
    paper = reference.training_loss(x, y, AFTER_WARM_START).loss
    assert torch.allclose(authors * 10, paper, rtol=1e-6)  # B' = 5 x 2


@pytest.mark.parametrize("name", ["mimmo", "mimmo_gamma"])
def test_warm_start_and_mimmo_gamma_use_the_prior_and_do_not_train_theta(name):
    prior = torch.tensor([[0.1, 0.4], [0.2, 0.3], [0.3, 0.2], [0.4, 0.1]])
    options = {"warm_start_epochs": 3} if name == "mimmo" else {}
    method = build(name, num_members=2, prior=prior, **options)
    random_theta(method, 2)
    progress = Progress(epoch=2, num_epochs=10, fraction=0.2, num_train=50)
    assert method.uses_prior(progress)
    assert torch.equal(method.depth_weights(progress), prior)
    x, y = batch(6)
    torch.manual_seed(4)
    out = method.training_loss(x, y, progress)
    torch.manual_seed(4)
    inputs, targets = method.training_batch(x, y)
    with torch.no_grad():
        data, _, _ = spec_loss(method, inputs, targets, prior, progress.num_train)
    assert out.logs["kl"].item() == 0.0
    assert torch.allclose(out.loss, data, rtol=1e-5)  # θ = γ and no KL term
    out.loss.backward()
    grad = method.depth_logits.grad
    assert grad is None or not bool(grad.any())
    assert method.backbone.head.weight.grad is not None  # the rest of the network does train
    if name == "mimmo_gamma":
        with torch.no_grad():
            assert torch.equal(method.eval()(x).weights, prior)
        assert method.uses_prior(AFTER_WARM_START)
    else:
        assert not method.uses_prior(Progress(epoch=3, num_epochs=10, fraction=0.3, num_train=50))


def test_per_member_prior_is_accepted_and_a_vector_prior_is_shared():
    table = torch.tensor([[0.1, 0.7], [0.2, 0.1], [0.3, 0.1], [0.4, 0.1]])
    method = build("mimmo_gamma", num_members=2, prior=table.tolist())
    assert torch.equal(method.prior, table)
    vector = [0.1, 0.2, 0.3, 0.4]
    method = build("mimmo", num_members=3, prior=vector)
    assert torch.equal(method.prior, torch.tensor(vector)[:, None].expand(D, 3))
    assert torch.equal(make_prior(None, 4, 2), torch.full((4, 2), 0.25))


@pytest.mark.parametrize(("prior", "match"), [
    ([0.5, 0.5], r"prior must have shape.*got \(2,\)"),
    ([[0.25] * 3] * 4, r"prior must have shape.*got \(4, 3\)"),
    ([0.5, 0.5, 0.5, -0.5], r"> 0"),
    ([0.0, 0.5, 0.25, 0.25], r"> 0"),
    ([0.1, 0.1, 0.1, 0.1], r"sum to 1.*0\.4"),
    ([[0.25, 0.1], [0.25, 0.1], [0.25, 0.1], [0.25, 0.1]], r"sum to 1.*0\.4"),
])
def test_bad_priors_are_refused(prior, match):
    with pytest.raises(ValueError, match=match):
        build("mimmo", num_members=2, prior=prior)


def test_mimmo_options_are_validated():
    with pytest.raises(ValueError, match=r"alpha.*-1"):
        build("mimmo", alpha=-1.0)
    with pytest.raises(ValueError, match=r"warm_start_epochs.*-2"):
        build("mimmo", warm_start_epochs=-2)
    with pytest.raises(ValueError, match=r"kl_convention.*'yamle'"):
        build("mimmo", kl_convention="yamle")


# ------------------------------------------------------------------------------------------- reductions


def test_one_member_one_stage_mimmo_is_the_plain_network():
    torch.manual_seed(0)
    base = Base(ONE_STAGE, C, K)
    method = MIMMO(ONE_STAGE, C, K, num_members=1, repetitions=1, input_repetition=0.0)
    mapped = {f"network.{key}": value for key, value in base.state_dict().items()}
    missing, unexpected = method.load_state_dict(mapped, strict=False)
    assert set(missing) == {"depth_logits", "prior"} and not unexpected
    x, y = batch(6)
    base.eval()
    method.eval()
    with torch.no_grad():
        expected, got = base(x), method(x)
    assert got.logits.shape == expected.logits.shape == (6, 1, 1, K)
    assert torch.allclose(got.logits, expected.logits, atol=1e-6)
    assert torch.equal(got.weights, torch.ones(1, 1))
    assert torch.allclose(got.probs(), expected.probs(), atol=1e-6)
    base.train()
    method.train()
    loss = method.training_loss(x, y, AFTER_WARM_START)
    assert torch.allclose(loss.loss, base.training_loss(x, y, AFTER_WARM_START).loss, atol=1e-5)
    assert loss.logs["kl"].abs().item() < 1e-7


def test_mixture_prediction_is_the_spec_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 2, K, generator=generator) * 3
    weights = F.softmax(torch.randn(3, 2, generator=generator), dim=0)
    probs = Prediction(logits, weights).probs()
    expected = torch.zeros(5, K)
    for m in range(2):
        for i in range(3):
            expected += 0.5 * weights[i, m] * F.softmax(logits[:, i, m], dim=-1)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    zero_weight = weights.clone()
    zero_weight[:, 0] = torch.tensor([1.0, 0.0, 0.0])  # a zero weight switches its exit off exactly
    expected = 0.5 * F.softmax(logits[:, 0, 0], -1) + 0.5 * (zero_weight[:, 1, None, None]
                                                             * F.softmax(logits[:, :, 1], -1).transpose(0, 1)
                                                             ).sum(0)
    assert torch.allclose(Prediction(logits, zero_weight).probs(), expected, atol=1e-6)


def test_mimmo_prediction_mixes_its_exits_and_members():
    method = build("mimmo", num_members=3).eval()
    theta = random_theta(method, 3)
    x, _ = batch(4)
    with torch.no_grad():
        prediction = method(x)
        probs = method.predict_proba(x)
    expected = sum(theta[i, m] / 3 * F.softmax(prediction.logits[:, i, m], -1) for i in range(D) for m in range(3))
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-6)


def test_per_exit_heads_add_d_minus_one_heads():
    shared = build("mimmo", num_members=2)
    separate = build("mimmo", num_members=2, per_exit_heads=True).eval()
    assert shared.network.exit_heads is None
    assert len(separate.network.exit_heads) == D - 1
    features = shared.network.backbone.feature_dim
    extra = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert extra == (D - 1) * (features * 2 * K + 2 * K)
    x, _ = batch(3)
    with torch.no_grad():
        before = separate(x).logits
        separate.network.exit_heads[0].bias.add_(1.0)
        after = separate(x).logits
    assert before.shape == (3, D, 2, K)
    assert not torch.allclose(before[:, 0], after[:, 0])  # exit 1 uses its own head ...
    assert torch.equal(before[:, 1:], after[:, 1:])  # ... and only exit 1 does
    shared.eval()
    with torch.no_grad():
        before = shared(x).logits
        shared.backbone.head.bias.add_(1.0)
        after = shared(x).logits
    assert torch.allclose(after - before, torch.ones_like(before))  # the shared head feeds every exit


def test_theta_starts_at_a_non_uniform_prior_and_does_not_jump_after_the_warm_start():
    """theta's logits start at log gamma: theta = gamma before, during and right after the warm start."""
    prior = torch.tensor([[0.1, 0.4], [0.2, 0.3], [0.3, 0.2], [0.4, 0.1]])
    method = MIMMO(TINY, 3, 5, num_members=2, warm_start_epochs=2, prior=prior)
    during = Progress(epoch=1, num_epochs=10, fraction=0.15, num_train=100)
    after = Progress(epoch=2, num_epochs=10, fraction=0.2, num_train=100)
    torch.testing.assert_close(method.depth_weights(during), prior)
    torch.testing.assert_close(method.depth_weights(after), prior)
    torch.testing.assert_close(method.exit_weights(), prior)
    assert float(method.kl_divergence(method.depth_weights(after))) == pytest.approx(0.0, abs=1e-6)
    x = torch.randn(3, 3, 8, 8)
    method.eval()
    torch.testing.assert_close(method(x).weights, prior)  # predictions use gamma too
