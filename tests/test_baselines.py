"""The baselines (Ensemble, MC Dropout, DUN, EE, DataMUX, MixMo), the MLP backbone and the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from torch import nn

import mimmo
import mimmo.data
from mimmo.methods.base import Progress
from mimmo.methods.datamux import DataMUX
from mimmo.methods.dun import DUN
from mimmo.methods.early_exit import EarlyExit, exit_widths
from mimmo.methods.ensemble import Ensemble
from mimmo.methods.mc_dropout import AlwaysDropout, MCDropout
from mimmo.methods.mimmo import MIMMO
from mimmo.methods.mixmo import MixingDraw, MixMo, box_mask, loss_weights, mix_features
from mimmo.methods.registry import METHODS, build_method, method_options
from mimmo.methods.repetition import member_indices
from mimmo.models import MLP, MLPFactory, ResNetConfig, ResNetFactory

TINY = ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(4, 4, 4, 4), stem_channels=8))
SMALL_MLP = MLPFactory(hidden=(12, 10, 8), stem_features=12)
PROGRESS = Progress(epoch=10, num_epochs=20, fraction=0.5, num_train=100)
PAPER_ORDER = ["base", "ensemble", "batch_ensemble", "packed_ensemble", "mc_dropout", "dun", "early_exit", "mimo",
               "datamux", "mixmo", "mimmo_gamma", "mimmo"]
# Options that give every method a distinctive (D, M) so that a swapped axis cannot pass unnoticed.
OPTIONS = {"ensemble": {"num_members": 3}, "batch_ensemble": {"num_members": 3},
           "packed_ensemble": {"num_members": 3}, "mc_dropout": {"num_samples": 5}, "mimo": {"num_members": 3},
           "datamux": {"num_members": 3}, "mixmo": {"num_members": 3}, "mimmo": {"num_members": 3},
           "mimmo_gamma": {"num_members": 3}}


def expected_shape(name: str, num_stages: int) -> tuple[int, int]:
    """(D, M) of each method under OPTIONS."""
    depth = num_stages if name in {"dun", "early_exit", "mimmo", "mimmo_gamma"} else 1
    members = {"base": 1, "dun": 1, "early_exit": 1, "mc_dropout": 5}.get(name, 3)
    return depth, members


def streams(method: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as the loader delivers it: with S data streams, S independent shuffles."""
    if method.data_streams == 1:
        return x, y
    orders = [torch.randperm(len(y)) for _ in range(method.data_streams)]
    return torch.stack([x[o] for o in orders], dim=1), torch.stack([y[o] for o in orders], dim=1)


def image_batch(batch: int = 6, channels: int = 3, size: int = 8, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, size, size, generator=generator),
            torch.randint(classes, (batch,), generator=generator))


def flat_batch(batch: int = 6, features: int = 7, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, features, generator=generator),
            torch.randint(classes, (batch,), generator=generator))


# --------------------------------------------------------------------------------------------- registry
def test_registry_holds_every_method_in_the_papers_order():
    assert list(METHODS) == PAPER_ORDER
    for name in PAPER_ORDER:
        assert hasattr(mimmo.methods, METHODS[name].__name__)
        assert METHODS[name].name == name


CONFIGS = Path(mimmo.__file__).parent / "configs"


def method_config(name: str) -> dict:
    """configs/method/<name>.yaml with its interpolations resolved against the paper's train config."""
    root = OmegaConf.create({"method": yaml.safe_load((CONFIGS / "method" / f"{name}.yaml").read_text()),
                             "train": yaml.safe_load((CONFIGS / "train" / "paper.yaml").read_text())})
    return OmegaConf.to_container(root.method, resolve=True)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_every_method_has_a_config_that_builds(name):
    config = method_config(name)
    assert config.pop("name") == name
    assert set(config) <= set(method_options(name))
    method = build_method(name, TINY, 3, 5, config)
    if "num_members" in config:
        assert config["num_members"] == 2 and method.num_members == 2


