"""BatchEnsemble and Packed-Ensembles: their reductions to known networks, their layers and their cost by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimmo.evaluation.cost import count_cost
from mimmo.methods.base import Base, Progress
from mimmo.methods.batch_ensemble import BatchEnsemble
from mimmo.methods.ensemble import Ensemble
from mimmo.methods.packed_ensemble import PackedEnsemble
from mimmo.models import MLPFactory, ResNetConfig, ResNetFactory, count_parameters
from mimmo.models.ensemble_layers import GroupedLinear, RankOneLayer

PROGRESS = Progress(epoch=0, num_epochs=1, fraction=0.0, num_train=100)


def tiny_resnet(planes: int, stem: int) -> ResNetFactory:
    return ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(planes,) * 4, stem_channels=stem))


# ------------------------------------------------------------------------------------------- BatchEnsemble
def set_fast_weights_to_one(method: BatchEnsemble, base: Base) -> None:
    """r = s = 1 everywhere, every member's bias the shared network's."""
    base_biases = [m.bias for m in base.backbone.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    layers = [m for m in method.backbone.modules() if isinstance(m, RankOneLayer)]
    assert len(layers) == len(base_biases)
    with torch.no_grad():
        for layer, bias in zip(layers, base_biases, strict=True):
            layer.r.fill_(1.0)
            layer.s.fill_(1.0)
            assert (layer.bias is None) == (bias is None)
            if bias is not None:
                layer.bias.copy_(bias.expand_as(layer.bias))


@pytest.mark.parametrize("factory", [tiny_resnet(4, 8), MLPFactory(hidden=(6, 5), stem_features=6)],
                         ids=["resnet", "mlp"])
def test_batch_ensemble_with_all_fast_weights_one_is_the_shared_network(factory):
    shape = (3, 8, 8) if isinstance(factory, ResNetFactory) else (7,)
    torch.manual_seed(0)
    base = Base(factory, shape[0], 5)
    torch.manual_seed(0)
    method = BatchEnsemble(factory, shape[0], 5, num_members=3)  # the same shared weights: built first
    fast = {f"{name}.{p}" for name, m in method.backbone.named_modules() if isinstance(m, RankOneLayer)
            for p in ("r", "s", "bias")}
    shared = {k.replace(".layer.", "."): v for k, v in method.backbone.state_dict().items() if k not in fast}
    base_state = base.backbone.state_dict()
    assert set(base_state) - set(shared) == {"head.bias"}  # the only biased layer: its bias is per member now
    for key, value in shared.items():
        torch.testing.assert_close(value, base_state[key], msg=key)
    set_fast_weights_to_one(method, base)
    x, y = torch.randn(4, *shape), torch.randint(0, 5, (4,))
    logits = method.eval()(x).logits
    assert logits.shape == (4, 1, 3, 5)
    for m in range(3):
        torch.testing.assert_close(logits[:, 0, m], base.eval()(x).logits[:, 0, 0])
    # In training the batch repeated M times has the same BatchNorm statistics: the loss is M times Base's.
    loss = method.train().training_loss(x, y, PROGRESS).loss
    torch.testing.assert_close(loss, 3 * base.train().training_loss(x, y, PROGRESS).loss)


def test_batch_ensemble_members_differ_and_each_member_is_its_rank_one_network():
    """Member m of a layer computes W(x * r_m) * s_m + b_m on the m-th copy of the batch."""
    torch.manual_seed(0)
    layer = RankOneLayer(nn.Linear(4, 3), num_members=2)
    x = torch.randn(5, 4)
    y = layer(torch.cat([x, x]))
    for m in range(2):
        expected = (x * layer.r[m]) @ layer.layer.weight.T * layer.s[m] + layer.bias[m]
        torch.testing.assert_close(y[5 * m:5 * (m + 1)], expected)
    assert not torch.allclose(y[:5], y[5:])
    conv = RankOneLayer(nn.Conv2d(2, 3, 3, padding=1, bias=False), num_members=2)
    images = torch.randn(2, 2, 4, 4)
    out = conv(images)
    expected = nn.functional.conv2d(images[1:] * conv.r[1][:, None, None], conv.layer.weight, padding=1)
    torch.testing.assert_close(out[1:], expected * conv.s[1][:, None, None])
    with pytest.raises(ValueError, match="3 rows is not a multiple of M = 2"):
        layer(torch.randn(3, 4))


def test_fast_weight_initialisations():
    torch.manual_seed(0)
    normal = RankOneLayer(nn.Linear(400, 300), 4, "normal")
    assert float(normal.r.detach().mean()) == pytest.approx(1.0, abs=0.03)
    assert float(normal.r.detach().std()) == pytest.approx(0.5, abs=0.03)
    signs = RankOneLayer(nn.Linear(400, 300), 4, "random_sign")
    assert set(signs.s.unique().tolist()) == {-1.0, 1.0}
    assert float(signs.s.detach().mean()) == pytest.approx(0.0, abs=0.05)


def test_batch_ensemble_wraps_every_conv_and_linear():
    method = BatchEnsemble(tiny_resnet(4, 8), 3, 5, num_members=2)
    plain = [m for m in method.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    wrapped = [m.layer for m in method.modules() if isinstance(m, RankOneLayer)]
    assert len(plain) == len(wrapped) == 1 + 4 * 4 + 1  # stem, 4 blocks of 3 convs + a shortcut, head
    assert all(a is b for a, b in zip(plain, wrapped, strict=True)) and all(m.bias is None for m in plain)


# ---------------------------------------------------------------------------------------- Packed-Ensembles
def leaves_of(method: nn.Module) -> list[nn.Module]:
    return [m for m in method.backbone.modules() if not list(m.children())]


def copy_members_in(packed: PackedEnsemble, members: list[nn.Module]) -> None:
    """Member m's weights and BN statistics into the m-th block of every packed layer (dimension 0)."""
    packed_leaves = leaves_of(packed)
    for member in members:
        assert [type(a) for a in leaves_of(member)] == [nn.Linear if isinstance(b, GroupedLinear) else type(b)
                                                        for b in packed_leaves]
    with torch.no_grad():
        for index, target in enumerate(packed_leaves):
            tensors = list(target.named_parameters(recurse=False)) + list(target.named_buffers(recurse=False))
            for name, tensor in tensors:
                if tensor.dim() == 0:
                    continue
                for m, member in enumerate(members):
                    source = getattr(leaves_of(member)[index], name)
                    rows = source.shape[0]
                    assert tensor[m * rows:(m + 1) * rows].shape == source.shape, (index, name)
                    tensor[m * rows:(m + 1) * rows] = source


