"""Backbones: the paper's bottleneck ResNet and the protocol any user backbone follows."""

from mimmo.models.backbone import (
    Add,
    Backbone,
    BackboneFactory,
    ConvExitAdapter,
    LinearExitAdapter,
    check_backbone,
    count_parameters,
)
from mimmo.models.mlp import MLP, MLPFactory
from mimmo.models.resnet import ResNet, ResNetConfig, ResNetFactory

__all__ = [
    "Add", "Backbone", "BackboneFactory", "ConvExitAdapter", "LinearExitAdapter", "ResNet", "ResNetConfig",
    "ResNetFactory", "check_backbone", "count_parameters",
    "MLP", "MLPFactory",
]
