"""Backbones (the paper's bottleneck ResNet, WRN, CIFAR ResNet-18, an MLP), their registry and the protocol
any user backbone follows."""

from mimmo.models.backbone import (
    Add,
    Backbone,
    BackboneFactory,
    ConvExitAdapter,
    LinearExitAdapter,
    backbone_input_shape,
    check_backbone,
    count_parameters,
)
from mimmo.models.mlp import MLP, MLPFactory
from mimmo.models.registry import BACKBONES, build_backbone_factory, register_backbone
from mimmo.models.resnet import ResNet, ResNetConfig, ResNetFactory
from mimmo.models.resnet18 import ResNet18, ResNet18Factory
from mimmo.models.wrn import WideResNet, WideResNetFactory

__all__ = [
    "BACKBONES", "MLP", "Add", "Backbone", "BackboneFactory", "ConvExitAdapter", "LinearExitAdapter", "MLPFactory",
    "ResNet", "ResNet18", "ResNet18Factory", "ResNetConfig", "ResNetFactory", "WideResNet", "WideResNetFactory",
    "backbone_input_shape", "build_backbone_factory", "check_backbone", "count_parameters", "register_backbone",
]
