"""The backbone registry: every backbone under every method, its parameter check values, its cost, its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mimmo.cli import main
from mimmo.config import compose
from mimmo.evaluation.cost import count_cost
from mimmo.methods.registry import METHODS, build_method, display_name, method_options
from mimmo.models import (
    BACKBONES,
    MLPFactory,
    ResNet18Factory,
    ResNetFactory,
    WideResNetFactory,
    backbone_input_shape,
    build_backbone_factory,
    count_parameters,
)
from mimmo.models.resnet import ResNetConfig

MODEL_CONFIGS = Path(__file__).parents[1] / "src" / "mimmo" / "configs" / "model"
# Tiny versions of every registered backbone, and the number of stages (= exits D of MIMMO, DUN, EE).
TINY_BACKBONES = {
    "resnet": (ResNetFactory(ResNetConfig(layers=(1, 1, 1, 1), planes=(2, 2, 2, 2), stem_channels=2)), 4),
    "wrn": (WideResNetFactory(depth=10, widen=0.25), 3),
    "resnet18": (ResNet18Factory(layers=(1, 1, 1, 1), width=1 / 32), 4),
    "mlp": (MLPFactory(hidden=(4, 4, 4), stem_features=4), 3),
}
DATA_SHAPE = (3, 16, 16)


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 36_479_194), (100, 36_536_884)])
def test_wrn_28_10_has_the_published_parameter_count(num_classes, expected):
    method = build_method("base", build_backbone_factory({"name": "wrn", "depth": 28, "widen": 10}), 3, num_classes)
    assert count_parameters(method) == expected


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 11_173_962), (100, 11_220_132)])
def test_cifar_resnet18_has_the_published_parameter_count(num_classes, expected):
    method = build_method("base", build_backbone_factory({"name": "resnet18"}), 3, num_classes)
    assert count_parameters(method) == expected


def test_every_registered_backbone_is_tested_and_has_a_config():
    assert set(TINY_BACKBONES) == set(BACKBONES)
    assert {path.stem for path in MODEL_CONFIGS.glob("*.yaml")} == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_model_config_builds_its_backbone_with_its_defaults(name):
    cfg = compose([f"model={name}"])
    factory = build_backbone_factory(cfg.model)
    defaults = build_backbone_factory({"name": name})
    assert repr(factory) == repr(defaults)


def test_the_paper_resnet_is_the_default_and_unchanged():
    cfg = compose([])
    assert cfg.model.name == "resnet"
    method = build_method("base", build_backbone_factory(cfg.model), 3, 100)
    assert count_cost(method, (3, 32, 32)).params == 1_756_340


@pytest.mark.parametrize(("model", "match"), [
    ({"name": "vgg"}, r"unknown model 'vgg'; choose one of \['mlp', 'resnet', 'resnet18', 'wrn'\]"),
    ({"name": "wrn", "dropout": 0.3}, r"model 'wrn' has no option\(s\) \['dropout'\]; its options are \['depth', "
                                      r"'widen'\]"),
    ({"name": "wrn", "depth": 27}, r"WRN depth must be 6n \+ 4 .*got 27"),
    ({"name": "wrn", "widen": 0}, r"WRN widen must be a positive number, got 0"),
    ({"name": "resnet18", "layers": [2, 2]}, r"resnet18 layers must be 4 integers >= 1"),
])
def test_bad_model_configs_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        build_backbone_factory(model)


@pytest.mark.parametrize(("name", "data_shape", "match"), [
    ("wrn", (3, 3, 3), r"input size \(3, 3\) is too small for the WRN-10-0.25 backbone .*>= 4"),
    ("resnet18", (3, 4, 4), r"too small for the resnet18 backbone .*>= 8"),
    ("resnet18", (12,), r"the resnet18 backbone takes images \(C, H, W\), got input shape \(12,\)"),
])
def test_input_the_backbone_cannot_take_is_refused_by_its_factory(name, data_shape, match):
    with pytest.raises(ValueError, match=match):
        backbone_input_shape(TINY_BACKBONES[name][0], data_shape)


def test_the_mlp_takes_flattened_images():
    assert backbone_input_shape(TINY_BACKBONES["mlp"][0], (3, 16, 16)) == (768,)
    assert backbone_input_shape(TINY_BACKBONES["wrn"][0], (3, 16, 16)) == (3, 16, 16)


def members_of(name: str) -> dict:
    return {"num_members": 2} if "num_members" in method_options(name) else {}


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_every_method_runs_on_every_backbone_with_an_exit_after_every_stage(backbone, method_name):
    factory, num_stages = TINY_BACKBONES[backbone]
    input_shape = backbone_input_shape(factory, DATA_SHAPE)
    torch.manual_seed(0)
    method = build_method(method_name, factory, input_shape[0], 5, members_of(method_name))
    method.eval()
    prediction = method(torch.randn(3, *input_shape))
    batch, exits, members, classes = prediction.logits.shape
    assert (batch, classes) == (3, 5)
    assert exits == (num_stages if method_name in ("mimmo", "mimmo_gamma", "dun", "early_exit") else 1)
    assert prediction.weights.shape == (exits, members)
    torch.testing.assert_close(prediction.weights.sum(0), torch.ones(members))
    method.train()
    streams = (method.data_streams,) if method.data_streams > 1 else ()  # the Ensemble: one stream per member
    loss = method.training_loss(torch.randn(4, *streams, *input_shape), torch.randint(0, 5, (4, *streams)),
                                _progress()).loss
    assert torch.isfinite(loss)
    loss.backward()
    cost = count_cost(method, input_shape)
    assert cost.flops > 0 and cost.params == count_parameters(method)


def _progress():
    from mimmo.methods.base import Progress

    return Progress(epoch=1, num_epochs=2, fraction=0.5, num_train=100)


# ---------------------------------------------------------------------------------- cost, counted by hand

def conv(c_in: int, c_out: int, kernel: int, side: int, bias: bool = False) -> int:
    """A conv's FLOPs (docs/method.md, "The paper's cost convention"): one per multiply-add, one per output for a
    bias, at output side ``side``."""
    return (c_in * kernel * kernel + bias) * c_out * side * side


def bn(channels: int, side: int) -> int:
    return 2 * channels * side * side


def test_wrn_cost_follows_the_papers_rules():
    """WRN-10-2 (one block per stage: widths 32, 64, 128) on 3x8x8, 10 classes, counted layer by layer."""
    method = build_method("base", WideResNetFactory(depth=10, widen=2), 3, 10)
    expected = conv(3, 16, 3, 8)  # stem
    for c_in, c_out, side_in, side in ((16, 32, 8, 8), (32, 64, 8, 4), (64, 128, 4, 2)):
        expected += bn(c_in, side_in) + c_in * side_in ** 2  # pre-activation BN, ReLU
        expected += conv(c_in, c_out, 3, side) + bn(c_out, side) + c_out * side ** 2 + conv(c_out, c_out, 3, side)
        expected += conv(c_in, c_out, 1, side) + c_out * side ** 2  # projection shortcut, residual add
    expected += bn(128, 2) + 128 * 4 + 128 * 4  # final BN, ReLU, global average pool
    expected += 128 * 10 + 10 + 10  # head with bias, softmax
    assert count_cost(method, (3, 8, 8)).flops == expected


def test_resnet18_cost_follows_the_papers_rules():
    """A one-block-per-stage CIFAR ResNet at width 1/8 (widths 8, 16, 32, 64) on 3x8x8, 10 classes."""
    method = build_method("base", ResNet18Factory(layers=(1, 1, 1, 1), width=1 / 8), 3, 10)
    expected = conv(3, 8, 3, 8) + bn(8, 8) + 8 * 64  # stem conv, BN, ReLU
    for c_in, c_out, side in ((8, 8, 8), (8, 16, 4), (16, 32, 2), (32, 64, 1)):
        expected += conv(c_in, c_out, 3, side) + bn(c_out, side) + c_out * side ** 2
        expected += conv(c_out, c_out, 3, side) + bn(c_out, side)
        if c_in != c_out:
            expected += conv(c_in, c_out, 1, side) + bn(c_out, side)
        expected += 2 * c_out * side ** 2  # residual add, ReLU
    expected += 64 + 64 * 10 + 10 + 10  # pool, head with bias, softmax
    assert count_cost(method, (3, 8, 8)).flops == expected


def test_a_layer_without_a_cost_rule_is_refused_rather_than_counted_as_zero():
    factory = TINY_BACKBONES["wrn"][0]
    method = build_method("base", factory, 3, 10)
    method.backbone.pool[0] = nn.GELU()  # no rule for GELU
    with pytest.raises(NotImplementedError, match="GELU"):
        count_cost(method, DATA_SHAPE)


def test_cost_table_prints_every_methods_columns_for_a_wrn_on_cifar100(capsys):
    main(["cost", "--table", "model=wrn", "model.depth=10", "model.widen=1", "data=cifar100", "--members", "2"])
    out = capsys.readouterr().out
    assert "cifar100 (3, 32, 32), 100 classes" in out and "'name': 'wrn'" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "FLOPs" not in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [display_name(m) for m in METHODS]
