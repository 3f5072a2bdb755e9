"""Building a run from its config: the settings checked, the data loaded, the method and normaliser built
(everything checked before a run folder exists)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mimmo.config import check_known_keys
from mimmo.data.datasets import Normalizer, Splits
from mimmo.data.registry import DATASETS, dataset_shape, load_data
from mimmo.evaluation.ood_sets import check_ood_config, with_ood_datasets
from mimmo.methods.base import Method, is_integer
from mimmo.methods.registry import build_method
from mimmo.models.backbone import backbone_input_shape
from mimmo.models.registry import build_backbone_factory
from mimmo.training.compat import check_private_api
from mimmo.training.ddp import trainer_strategy
from mimmo.training.loggers import check_loggers
from mimmo.training.recipe import graphs_capturable, setting, validate_recipe
from mimmo.training.step import FP16_MIXED, eager_reason


def model_input_shape(cfg: DictConfig, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one input the configured backbone takes for data of ``data_shape`` (checked to fit):
    the image shape, or (C*H*W,) for a backbone of flat inputs."""
    return backbone_input_shape(build_backbone_factory(cfg.model), data_shape)


def flattens_images(cfg: DictConfig, data_shape: tuple[int, ...]) -> bool:
    """Whether the configured backbone takes the images as flat vectors (the normaliser then flattens them)."""
    return len(model_input_shape(cfg, data_shape)) < len(data_shape)


def build_normalizer(cfg: DictConfig, images: torch.Tensor) -> Normalizer:
    """The training split's normaliser, flattening the images when the backbone takes flat inputs."""
    return Normalizer.fit(images, flatten=flattens_images(cfg, tuple(images.shape[1:])))


def method_options(cfg: DictConfig) -> dict[str, Any]:
    options = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(options, dict)
    options.pop("name")
    return options


def build_method_from_config(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int,
                             training: bool = True) -> Method:
    """Validate the config against the data shape and build the method (seeded by ``cfg.seed``); ``training``
    False (a finished run's method) skips the checks of how steps run."""
    factory = build_backbone_factory(cfg.model)
    input_shape = backbone_input_shape(factory, data_shape)
    validate_training(cfg, training)
    L.seed_everything(int(cfg.seed), workers=False, verbose=False)
    method = build_method(cfg.method.name, factory, input_shape[0], num_classes, method_options(cfg))
    with torch.no_grad():
        method.eval()
        try:
            method(torch.zeros(1, *input_shape))
        except RuntimeError as error:
            raise ValueError(f"method {cfg.method.name!r} on model {cfg.model.name!r} cannot take inputs of shape "
                             f"{tuple(input_shape)}: {error}") from error
        method.train()
    return method