def test_method_configs_carry_the_paper_defaults():
    dun = method_config("dun")
    assert dun["alpha"] == 1.0 and dun["warm_start_epochs"] == 5
    mixmo = method_config("mixmo")
    assert (mixmo["dirichlet_alpha"], mixmo["r"], mixmo["cutmix_probability"]) == (2.0, 3.0, 0.5)
    assert mixmo["decay_fraction"] == pytest.approx(1 / 12)
    assert method_config("mc_dropout") == {"name": "mc_dropout", "p": 0.15, "num_samples": 10}
    assert method_config("early_exit") == {"name": "early_exit", "gamma": 0.3, "alpha": 1.0}
    assert method_config("ensemble")["num_members"] == 2


# ----------------------------------------------------------------------- shapes on both backbones
@pytest.mark.parametrize("backbone", ["resnet", "mlp"])
@pytest.mark.parametrize("name", PAPER_ORDER)
def test_shapes_weights_and_a_training_step(name, backbone):
    torch.manual_seed(0)
    if backbone == "resnet":
        factory, (x, y), stages = TINY, image_batch(), 4
    else:
        factory, (x, y), stages = SMALL_MLP, flat_batch(), 3
    method = build_method(name, factory, x.shape[1], 5, OPTIONS.get(name))
    depth, members = expected_shape(name, stages)
    assert (method.num_exits, method.num_members, method.num_classes) == (depth, members, 5)

    method.eval()
    prediction = method(x)
    assert prediction.logits.shape == (len(x), depth, members, 5)
    assert prediction.weights.shape == (depth, members)
    assert bool((prediction.weights >= 0).all())
    torch.testing.assert_close(prediction.weights.sum(0), torch.ones(members))
    torch.testing.assert_close(prediction.probs().sum(-1), torch.ones(len(x)))

    method.train()
    inputs, targets = streams(method, x, y)
    output = method.training_loss(inputs, targets, PROGRESS)
    assert output.loss.dim() == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    trained = [p for p in method.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, "no parameter received a gradient"


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_a_backbone_without_stages_is_refused(name):
    class NoStages(nn.Module):
        def __init__(self, in_channels, num_outputs):
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(in_channels, 4))
            self.pool = nn.Identity()
            self.head = nn.Linear(4, num_outputs)
            self.stage_channels, self.feature_dim = (), 4

    with pytest.raises(TypeError, match="stages"):
        build_method(name, NoStages, 3, 5, OPTIONS.get(name))


# ----------------------------------------------------------------------------------------- MLP
def test_mlp_follows_the_backbone_protocol():
    mlp = MLP(7, 5, hidden=(12, 10, 8), stem_features=12)
    assert mlp.stage_channels == (12, 10, 8) and mlp.feature_dim == 8
    assert isinstance(mlp.head, nn.Linear) and mlp.head.out_features == 5
    x = torch.randn(4, 7)
    stage_outputs = mlp.features(x)
    assert [tuple(h.shape) for h in stage_outputs] == [(4, 12), (4, 10), (4, 8)]
    assert mimmo.models.backbone.LinearExitAdapter is type(mlp.exit_adapter(0))
    assert mlp.exit_adapter(1)(stage_outputs[1]).shape == (4, 8)
    assert mlp(x).shape == (4, 5)
    with pytest.raises(ValueError, match="hidden"):
        MLPFactory(hidden=())


# ------------------------------------------------------------------------------------- Ensemble
def test_ensemble_loss_is_the_sum_of_the_members_own_losses():
    torch.manual_seed(0)
    method = Ensemble(TINY, 3, 5, num_members=2).train()
    x, y = image_batch(batch=4)
    inputs = torch.stack([x, x.flip(0)], dim=1)
    targets = torch.stack([y, y.flip(0)], dim=1)
    expected = sum(-F.log_softmax(method.members[m](inputs[:, m]), -1)[torch.arange(4), targets[:, m]].mean()
                   for m in range(2))
    torch.testing.assert_close(method.training_loss(inputs, targets, PROGRESS).loss, expected)


def test_ensemble_members_are_independent():
    torch.manual_seed(0)
    method = Ensemble(TINY, 3, 5, num_members=3).train()
    assert method.data_streams == 3 and Ensemble.data_streams == 1
    stems = [m.stem[0].weight for m in method.members]
    assert not torch.equal(stems[0], stems[1]) and not torch.equal(stems[1], stems[2])

    x, y = image_batch(batch=4)
    inputs, targets = torch.stack([x, x, x], dim=1), torch.stack([y, y, y], dim=1)
    losses = method.member_losses(inputs, targets)
    losses[0].backward()
    for m, member in enumerate(method.members):
        grads = [p.grad for p in member.parameters()]
        if m == 0:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or not g.any() for g in grads)

    changed = inputs.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])  # only stream 1 differs
    with torch.no_grad():
        before, after = method.member_losses(inputs, targets), method.member_losses(changed, targets)
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]