@pytest.mark.parametrize(("alpha", "member_factory", "packed_factory", "shape"), [
    (1.0, tiny_resnet(2, 4), tiny_resnet(4, 8), (3, 8, 8)),  # alpha = 1: members half as wide
    (2.0, tiny_resnet(4, 8), tiny_resnet(4, 8), (3, 8, 8)),  # alpha = M: members as wide (a Deep Ensemble)
    (1.0, MLPFactory(hidden=(3, 2), stem_features=3), MLPFactory(hidden=(6, 4), stem_features=6), (7,)),
], ids=["resnet-alpha1", "resnet-alphaM", "mlp-alpha1"])
def test_packed_ensemble_with_gamma_one_is_m_independent_networks(alpha, member_factory, packed_factory, shape):
    torch.manual_seed(0)
    packed = PackedEnsemble(packed_factory, shape[0], 5, num_members=2, alpha=alpha, gamma=1)
    members = [Base(member_factory, shape[0], 5) for _ in range(2)]
    for member in members:  # BN statistics away from their defaults, so that copying them is tested too
        member.train()(torch.randn(6, *shape))
    copy_members_in(packed, members)
    assert count_parameters(packed) == sum(count_parameters(m) for m in members)
    x, y = torch.randn(4, *shape), torch.randint(0, 5, (4,))
    for mode in ("eval", "train"):  # BatchNorm per channel: batch statistics per member too
        logits = getattr(packed, mode)()(x).logits
        assert logits.shape == (4, 1, 2, 5)
        for m, member in enumerate(members):
            torch.testing.assert_close(logits[:, 0, m], getattr(member, mode)()(x).logits[:, 0, 0],
                                       rtol=1e-4, atol=1e-5)
    loss = packed.train().training_loss(x, y, PROGRESS).loss
    torch.testing.assert_close(loss, sum(m.train().training_loss(x, y, PROGRESS).loss for m in members),
                               rtol=1e-4, atol=1e-5)