def validate_training(cfg: DictConfig, training: bool = True) -> None:
    """Refuse training settings outside what is allowed (before anything is built or written); ``training`` False
    leaves out the checks of how steps run (precision, CUDA graphs), which a finished run no longer needs."""
    train = cfg.train
    lr = train.lr
    checks = [
        (is_integer(train.epochs) and train.epochs >= 1,
         f"train.epochs must be an integer >= 1, got {train.epochs!r}"),
        (is_integer(train.batch_size) and train.batch_size >= 1,
         f"train.batch_size must be an integer >= 1, got {train.batch_size!r}"),
        (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
         f"train.lr must be a finite number > 0, got {lr!r}"),
        (is_integer(train.eval_batch_size) and train.eval_batch_size >= 1,
         f"train.eval_batch_size must be an integer >= 1, got {train.eval_batch_size!r}"),
        (train.channels_last in (True, False, "auto"),
         f"train.channels_last must be true, false or auto, got {train.channels_last!r}"),
        (isinstance(train.get("compile", False), bool),
         f"train.compile must be true or false, got {train.get('compile')!r}"),
        (train.get("cuda_graphs", "auto") in (True, False, "auto"),
         f"train.cuda_graphs must be true, false or auto, got {train.get('cuda_graphs')!r}"),
        (is_integer(train.log_every_n_steps) and train.log_every_n_steps >= 1,
         f"train.log_every_n_steps must be an integer >= 1, got {train.log_every_n_steps!r}"),
        (cfg.data.name in DATASETS, f"unknown dataset {cfg.data.name!r}; choose one of {sorted(DATASETS)}"),
        (isinstance(noise := cfg.data.get("label_noise", 0.0), (int, float)) and not isinstance(noise, bool)
         and 0.0 <= noise < 1.0,
         f"data.label_noise must be a number in [0, 1) (the fraction of training labels replaced), got {noise!r}"),
        (is_integer(cfg.seed) and 0 <= cfg.seed < 2**32,
         f"seed must be an integer in [0, 4294967295] (2**32 - 1, numpy's range), got {cfg.seed!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_ood_config(cfg)  # evaluation.ood, evaluation.ood_sets (data.holdout_classes: dataset_shape, load_data)
    validate_recipe(train)
    check_loggers(train.get("loggers", ["csv"]))  # a missing package is named with its extra, before any folder
    if training:
        validate_steps(train)
    warm = cfg.method.get("warm_start_epochs")
    if warm is not None and warm >= train.epochs:
        raise ValueError(f"method.warm_start_epochs ({warm}) must be < train.epochs ({train.epochs}): during the "
                         "warm start the exit weights stay at the prior, so nothing would be learned "
                         "(use method=mimmo_gamma for a run with fixed weights)")


def validate_steps(train: DictConfig) -> None:
    """Refuse ``train.cuda_graphs=true`` where steps cannot be graphs, and fp16 mixed precision (no loss scaler)."""
    if train.get("cuda_graphs", "auto") is True and not graphs_capturable(train):
        raise ValueError(f"train.cuda_graphs=true needs train.optimizer=adam (torch's SGD step cannot be captured in "
                         f"a CUDA graph), got train.optimizer={setting(train, 'optimizer')}; use "
                         "train.cuda_graphs=auto (eager steps for sgd) or false")
    if train.get("cuda_graphs", "auto") is True:
        reason = "accelerator cpu" if str(train.accelerator) == "cpu" else eager_reason(train, trainer_strategy(train))
        if reason is not None:
            raise ValueError(f"train.cuda_graphs=true cannot replay steps as CUDA graphs with {reason}; use "
                             "train.cuda_graphs=auto (eager steps there) or false")
    if str(train.precision) in FP16_MIXED:
        raise ValueError(f"train.precision={train.precision} is not supported: mimmo steps the optimiser itself "
                         "(manual optimisation), without the loss scaler's unscale and skip of non-finite steps that "
                         "fp16 needs; use train.precision=bf16-mixed (or 32)")


def check_data_fits(cfg: DictConfig, splits: Splits) -> None:
    """Refuse training settings that the loaded data cannot satisfy."""
    if cfg.train.batch_size > len(splits.train):
        raise ValueError(f"train.batch_size must be <= the training split's {len(splits.train)} images "
                         f"(data {cfg.data.name!r}, data.train_size={cfg.data.get('train_size')}), "
                         f"got {cfg.train.batch_size}")


def channels_last_is_safe(method: torch.nn.Module, input_channels: int) -> bool:
    """False where PyTorch's CPU channels-last convolution is known to break: a convolution with one output
    channel, or one input channel past the input images (e.g. model.width=0.0625), aborted the process with
    glibc's ``free(): invalid next size`` or hung in the backward. A 1-channel input image is fine."""
    for module in method.modules():
        if isinstance(module, torch.nn.Conv2d):
            if module.out_channels == 1 or (module.in_channels == 1 and input_channels != 1):
                return False
    return True


def prepare_run(cfg: DictConfig) -> tuple[Splits, Method]:
    """Everything a run checks before its folder exists: the settings, the data (loaded and checked on load)
    and the method built on it. ValueError (or FileNotFoundError for missing data) names what is wrong."""
    check_private_api()  # an installed Lightning without the private methods mimmo overrides
    check_known_keys(cfg)  # a setting no config file declares would be read by nothing
    validate_training(cfg)
    splits = load_splits(cfg)
    check_data_fits(cfg, splits)
    return splits, build_method_from_config(cfg, splits.input_shape, splits.num_classes)


def load_splits(cfg: DictConfig) -> Splits:
    """The run's data splits, with the test images of its evaluation.ood_sets datasets (loaded and checked now)."""
    return with_ood_datasets(cfg, load_data(cfg.data, int(cfg.seed)))


def input_spec(cfg: DictConfig) -> tuple[tuple[int, ...], int]:
    """Image shape (C, H, W) and number of classes of the configured dataset, known without loading it."""
    return dataset_shape(cfg.data)


def configure_threads(cfg: DictConfig) -> None:
    threads = cfg.train.get("threads")
    if threads:
        torch.set_num_threads(int(threads))