def test_ensemble_refuses_a_batch_without_one_stream_per_member():
    method = Ensemble(TINY, 3, 5, num_members=2)
    x, y = image_batch(batch=4)
    with pytest.raises(ValueError, match="data stream"):
        method.training_loss(x, y, PROGRESS)
    with pytest.raises(ValueError, match="num_members"):
        Ensemble(TINY, 3, 5, num_members=0)


# ------------------------------------------------------------------------------------ MC Dropout
def test_mc_dropout_places_dropout_before_every_layer_but_the_stem_conv():
    method = MCDropout(TINY, 3, 5, p=0.15)
    backbone = method.backbone
    assert isinstance(backbone.stem[0], nn.Conv2d)  # the stem conv reads the raw image undropped
    layers = [m for m in backbone.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    wrapped = [m for m in backbone.modules()
               if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], AlwaysDropout)]
    assert len(wrapped) == len(layers) - 1
    assert all(isinstance(w[1], nn.Conv2d | nn.Linear) and w[0].p == 0.15 for w in wrapped)
    assert isinstance(backbone.head, nn.Sequential) and isinstance(backbone.head[1], nn.Linear)


@pytest.mark.parametrize("p", [0.15, 0.5])
def test_always_dropout_keeps_each_element_with_probability_one_minus_p(p):
    """Inverted dropout at train and test: kept elements are scaled by 1/(1-p), dropped ones are 0, the
    fraction dropped is p, and the gradient is the same mask."""
    torch.manual_seed(0)
    x = torch.rand(200, 50, 10, requires_grad=True) + 0.5  # no zeros in the input
    drop = AlwaysDropout(p).eval()
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    n = x.numel()
    assert abs((~kept).float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5  # within 4 standard errors
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.float() / (1 - p))
    assert not torch.equal(kept, drop(x) != 0)  # a fresh mask per call
    assert torch.equal(AlwaysDropout(0.0)(x), x)


def test_mc_dropout_is_stochastic_at_test():
    torch.manual_seed(0)
    method = MCDropout(TINY, 3, 5, p=0.3, num_samples=4).eval()
    x, _ = image_batch(batch=3)
    first, second = method(x).logits, method(x).logits
    assert first.shape == (3, 1, 4, 5)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first[:, 0, 0], first[:, 0, 1])
    still = MCDropout(TINY, 3, 5, p=0.0, num_samples=3).eval()
    logits = still(x).logits
    torch.testing.assert_close(logits[:, 0, 0], logits[:, 0, 2])  # p = 0: every sample is the same pass


def test_mc_dropout_samples_are_successive_passes():
    """Sample s of image b is the s-th stochastic pass of the backbone over the batch (no mixing of images)."""
    method = MCDropout(TINY, 3, 5, p=0.2, num_samples=3).eval()
    x, _ = image_batch(batch=2)
    torch.manual_seed(5)
    logits = method(x).logits
    torch.manual_seed(5)
    direct = torch.stack([method.backbone(x) for _ in range(3)])  # (S, B, K)
    torch.testing.assert_close(logits[:, 0], direct.transpose(0, 1))


def test_mc_dropout_training_loss_is_one_stochastic_pass():
    method = MCDropout(TINY, 3, 5).train()
    x, y = image_batch()
    torch.manual_seed(1)
    loss = method.training_loss(x, y, PROGRESS).loss
    torch.manual_seed(1)
    logits = method.backbone(x)
    torch.testing.assert_close(loss, -F.log_softmax(logits, -1)[torch.arange(len(y)), y].mean())


