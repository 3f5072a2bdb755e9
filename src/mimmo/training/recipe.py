"""The training recipe a run's ``train`` config names: optimiser, learning-rate schedule, augmentation.

The paper's recipe is the default (``configs/train/paper.yaml``): Adam, no weight decay, cosine to 0 over the run
stepped per epoch, no augmentation. The options are the recipes of the wider networks of the MIMO/MixMo papers:
SGD with (Nesterov) momentum, weight decay, a step schedule, random crops and flips (:mod:`mimmo.data.augment`).

Every value is checked by :func:`validate_recipe` before anything is built, with a message naming the value and
what is allowed. Settings of an older run folder that predates an option read as its default.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from mimmo.data.augment import AUGMENTATIONS
from mimmo.methods.base import Method, is_finite_number, is_integer, require

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step")
# What a config saved before these options existed was trained with (training reads it, and so do reports when
# they group old runs with new ones): a historical record, never changed.
DEFAULTS: dict[str, Any] = {"augment": "none", "optimizer": "adam", "momentum": 0.9, "nesterov": False,
                            "weight_decay": 0.0, "schedule": "cosine", "milestones": [], "lr_decay": 0.1}


def setting(train: DictConfig, key: str) -> Any:
    """``train.<key>``, or its default where the config predates the option."""
    return train.get(key, DEFAULTS[key])


def validate_recipe(train: DictConfig) -> None:
    """Refuse optimiser, schedule and augmentation settings outside what is allowed (ValueError, one line)."""
    optimizer, schedule = setting(train, "optimizer"), setting(train, "schedule")
    momentum, weight_decay, lr_decay = setting(train, "momentum"), setting(train, "weight_decay"), setting(
        train, "lr_decay")
    require(setting(train, "augment") in AUGMENTATIONS,
            f"train.augment must be one of {', '.join(AUGMENTATIONS)}, got {setting(train, 'augment')!r}")
    require(optimizer in OPTIMIZERS, f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    require(is_finite_number(momentum) and momentum >= 0,
            f"train.momentum must be a finite number >= 0, got {momentum!r}")
    require(isinstance(setting(train, "nesterov"), bool),
            f"train.nesterov must be true or false, got {setting(train, 'nesterov')!r}")
    require(not setting(train, "nesterov") or (optimizer == "sgd" and momentum > 0),
            f"train.nesterov=true is Nesterov momentum for train.optimizer=sgd with train.momentum > 0; got "
            f"train.optimizer={optimizer}, train.momentum={momentum}")
    require(is_finite_number(weight_decay) and weight_decay >= 0,
            f"train.weight_decay must be a finite number >= 0, got {weight_decay!r}")
    require(schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    require(is_finite_number(lr_decay) and 0 < lr_decay <= 1,
            f"train.lr_decay must be a number in (0, 1], got {lr_decay!r}")
    milestones = setting(train, "milestones")
    epochs = train.epochs
    valid = isinstance(milestones, list | tuple | ListConfig)
    values = list(milestones) if valid else []
    require(valid and all(is_integer(m) and 1 <= m <= epochs - 1 for m in values)
            and all(a < b for a, b in zip(values, values[1:], strict=False)),
            f"train.milestones must be a strictly increasing list of epochs in 1..{epochs - 1} (train.epochs - 1), "
            f"got {milestones!r}")
    require(schedule == "step" or not values,
            f"train.milestones ({values}) are for train.schedule=step; train.schedule is {schedule!r}")


def build_optimizer(method: Method, train: DictConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` at ``train.lr`` for the method's parameters, with ``train.weight_decay`` (L2 added to
    the gradient, for Adam as in torch.optim.Adam, not AdamW's decoupled decay) on all but the method's
    :meth:`~mimmo.methods.base.Method.parameters_without_weight_decay`, and for SGD ``train.momentum`` and
    ``train.nesterov``."""
    lr, weight_decay = train.lr, float(setting(train, "weight_decay"))
    parameters: Any = list(method.parameters())
    exempt = {id(p) for p in method.parameters_without_weight_decay()}
    if weight_decay and exempt:
        parameters = [{"params": [p for p in parameters if id(p) not in exempt]},
                      {"params": [p for p in parameters if id(p) in exempt], "weight_decay": 0.0}]
    if setting(train, "optimizer") == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=float(setting(train, "momentum")),
                               nesterov=bool(setting(train, "nesterov")), weight_decay=weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, train: DictConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule: cosine from ``train.lr`` to 0 over ``train.epochs``, or ``step``: the rate times
    ``train.lr_decay`` at each of ``train.milestones`` (from that epoch on, counted from 0)."""
    if setting(train, "schedule") == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(setting(train, "milestones")),
                                                    gamma=float(setting(train, "lr_decay")))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs, eta_min=0.0)


def graphs_capturable(train: DictConfig) -> bool:
    """Whether the configured optimiser's step can be captured in a CUDA graph. Adam can (``capturable``, its lr
    a device tensor). torch's SGD cannot: its update is ``param.add_(grad, alpha=-lr)``, and a tensor ``lr`` as
    ``alpha`` is read on the host (a sync, refused during a capture; a float would freeze the schedule)."""
    return setting(train, "optimizer") == "adam"
