"""The paper's bottleneck ResNet (docs/method.md, "Backbones and exits"): exact cost, stage shapes, block structure,
validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimmo.evaluation.cost import count_cost
from mimmo.methods import Base
from mimmo.models import ResNet, ResNetConfig, ResNetFactory, check_backbone, count_parameters
from mimmo.models.resnet import Bottleneck

PAPER_PARAMS = 1_756_340
PAPER_FLOPS = 109_852_872


@pytest.fixture(scope="module")
def paper_backbone() -> ResNet:
    return ResNetFactory()(3, 100)


def test_paper_base_has_the_papers_exact_cost():
    cost = count_cost(Base(ResNetFactory(), 3, 100), (3, 32, 32))
    assert cost.params == PAPER_PARAMS
    assert cost.flops == PAPER_FLOPS
    flops_m, params_m = cost.millions()
    assert (round(flops_m, 2), round(params_m, 2)) == (109.85, 1.76)


def test_default_config_is_the_papers():
    config = ResNetConfig()
    assert config.layers == (1, 2, 3, 1)
    assert config.planes == (16, 32, 64, 128)
    assert config.strides == (1, 2, 2, 2)
    assert config.stem_channels == 16


def test_stage_outputs_have_the_papers_shapes(paper_backbone):
    paper_backbone.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        stages = paper_backbone.features(x)
        logits = paper_backbone(x)
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert all(s.shape[0] == 2 for s in stages)
    assert paper_backbone.stage_channels == (64, 128, 256, 512)
    assert paper_backbone.feature_dim == 512
    assert logits.shape == (2, 100)
    assert isinstance(paper_backbone.head, nn.Linear)
    assert (paper_backbone.head.in_features, paper_backbone.head.out_features) == (512, 100)


def test_stem_is_conv3x3_bn_relu_without_pooling(paper_backbone):
    conv, bn, relu = paper_backbone.stem
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3, 16, (3, 3), (1, 1), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in paper_backbone.modules())


def test_every_conv_is_bias_free(paper_backbone):
    convs = [m for m in paper_backbone.modules() if isinstance(m, nn.Conv2d)]
    # stem + per block 3 branch convs + one projection per stage: 1 + 7*3 + 4
    assert len(convs) == 1 + 3 * 7 + 4
    assert all(conv.bias is None for conv in convs)


def test_blocks_are_bottlenecks_with_a_projection_on_the_first_block_of_every_stage(paper_backbone):
    in_channels = 16
    for stage, num_blocks, planes, stride in zip(paper_backbone.stages, (1, 2, 3, 1), (16, 32, 64, 128),
                                                 (1, 2, 2, 2), strict=True):
        assert len(stage) == num_blocks
        for b, block in enumerate(stage):
            assert isinstance(block, Bottleneck)
            convs = [m for m in block.branch if isinstance(m, nn.Conv2d)]
            expected_stride = stride if b == 0 else 1
            assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
                (in_channels, 2 * planes, (1, 1), (1, 1)),
                (2 * planes, 2 * planes, (3, 3), (expected_stride, expected_stride)),
                (2 * planes, 4 * planes, (1, 1), (1, 1)),
            ]
            if b == 0:  # projection conv1x1 in -> 4p with the stage's stride, then BN (stage 1 too)
                assert isinstance(block.shortcut, nn.Sequential)
                conv, bn = block.shortcut
                assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
                    in_channels, 4 * planes, (1, 1), (stride, stride))
            else:
                assert isinstance(block.shortcut, nn.Identity)
            in_channels = 4 * planes


def test_first_block_projects_even_when_the_widths_already_match():
    # stem 64 channels = stage 1's output 4p: the paper's ResNet still puts a projection on the first block
    backbone = ResNetFactory(ResNetConfig(layers=(2, 1), planes=(16, 8), strides=(1, 1), stem_channels=64))(3, 10)
    first, second = backbone.stages[0]
    assert first.shortcut[0].in_channels == first.shortcut[0].out_channels == 64
    assert isinstance(second.shortcut, nn.Identity)
    assert isinstance(backbone.stages[1][0].shortcut, nn.Sequential)


def test_block_output_is_relu_of_branch_plus_shortcut():
    torch.manual_seed(0)
    block = Bottleneck(8, 4, stride=2, project=True).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        expected = torch.relu(block.branch(x) + block.shortcut(x))
        assert torch.allclose(block(x), expected)
        assert block(x).shape == (2, 16, 3, 3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"layers": (1, 2, 3), "planes": (16, 32, 64, 128)}, r"same length"),
    ({"strides": (1, 2)}, r"same length"),
    ({"layers": (), "planes": (), "strides": ()}, r"non-empty"),
    ({"layers": (1, 0, 3, 1)}, r"at least one block.*\(1, 0, 3, 1\)"),
    ({"strides": (1, 3, 2, 2)}, r"strides must be 1 or 2.*\(1, 3, 2, 2\)"),
    ({"strides": (1, 0, 2, 2)}, r"strides must be 1 or 2"),
    ({"width": 0.0}, r"width \(0.0\)"),
    ({"planes": (16, 0, 64, 128)}, r"planes"),
    ({"stem_channels": 0}, r"stem_channels \(0\)"),
])
def test_resnet_config_refuses_bad_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetConfig(**kwargs)


def test_resnet_refuses_bad_channel_counts():
    with pytest.raises(ValueError, match="in_channels"):
        ResNet(0, 10)
    with pytest.raises(ValueError, match="num_outputs"):
        ResNet(3, 0)


def test_figure_6_config_builds_wider_and_deeper():
    config = ResNetConfig(layers=(2, 4, 6, 2), width=2.0)
    backbone = ResNetFactory(config)(3, 100).eval()
    assert [len(stage) for stage in backbone.stages] == [2, 4, 6, 2]
    assert backbone.stage_channels == (128, 256, 512, 1024)
    assert backbone.stem[0].out_channels == 32
    with torch.no_grad():
        stages = backbone.features(torch.randn(1, 3, 32, 32))
        logits = backbone(torch.randn(1, 3, 32, 32))
    assert [tuple(s.shape[1:]) for s in stages] == [(128, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4)]
    assert logits.shape == (1, 100)
    assert count_parameters(backbone) > 4 * PAPER_PARAMS  # width 2 roughly quadruples the parameters


def test_factory_builds_independent_backbones_with_the_requested_io():
    factory = ResNetFactory(ResNetConfig(layers=(1, 1), planes=(4, 4), strides=(1, 2), stem_channels=4))
    a, b = factory(6, 20), factory(6, 20)
    assert a.stem[0].in_channels == 6 and a.head.out_features == 20
    assert not torch.equal(a.stem[0].weight, b.stem[0].weight)


def test_count_parameters_ignores_buffers_and_frozen_parameters():
    layer = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert count_parameters(layer) == 3 * 2 + 2 + 2 + 2
    layer[0].weight.requires_grad_(False)
    assert count_parameters(layer) == 2 + 2 + 2


def test_check_backbone_accepts_the_resnet(paper_backbone):
    assert check_backbone(paper_backbone) is paper_backbone


def test_check_backbone_names_what_is_missing():
    with pytest.raises(TypeError, match=r"Sequential is not a mimmo Backbone.*'stem', 'stages'"):
        check_backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)))

    class NoStages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.pool = nn.Flatten()
            self.head = nn.Linear(4, 10)
            self.stage_channels = (4,)
            self.feature_dim = 4

    with pytest.raises(TypeError, match=r"NoStages.*lacks \['stages'\]"):
        check_backbone(NoStages())


def test_check_backbone_refuses_malformed_parts(paper_backbone):
    class Malformed(nn.Module):
        def __init__(self, stages, head, stage_channels) -> None:
            super().__init__()
            self.stem, self.pool = nn.Identity(), nn.Identity()
            self.stages, self.head, self.stage_channels, self.feature_dim = stages, head, stage_channels, 4

    with pytest.raises(TypeError, match="non-empty nn.ModuleList"):
        check_backbone(Malformed([nn.Identity()], nn.Linear(4, 2), (4,)))
    with pytest.raises(TypeError, match="non-empty nn.ModuleList"):
        check_backbone(Malformed(nn.ModuleList(), nn.Linear(4, 2), ()))
    with pytest.raises(TypeError, match="head must be nn.Linear"):
        check_backbone(Malformed(nn.ModuleList([nn.Identity()]), nn.Identity(), (4,)))
    with pytest.raises(TypeError, match="stage_channels has 2 entries for 1 stages"):
        check_backbone(Malformed(nn.ModuleList([nn.Identity()]), nn.Linear(4, 2), (4, 4)))