# ------------------------------------------------------------------------------------------- DUN
def test_dun_is_mimmo_with_one_member():
    torch.manual_seed(0)
    dun = DUN(TINY, 3, 5, alpha=2.0, warm_start_epochs=1)
    mimmo_one = MIMMO(TINY, 3, 5, num_members=1, repetitions=1, input_repetition=0.0, alpha=2.0,
                      warm_start_epochs=1)
    mimmo_one.load_state_dict(dun.state_dict())
    with torch.no_grad():
        dun.depth_logits.copy_(torch.tensor([[0.3], [-0.2], [0.1], [0.5]]))
        mimmo_one.depth_logits.copy_(dun.depth_logits)
    x, y = image_batch()
    dun.eval(), mimmo_one.eval()
    a, b = dun(x), mimmo_one(x)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.weights, b.weights)
    assert a.logits.shape == (6, 4, 1, 5)
    dun.train(), mimmo_one.train()
    for progress in (Progress(0, 10, 0.0, 100), PROGRESS):  # in and after the warm start
        torch.manual_seed(3)
        loss_dun = dun.training_loss(x, y, progress)
        torch.manual_seed(3)
        loss_mimmo = mimmo_one.training_loss(x, y, progress)
        torch.testing.assert_close(loss_dun.loss, loss_mimmo.loss)
    assert (dun.num_members, dun.repetitions, dun.input_repetition) == (1, 1, 0.0)
    assert dun.member_input_weights() is None