def test_packed_ensemble_layers_are_grouped_per_member_and_subgroup():
    method = PackedEnsemble(tiny_resnet(4, 8), 3, 5, num_members=2, alpha=2.0, gamma=2)
    convs = [m for m in method.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert (convs[0].in_channels, convs[0].out_channels, convs[0].groups) == (3, 16, 1)  # the stem reads the image
    assert all(conv.groups == 4 for conv in convs[1:])
    first_block = convs[1]  # conv1x1 16 -> inner 2p = 8, widened to 16
    assert (first_block.in_channels, first_block.out_channels) == (16, 16)
    head = method.backbone.head
    assert isinstance(head, GroupedLinear) and (head.in_features, head.out_features, head.groups) == (32, 10, 2)
    # Rounding: alpha * C is rounded up to a multiple of M * gamma.
    odd = PackedEnsemble(tiny_resnet(3, 5), 3, 5, num_members=2, alpha=1.0, gamma=2)
    assert [m.out_channels for m in odd.backbone.modules() if isinstance(m, nn.Conv2d)][:2] == [8, 8]  # 5, 6 -> 8


def test_grouped_linear_is_a_block_diagonal_linear():
    torch.manual_seed(0)
    layer = GroupedLinear(6, 4, groups=2)
    x = torch.randn(3, 6)
    dense = torch.zeros(4, 6)
    dense[:2, :3], dense[2:, 3:] = layer.weight[:2], layer.weight[2:]
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
    with pytest.raises(ValueError, match=r"in_features \(5\) and out_features \(4\) must be multiples of groups"):
        GroupedLinear(5, 4, groups=2)


def test_packing_refuses_layers_it_cannot_widen():
    class WithLayerNorm(nn.Module):
        def __init__(self, in_channels: int, num_outputs: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(in_channels, 4), nn.LayerNorm(4))
            self.stages = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])
            self.pool = nn.Identity()
            self.head = nn.Linear(4, num_outputs)
            self.stage_channels, self.feature_dim = (4,), 4

    with pytest.raises(NotImplementedError, match="LayerNorm holds per-channel parameters"):
        PackedEnsemble(WithLayerNorm, 3, 5)


# ----------------------------------------------------------------------------------------- cost, by hand
# The MLP stem Linear(6 -> 4) + BN + ReLU, two stages Linear(4 -> 4) + BN + ReLU, head Linear(4 -> 3) with bias;
# K = 3, M = 2 (docs/method.md, "The paper's cost convention").
HAND_MLP = MLPFactory(hidden=(4, 4), stem_features=4)


def test_base_mlp_cost_by_hand():
    cost = count_cost(Base(HAND_MLP, 6, 3), (6,))
    # stem 24 + BN 8 + ReLU 4; two stages of 16 + 8 + 4; head 12 + 3 bias; softmax 3
    assert cost.flops == 36 + 2 * 28 + 15 + 3 == 110
    assert cost.params == 24 + 8 + 2 * (16 + 8) + 15 == 95


def test_batch_ensemble_cost_by_hand():
    cost = count_cost(BatchEnsemble(HAND_MLP, 6, 3, num_members=2), (6,))
    # Two rows (the input repeated per member), each: the shared layers without the head's bias (107 - 3), the
    # fast weights r and s of every layer (6+4, 4+4, 4+4, 4+3) and the member bias (3); softmax 2 x 3.
    assert cost.flops == 2 * (104 + 33 + 3) + 6 == 286
    # shared weights 24 + 16 + 16 + 12, BN 3 x 8, fast weights 2 x 33, member biases 2 x 3
    assert cost.params == 68 + 24 + 66 + 6 == 164


def test_packed_ensemble_cost_by_hand():
    cost = count_cost(PackedEnsemble(HAND_MLP, 6, 3, num_members=2, alpha=2.0, gamma=2), (6,))
    # Widths 2 x 4 = 8. Stem Linear(6 -> 8) 48 + BN 16 + ReLU 8. Each stage: 4 groups of Linear(2 -> 2) = 16,
    # BN 16, ReLU 8. Head: 2 groups of Linear(4 -> 3) = 24 + 6 bias. Softmax 2 x 3.
    assert cost.flops == 72 + 2 * 40 + 30 + 6 == 188
    # stem 48 + BN 16; stages 2 x (16 + 16); head 24 + 6
    assert cost.params == 64 + 64 + 30 == 158


@pytest.mark.parametrize("num_members", [2, 4])
def test_packed_ensemble_at_alpha_m_costs_exactly_the_deep_ensemble_on_the_papers_resnet(num_members):
    ensemble = count_cost(Ensemble(ResNetFactory(), 3, 100, num_members=num_members), (3, 32, 32))
    packed = count_cost(PackedEnsemble(ResNetFactory(), 3, 100, num_members=num_members, alpha=num_members,
                                       gamma=1), (3, 32, 32))
    assert packed == ensemble
    assert ensemble.params == num_members * 1_756_340