def test_dun_loss_by_hand():
    """(1/B) sum_b sum_i theta_i NLL(b, i) + (alpha/N) KL(theta || uniform)."""
    torch.manual_seed(0)
    dun = DUN(TINY, 3, 5, alpha=3.0).train()
    with torch.no_grad():
        dun.depth_logits.copy_(torch.tensor([[1.0], [0.0], [-1.0], [0.5]]))
    x, y = image_batch()
    logits = dun(x).logits[:, :, 0]  # train mode: the batch's BN statistics, as in training_loss
    theta = torch.softmax(dun.depth_logits[:, 0], 0)
    nll = torch.stack([-F.log_softmax(logits[:, i], -1)[torch.arange(6), y].mean() for i in range(4)])
    kl = (theta * torch.log(theta * 4)).sum()
    expected = (theta * nll).sum() + 3.0 / PROGRESS.num_train * kl
    torch.testing.assert_close(dun.training_loss(x, y, PROGRESS).loss, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- EE
def test_early_exit_widths_of_the_paper():
    assert exit_widths(4, 512, 0.3) == [758, 665, 583]
    assert exit_widths(4, 512, 0.0) == [512, 512, 512]
    method = EarlyExit(ResNetFactory(), 3, 100)
    assert [(e[2].in_features, e[2].out_features, e[4].out_features) for e in method.exits] == [
        (64, 758, 100), (128, 665, 100), (256, 583, 100)]
    assert isinstance(method.exits[0][0], nn.AdaptiveAvgPool2d)


def test_early_exit_on_flat_stages_has_no_pooling():
    method = EarlyExit(SMALL_MLP, 7, 5, gamma=0.3)
    assert [type(layer) for layer in method.exits[0]] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [e[0].in_features for e in method.exits] == [12, 10]
    assert [e[0].out_features for e in method.exits] == exit_widths(3, 8, 0.3)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_early_exit_loss_by_hand(alpha):
    torch.manual_seed(0)
    method = EarlyExit(TINY, 3, 5, alpha=alpha).train()
    x, y = image_batch()
    prediction = method(x)
    torch.testing.assert_close(prediction.weights, torch.full((4, 1), 0.25))
    ce = [-F.log_softmax(prediction.logits[:, i, 0], -1)[torch.arange(6), y].mean() for i in range(4)]
    expected = alpha * (ce[0] + ce[1] + ce[2]) + ce[3]
    torch.testing.assert_close(method.training_loss(x, y, PROGRESS).loss, expected)


# -------------------------------------------------------------------------------------- DataMUX
def test_datamux_coders_are_per_member():
    torch.manual_seed(0)
    method = DataMUX(TINY, 3, 5, num_members=3).eval()
    weights = [coder[0].weight for coder in method.coders]
    assert len({w.data_ptr() for w in weights}) == 3
    assert not torch.equal(weights[0], weights[1])
    assert [coder[0].bias for coder in method.coders] == [None] * 3
    assert method.backbone.stem[0].in_channels == 9
    inputs = torch.randn(2, 9, 8, 8)
    changed = inputs.clone()
    changed[:, 3:6] += 1.0  # member 1's input only
    codes, changed_codes = method.encode(inputs), method.encode(changed)
    torch.testing.assert_close(codes[:, :3], changed_codes[:, :3])
    torch.testing.assert_close(codes[:, 6:], changed_codes[:, 6:])
    assert not torch.allclose(codes[:, 3:6], changed_codes[:, 3:6])


def test_datamux_heads_are_separate_and_nothing_is_unused():
    torch.manual_seed(0)
    method = DataMUX(TINY, 3, 5, num_members=3).train()
    heads = method.heads()
    assert [(h.in_features, h.out_features) for h in heads] == [(16, 5)] * 3
    assert len({h.weight.data_ptr() for h in heads}) == 3
    x, y = image_batch()
    method.training_loss(x, y, PROGRESS).loss.backward()
    unused = [n for n, p in method.named_parameters() if p.grad is None]
    assert unused == []
    assert [tuple(w.shape) for w in method.member_output_weights()] == [(5, 16)] * 3


def test_datamux_loss_by_hand():
    torch.manual_seed(0)
    method = DataMUX(TINY, 3, 5, num_members=2, repetitions=2, input_repetition=0.25).train()
    x, y = image_batch()
    torch.manual_seed(7)
    loss = method.training_loss(x, y, PROGRESS).loss
    torch.manual_seed(7)
    index = member_indices(6, 2, 2, 0.25)  # (12, 2)
    codes = torch.cat([method.coders[m](x[index[:, m]]) for m in range(2)], dim=1)
    feature = method.backbone.pool(method.backbone.features(codes)[-1])
    heads = [method.backbone.head, method.extra_heads[0]]
    expected = sum(-F.log_softmax(heads[m](feature), -1)[torch.arange(12), y[index[:, m]]].mean()
                   for m in range(2))
    torch.testing.assert_close(loss, expected)


def test_datamux_on_flat_inputs_uses_linear_coders():
    method = DataMUX(SMALL_MLP, 7, 5, num_members=2)
    assert [type(layer) for layer in method.coders[0]] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert method.coders[0][0].in_features == 7 and method.backbone.stem[0].in_features == 14


# ---------------------------------------------------------------------------------------- MixMo
@pytest.mark.parametrize("num_members", [2, 3, 5])
def test_mixmo_loss_weights_sum_to_m(num_members):
    kappa = torch.distributions.Dirichlet(torch.full((num_members,), 2.0)).sample((50,))
    weights = loss_weights(kappa, 3.0)
    torch.testing.assert_close(weights.sum(1), torch.full((50,), float(num_members)))
    torch.testing.assert_close(loss_weights(torch.full((1, num_members), 1 / num_members), 3.0),
                               torch.ones(1, num_members))


def test_mixmo_loss_weights_match_the_closed_form_for_two_members():
    for k, r in [(0.1, 3.0), (0.5, 3.0), (0.83, 3.0), (0.3, 0.5)]:
        closed = 2 * k ** (1 / r) / (k ** (1 / r) + (1 - k) ** (1 / r))
        weights = loss_weights(torch.tensor([[k, 1 - k]]), r)
        assert weights[0, 0].item() == pytest.approx(closed, rel=1e-6)
        assert weights[0, 1].item() == pytest.approx(2 - closed, rel=1e-6)


def test_mixmo_mask_is_binary_and_shared_across_channels():
    torch.manual_seed(0)
    method = MixMo(TINY, 3, 5, num_members=2, cutmix_probability=1.0).train()
    features = method.encode(torch.randn(20, 2, 3, 8, 8))  # (B, M, 8, 8, 8)
    draw = method.draw_mixing(features, PROGRESS)
    assert bool(draw.cutmix) and draw.mask.shape == (20, 1, 8, 8)
    assert set(draw.mask.unique().tolist()) <= {0.0, 1.0}
    mixed = mix_features(features, draw)
    rows = torch.arange(20)
    chosen, other = features[rows, draw.member], features[rows, 1 - draw.member]
    inside = draw.mask.expand_as(mixed).bool()  # the same pixels on every channel
    torch.testing.assert_close(mixed[inside], 2 * chosen[inside])
    torch.testing.assert_close(mixed[~inside], 2 * other[~inside])


def test_box_mask_covers_about_kappa():
    torch.manual_seed(0)
    area = torch.tensor([0.0, 0.25, 0.5, 1.0] * 25)
    mask = box_mask(area, (4, 16, 16))
    covered = mask.mean(dim=(1, 2, 3))
    assert bool((covered <= area + 1e-6).all())  # floors and clamps only shrink the box
    assert covered[area == 0].max() == 0
    assert bool((covered[area == 1.0] > 0.2).all())
    flat = box_mask(torch.tensor([0.5, 1.0]), (10,))
    assert flat.shape == (2, 10) and flat[0].sum() <= 5


def test_mixmo_linear_mixing_and_test_time_sum():
    torch.manual_seed(0)
    method = MixMo(TINY, 3, 5, num_members=3, cutmix_probability=0.0)
    features = method.encode(torch.randn(4, 3, 3, 8, 8))
    draw = method.draw_mixing(features, PROGRESS)
    assert not bool(draw.cutmix)
    torch.testing.assert_close(draw.kappa.sum(1), torch.ones(4))
    torch.testing.assert_close(mix_features(features, draw),
                               3 * sum(draw.kappa[:, m, None, None, None] * features[:, m] for m in range(3)))
    method.eval()
    x, _ = image_batch(batch=2)
    expected = method.decode(sum(encoder(x) for encoder in method.encoders()))
    torch.testing.assert_close(method(x).logits[:, 0], expected)


def test_mixmo_encoders_are_separate_first_layers_and_match_mimo_in_size():
    torch.manual_seed(0)
    method = MixMo(TINY, 3, 5, num_members=3)
    encoders = method.encoders()
    assert encoders[0] is method.backbone.stem[0]
    assert all(isinstance(e, nn.Conv2d) and e.in_channels == 3 for e in encoders)
    assert not torch.equal(encoders[0].weight, encoders[1].weight)
    assert method.backbone.head.out_features == 15
    mimo = build_method("mimo", TINY, 3, 5, {"num_members": 3})
    assert sum(p.numel() for p in method.parameters()) == sum(p.numel() for p in mimo.parameters())
    assert [tuple(w.shape) for w in method.member_input_weights()] == [(8, 3, 3, 3)] * 3


def test_mixmo_loss_by_hand():
    torch.manual_seed(0)
    method = MixMo(TINY, 3, 5, num_members=2, r=3.0).train()
    x, y = image_batch(batch=4)
    member_inputs = torch.stack([x, x.flip(0)], dim=1)
    targets = torch.stack([y, y.flip(0)], dim=1)
    features = method.encode(member_inputs)
    kappa = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    mask = torch.zeros(4, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1.0
    member = torch.tensor([0, 1, 1, 0])
    for draw in (MixingDraw(kappa), MixingDraw(kappa, member, mask)):
        if draw.mask is None:
            share = kappa[:, :, None, None, None]
            mixed = 2 * (share[:, 0] * features[:, 0] + share[:, 1] * features[:, 1])
        else:
            rows = torch.arange(4)
            mixed = 2 * (mask * features[rows, member] + (1 - mask) * features[rows, 1 - member])
        logits = method.decode(mixed)
        expected = 0.0
        for m in range(2):
            k = kappa[:, m]
            weight = 2 * k ** (1 / 3) / (k ** (1 / 3) + (1 - k) ** (1 / 3))
            nll = -F.log_softmax(logits[:, m], -1)[torch.arange(4), targets[:, m]]
            expected = expected + (weight * nll).mean()
        torch.testing.assert_close(method.mixed_loss(features, targets, draw), expected)


def test_mixmo_cutmix_probability_schedule():
    method = MixMo(TINY, 3, 5)

    def at(fraction):
        return float(method.cutmix_probability_at(Progress(0, 12, fraction, 100)))

    assert at(0.0) == 0.5 and at(10.9 / 12) == 0.5 and at(11 / 12) == pytest.approx(0.5)
    assert at(11.5 / 12) == pytest.approx(0.25)
    assert at(1.0) == 0.0
    assert float(MixMo(TINY, 3, 5, decay_fraction=0.0).cutmix_probability_at(Progress(0, 1, 0.99, 1))) == 0.5
    # progress.fraction as a 0-dim tensor (the graphed training step): the same schedule
    assert float(method.cutmix_probability_at(Progress(0, 12, torch.tensor(11.5 / 12), 100))) == pytest.approx(0.25)


def test_mixmo_training_uses_no_input_repetition_and_flat_features():
    assert MixMo(TINY, 3, 5).input_repetition == 0.0
    torch.manual_seed(0)
    method = MixMo(SMALL_MLP, 7, 5, num_members=2, cutmix_probability=1.0).train()
    features = method.encode(torch.randn(6, 2, 7))
    draw = method.draw_mixing(features, PROGRESS)
    assert draw.mask.shape == (6, 12)


# ---------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize(("name", "options", "match"), [
    ("mixmo", {"r": 0.0}, "temperature"),
    ("mixmo", {"r": -1.0}, "temperature"),
    ("mixmo", {"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
    ("mixmo", {"cutmix_probability": 1.5}, "cutmix_probability"),
    ("mixmo", {"decay_fraction": -0.1}, "decay_fraction"),
    ("mixmo", {"num_members": 0}, "num_members"),
    ("mc_dropout", {"p": 1.0}, "dropout rate"),
    ("mc_dropout", {"p": -0.1}, "dropout rate"),
    ("mc_dropout", {"num_samples": 0}, "num_samples"),
    ("early_exit", {"gamma": -0.1}, "gamma"),
    ("early_exit", {"alpha": -1.0}, "alpha"),
    ("dun", {"alpha": -1.0}, "alpha"),
    ("dun", {"warm_start_epochs": -1}, "warm_start_epochs"),
    ("datamux", {"input_repetition": 2.0}, "input_repetition"),
    ("datamux", {"repetitions": 0}, "repetitions"),
    ("ensemble", {"num_members": 0}, "num_members"),
    ("batch_ensemble", {"num_members": 0}, "num_members"),
    ("batch_ensemble", {"fast_weight_init": "ones"}, r"fast_weight_init must be one of \('normal', 'random_sign'\)"),
    ("packed_ensemble", {"alpha": 0}, r"alpha \(width factor\) must be a number > 0, got 0"),
    ("packed_ensemble", {"gamma": 1.5}, r"gamma \(subgroups per member\) must be an integer >= 1, got 1.5"),
    ("packed_ensemble", {"num_members": 0}, "num_members"),
    ("dun", {"num_members": 2}, "no option"),
])
def test_bad_options_are_refused(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_method(name, TINY, 3, 5, options)


# ------------------------------------------------------------------ a short run on real data
@pytest.fixture(scope="module")
def real_batch():
    splits = mimmo.data.load_embedded(seed=0)
    normalizer = mimmo.data.Normalizer.fit(splits.train.images)
    images = normalizer(splits.train.images[:48])
    return images, splits.train.labels[:48], splits.num_classes


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_a_short_training_run_lowers_the_loss(name, real_batch):
    images, labels, num_classes = real_batch
    torch.manual_seed(0)
    options = {"num_members": 2} if "num_members" in method_options(name) else None
    method = build_method(name, TINY, 1, num_classes, options).train()
    optimiser = torch.optim.Adam(method.parameters(), lr=0.01)
    progress = Progress(epoch=0, num_epochs=1, fraction=0.0, num_train=len(labels))
    losses = []
    for _ in range(15):
        x, y = streams(method, images, labels)
        loss = method.training_loss(x, y, progress).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses  # multi-input methods learn slower at first


def test_mixmo_draws_cutmix_with_its_probability():
    """The per-batch choice is a tensor (graph-safe); its law is the schedule's Bernoulli(p)."""
    torch.manual_seed(0)
    method = MixMo(TINY, 3, 5, num_members=2, cutmix_probability=0.5).train()
    features = method.encode(torch.randn(4, 2, 3, 8, 8))
    draws = [method.draw_mixing(features, PROGRESS) for _ in range(2000)]
    cutmix = torch.stack([draw.cutmix for draw in draws]).float()
    assert float(cutmix.mean()) == pytest.approx(0.5, abs=0.04)
    linear = [draw for draw in draws if not bool(draw.cutmix)]
    # linear draws are never flipped: their kappa is the Dirichlet draw (mean 1/2 per member, no bias)
    assert float(torch.cat([draw.kappa for draw in linear]).mean(0)[0]) == pytest.approx(0.5, abs=0.03)
    late = Progress(0, 12, 1.0, 100)  # p has decayed to 0 at the end of training
    assert not any(bool(method.draw_mixing(features, late).cutmix) for _ in range(200))
