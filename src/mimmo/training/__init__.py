"""Training any method with Lightning, and the run folder it leaves behind (see :mod:`mimmo.runs.folder`).

A run folder holds: ``config.yaml`` (the resolved config), ``checkpoints/last.ckpt`` (every epoch; a run
that is started again resumes from it), ``log/metrics.csv``, ``weights.safetensors`` (the final
method and its input normaliser), ``calibration.json`` (the temperature fitted on the validation split, with
``evaluation.calibrate``) and ``metrics.json`` (written last: its presence marks a finished run).

A run is checked completely (config, data, method) before its folder is created; the folder is locked while
the run works in it; SIGTERM or SIGINT stop it resumably (:mod:`mimmo.runs.signals`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import signal
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mimmo.config import check_known_keys
from mimmo.data.augment import augmentation, member_views
from mimmo.data.datasets import ImageSet, Normalizer, Splits
from mimmo.data.loader import BatchLoader
from mimmo.data.registry import DATASETS, check_data, dataset_shape, load_data
from mimmo.evaluation.calibration import calibrated_section, fit_temperature, write_calibration
from mimmo.evaluation.cost import count_cost
from mimmo.evaluation.evaluate import RAW, Readout, evaluate_readouts, predict_logits
from mimmo.evaluation.metrics import classification_metrics
from mimmo.evaluation.probes import feature_reuse
from mimmo.evaluation.pruning import can_prune, pruned_cost, pruned_weights
from mimmo.methods.base import Method, Progress, is_integer, mixture_log_probs
from mimmo.methods.registry import build_method
from mimmo.models.backbone import backbone_input_shape
from mimmo.models.registry import build_backbone_factory
from mimmo.runs.console import run_summary
from mimmo.runs.folder import (
    CONFIG_FILE,
    FORMAT_VERSION,
    LAST_CHECKPOINT,
    LOG_DIR,
    METRICS_FILE,
    NON_SEMANTIC_KEYS,
    WEIGHTS_FILE,
    atomic_path,
    disk_full,
    is_disk_full,
    is_rank_zero_launcher,
    lock,
    read_config,
    read_metrics,
    temporary_name,
    write_json_atomic,
    write_text_atomic,
)
from mimmo.runs.provenance import provenance
from mimmo.runs.signals import Interrupted, SignalStop, StopAtBatchEnd, stop_on_signals
from mimmo.training.recipe import build_optimizer, build_schedule, graphs_capturable, setting, validate_recipe
from mimmo.training.step import CudaGraphs, GraphBackend, TrainingStep, prepare_optimizer

log = logging.getLogger("mimmo")


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


def build_method_from_config(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int) -> Method:
    """Validate the config against the data shape and build the method (seeded by ``cfg.seed``)."""
    factory = build_backbone_factory(cfg.model)
    input_shape = backbone_input_shape(factory, data_shape)
    validate_training(cfg)
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


def validate_training(cfg: DictConfig) -> None:
    """Refuse training settings outside what is allowed (before anything is built or written)."""
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
    validate_recipe(train)
    if train.get("cuda_graphs", "auto") is True and not graphs_capturable(train):
        raise ValueError(f"train.cuda_graphs=true needs train.optimizer=adam (torch's SGD step cannot be captured in "
                         f"a CUDA graph), got train.optimizer={setting(train, 'optimizer')}; use "
                         "train.cuda_graphs=auto (eager steps for sgd) or false")
    warm = cfg.method.get("warm_start_epochs")
    if warm is not None and cfg.method.name not in ("mimmo_gamma",) and warm >= train.epochs:
        raise ValueError(f"method.warm_start_epochs ({warm}) must be < train.epochs ({train.epochs}): during the "
                         "warm start the exit weights stay at the prior, so nothing would be learned "
                         "(use method=mimmo_gamma for a run with fixed weights)")


def cuda_graphs_available(device: torch.device, world_size: int) -> bool:
    """Whether training steps can be replayed as CUDA graphs: one process on a CUDA device."""
    return device.type == "cuda" and world_size == 1


def make_graph_backend(device: torch.device) -> GraphBackend:
    """How training steps are captured on ``device`` (tests put a stand-in here to run the graphed path on a CPU)."""
    return CudaGraphs(device)


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
    check_known_keys(cfg)  # a setting no config file declares would be read by nothing
    validate_training(cfg)
    splits = load_splits(cfg)
    check_data_fits(cfg, splits)
    return splits, build_method_from_config(cfg, splits.input_shape, splits.num_classes)


class MethodModule(L.LightningModule):
    """Runs any method with the configured recipe (:mod:`mimmo.training.recipe`; the paper's: Adam, per-epoch cosine
    schedule to 0, no augmentation), warm start through ``Progress``.

    Optimisation is manual: each training step is one :class:`~mimmo.training.step.TrainingStep` (zero
    gradients, loss, backward, update), eager or replayed as a CUDA graph (``train.cuda_graphs``), and the
    losses are summed on the device and logged once per epoch (no host sync per step)."""

    def __init__(self, method: Method, normalizer: Normalizer, data: Splits, cfg: DictConfig) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.method, self.normalizer, self.data = method, normalizer, data
        self.seed, self.train_cfg = int(cfg.seed), cfg.train
        # train.compile: the training loss (and with it the backward) through torch.compile; the same math on the
        # method's own parameters. Evaluation and the cost count run the method as it is.
        self.training_loss = torch.compile(method.training_loss) if cfg.train.get("compile") else method.training_loss
        self.exit_weight_history: list[list[list[float]]] = []
        self.validation_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.step: TrainingStep | None = None
        self.epoch_sums: torch.Tensor | None = None
        self.augment = augmentation(setting(cfg.train, "augment"))  # None for train.augment=none

    def uses_cuda_graphs(self) -> bool:
        """``train.cuda_graphs``: auto (the default) replays training steps as CUDA graphs on a GPU when one
        process trains with Adam (data-parallel runs stay eager: their gradient all-reduce is not captured; so do
        SGD runs: :func:`~mimmo.training.recipe.graphs_capturable`)."""
        graphs = self.train_cfg.get("cuda_graphs", "auto")
        available = cuda_graphs_available(self.device, self.trainer.world_size)
        if graphs is True and not available:
            raise ValueError(f"train.cuda_graphs=true needs one CUDA device and one process; this run trains on "
                             f"{self.device.type} with {self.trainer.world_size} process(es) (use auto or false)")
        return available and graphs_capturable(self.train_cfg) if graphs == "auto" else bool(graphs)

    def configure_optimizers(self) -> dict[str, Any]:
        # Its form for the (graphed or eager) step is set at the first step, after a resumed checkpoint is loaded.
        optimizer = build_optimizer(self.method, self.train_cfg)
        schedule = build_schedule(optimizer, self.train_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def train_dataloader(self) -> BatchLoader:
        return BatchLoader(self.on_device(self.data.train), self.train_cfg.batch_size, shuffle=True, seed=self.seed,
                           streams=self.method.data_streams, rank=self.global_rank,
                           world_size=self.trainer.world_size)

    def on_device(self, data: ImageSet) -> ImageSet:
        """On a GPU the split lives on the device (batches are cut there); on a CPU it stays where it is."""
        return data.to(self.device) if self.device.type == "cuda" else data

    def val_dataloader(self) -> list[BatchLoader]:
        """The validation split, and with ``train.track_train`` also the training split in eval mode (to
        see overfitting: training accuracy near 1 while the held-out NLL rises)."""
        sets = [self.data.validation] + ([self.data.train] if self.train_cfg.get("track_train") else [])
        return [BatchLoader(data, self.train_cfg.eval_batch_size, shuffle=False) for data in sets]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(images.flatten(0, 1) if images.dim() == 5 else images)
        if images.dim() == 5:  # (B, S, C, H, W) streams for the ensemble
            x = x.unflatten(0, images.shape[:2])
        if x.dim() == 4 and self.uses_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_training(self, images: torch.Tensor) -> torch.Tensor:
        """A training batch (inside the training step, so a graphed step augments afresh at every replay): with
        ``train.augment`` every image (every stream or member view of a sample too) augmented independently, on
        the raw pixels, then :meth:`prepare`."""
        return self.prepare(images if self.augment is None else self.augment(images))

    def uses_channels_last(self) -> bool:
        """``train.channels_last``: true, false, or auto (true on a CPU, where training measured 1.3-1.4x
        faster in channels-last memory, benchmarks/README.md, unless the network has a layer where PyTorch's
        CPU channels-last path is unsafe: :func:`channels_last_is_safe`; false elsewhere)."""
        setting = self.train_cfg.channels_last
        if setting == "auto":
            return self.device.type == "cpu" and channels_last_is_safe(self.method, self.data.input_shape[0])
        return bool(setting)

    def on_fit_start(self) -> None:
        self.step, self.epoch_sums = None, None  # a new fit has a new optimiser: its step is made at the first batch
        if self.uses_channels_last():
            self.method.to(memory_format=torch.channels_last)  # the weights' layout; the values stay

    def on_train_epoch_start(self) -> None:
        # Everything random inside an epoch (repetition, dropout, mixing) follows from (seed, epoch, rank),
        # so a run resumed from an epoch checkpoint continues exactly as an uninterrupted one.
        torch.manual_seed((self.seed * 1_000_003 + self.current_epoch) * 997 + self.global_rank)
        self.unchecked_losses: list[torch.Tensor] = []
        self.epoch_steps = 0

    def progress(self, epoch: int, batch_idx: int, num_batches: int) -> Progress:
        """Where training stands at batch ``batch_idx`` of ``num_batches`` in ``epoch`` (warm start, schedules)."""
        fraction = (epoch + batch_idx / num_batches) / self.train_cfg.epochs
        if self.train_cfg.get("compile"):  # a tensor: torch.compile would specialise on a float and recompile
            fraction = torch.tensor(fraction)
        return Progress(epoch=epoch, num_epochs=self.train_cfg.epochs, num_train=len(self.data.train),
                        fraction=fraction)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        num_batches = max(1, int(self.trainer.num_training_batches))
        progress = self.progress(self.current_epoch, batch_idx, num_batches)
        optimizer = self.optimizers()
        if self.step is None:
            graphs = self.uses_cuda_graphs()
            prepare_optimizer(optimizer.optimizer, graphs, self.device)
            self.step = TrainingStep(self.training_loss, self.method.graph_key, self.prepare_training,
                                     optimizer.optimizer, backward=self.manual_backward,
                                     graphs=make_graph_backend(self.device) if graphs else None)
        if self.augment is not None and self.method.augment_views > 1:  # one view per member, augmented apart
            images, labels = member_views(images, labels, self.method.augment_views)
        optimizer._on_before_step()  # Lightning counts optimiser steps (global_step) through these two hooks
        stats = self.step(images, labels, progress)
        optimizer._on_after_step()
        self.epoch_sums = stats if self.epoch_sums is None else self.epoch_sums + stats
        self.epoch_steps += 1
        self.unchecked_losses.append(stats[0])
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0 or batch_idx + 1 == num_batches:
            self.check_losses_finite(batch_idx)

    def check_losses_finite(self, batch_idx: int) -> None:
        """Raise on the first non-finite loss since the last check. Reading a loss on the host waits for the
        device, so the losses are read every ``train.log_every_n_steps`` batches and at the end of each epoch,
        always before that epoch's checkpoint: a non-finite loss never reaches checkpoints/last.ckpt."""
        losses = torch.stack(self.unchecked_losses)
        first_batch = batch_idx + 1 - len(self.unchecked_losses)
        self.unchecked_losses = []
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0, 0])
            raise FloatingPointError(
                f"non-finite training loss ({losses[index].item()}) at epoch {self.current_epoch}, batch "
                f"{first_batch + index}; the run stops here and its last good checkpoint is {LAST_CHECKPOINT}")

    def on_train_epoch_end(self) -> None:
        if self.epoch_sums is not None:  # the epoch's mean loss and logs, read on the host once
            means = self.epoch_sums / self.epoch_steps
            for key, value in zip(self.step.log_keys, means, strict=True):
                self.log(f"train/{key}", value, prog_bar=key == "loss")
            self.epoch_sums = None
        self.lr_schedulers().step()  # per epoch; before the epoch's checkpoint, which then holds the next epoch's lr
        weights = self.method.exit_weights()
        if weights is not None:
            self.exit_weight_history.append(weights.cpu().tolist())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        images, labels = batch
        self.validation_outputs.setdefault(dataloader_idx, []).append(
            (self.method(self.prepare(images)).log_probs(), labels))

    def on_validation_epoch_end(self) -> None:
        for index, outputs in sorted(self.validation_outputs.items()):
            metrics = classification_metrics(torch.cat([lp for lp, _ in outputs]), torch.cat([y for _, y in outputs]))
            prefix = ("val", "train_eval")[index]
            for key in ("accuracy", "nll", "ece"):
                self.log(f"{prefix}/{key}", metrics[key], prog_bar=prefix == "val" and key != "ece",
                         add_dataloader_idx=False)
        self.validation_outputs.clear()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["exit_weight_history"] = self.exit_weight_history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.exit_weight_history = checkpoint.get("exit_weight_history", [])


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run appends to it instead."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose log/metrics.csv survives a resume (the epochs before the cut stay in it)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class AtomicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it, so last.ckpt is never half-written."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        temporary = temporary_name(filepath)
        try:
            trainer.save_checkpoint(temporary, self.save_weights_only)
        except (OSError, RuntimeError) as error:
            temporary.unlink(missing_ok=True)  # the previous last.ckpt stays
            if is_disk_full(error):
                raise disk_full(filepath, error) from error
            raise
        if trainer.is_global_zero:
            os.replace(temporary, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    """The config without keys that do not change what a run computes."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for dotted in NON_SEMANTIC_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return data


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` (tensors and plain types only: a crafted file
    cannot run code); ValueError saying how to start over when it is truncated or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        run_dir = path.parent.parent
        raise ValueError(f"{path} is truncated or corrupt and cannot be resumed from ({str(error).splitlines()[0]}); "
                         f"to start this run over, remove {path} (or the whole folder {run_dir})") from error


def load_splits(cfg: DictConfig) -> Splits:
    return load_data(cfg.data, int(cfg.seed))


def input_spec(cfg: DictConfig) -> tuple[tuple[int, ...], int]:
    """Image shape (C, H, W) and number of classes of the configured dataset, known without loading it."""
    return dataset_shape(cfg.data)


def save_weights(path: Path, method: Method, normalizer: Normalizer) -> None:
    tensors = {f"method.{k}": v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
    tensors |= {f"normalizer.{k}": v.detach().cpu().contiguous() for k, v in normalizer.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Method, Normalizer, DictConfig]:
    """Rebuild a trained method and its normaliser from a run folder (config.yaml + weights.safetensors)."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished run: {name} is missing")
    cfg = read_config(run_dir)
    metrics = read_metrics(run_dir) or {}
    if "data_shape" in metrics and "num_classes" in metrics:  # known without the data (a folder may be elsewhere)
        input_shape, num_classes = tuple(metrics["data_shape"]), int(metrics["num_classes"])
    else:
        input_shape, num_classes = input_spec(cfg)
    method = build_method_from_config(cfg, input_shape, num_classes)
    path = run_dir / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is damaged and cannot be read ({error}); train the run again (remove {path} and "
                         f"{run_dir / METRICS_FILE})") from error
    normalizer = Normalizer(torch.zeros(input_shape[0]), torch.ones(input_shape[0]), flattens_images(cfg, input_shape))
    load_weights(normalizer, tensors, "normalizer.", path)
    load_weights(method, tensors, "method.", path)
    return method.to(device).eval(), normalizer.to(device), cfg


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    """Load the ``prefix`` part of a weights file into ``module``; ValueError naming the file and the first
    missing, unexpected or differently shaped tensors when they do not match the run's config."""
    given = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [f"{k} has shape {tuple(given[k].shape)}, the config's model {tuple(v.shape)}"
                 for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ValueError(f"{path} does not match the run's config.yaml ({len(problems)} differences in "
                         f"'{prefix.rstrip('.')}': {shown}); it belongs to another run, or the config was edited")
    module.load_state_dict(given)


def configure_threads(cfg: DictConfig) -> None:
    threads = cfg.train.get("threads")
    if threads:
        torch.set_num_threads(int(threads))


DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
# Set by Lightning's DDP launcher (strategy=ddp) in the launching process; left there, they make the next run
# in the same process (a sweep, a grid) believe that its other ranks were started externally, and it waits.
DDP_LAUNCH_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def trainer_strategy(train_cfg: DictConfig) -> str:
    """Lightning's strategy for ``train.strategy``. DDP looks for parameters without a gradient: MIMMO's and
    DUN's depth logits get none during the warm start and MIMMO-gamma's never do, which plain DDP refuses.
    ``auto`` with more than one device or node is DDP (Lightning's choice) with that setting."""
    strategy, devices = str(train_cfg.strategy), train_cfg.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    several_devices = devices > 1 if isinstance(devices, int) else not isinstance(devices, str) and len(devices) > 1
    if strategy == "auto" and (several_devices or int(train_cfg.num_nodes) > 1):
        strategy = "ddp"
    return f"{strategy}_find_unused_parameters_true" if strategy in DDP_STRATEGIES else strategy


def finished_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of ``run_dir`` if it holds this run finished; None if it is new or cut off; ValueError if it
    holds another config or an unreadable file."""
    if (run_dir / CONFIG_FILE).exists() and semantic_config(read_config(run_dir)) != semantic_config(cfg):
        raise ValueError(f"{run_dir} holds a run with another config; choose another output_dir or remove it")
    metrics = read_metrics(run_dir)
    if metrics is not None:
        log.info("%s already finished; skipping (remove %s to run it again)", run_dir, METRICS_FILE)
    return metrics


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its last checkpoint) and return its metrics.

    The config, the data and the method are checked before the folder is created (ValueError naming the bad
    value); the folder is locked while the run works in it (:class:`~mimmo.runs.folder.RunFolderBusy`); SIGTERM
    and SIGINT raise :class:`~mimmo.runs.signals.Interrupted` (training stops at the end of its current batch).
    """
    run_dir = Path(run_dir)
    finished = finished_metrics(cfg, run_dir)
    if finished is not None:
        log.info("%s\n(remove its metrics.json to run it again)", run_summary(run_dir, finished, reused=True))
        return finished
    checkpoint = run_dir / LAST_CHECKPOINT
    with stop_on_signals() as stop:
        try:
            configure_threads(cfg)
            check_data(cfg.data)  # a missing dataset is named with its path
            splits, method = prepare_run(cfg)
            with lock(run_dir, "mimmo train") if is_rank_zero_launcher() else nullcontext():
                finished = finished_metrics(cfg, run_dir)  # another process may have finished it meanwhile
                if finished is not None:
                    return finished
                if checkpoint.exists():
                    load_checkpoint(checkpoint)  # a truncated one is refused here, not inside Lightning
                return _fit_and_finish(cfg, run_dir, splits, method, stop)
        except Interrupted as error:
            kept = (f"it keeps {checkpoint} (the last whole epoch)" if checkpoint.exists()
                    else "it has no whole epoch yet")
            raise Interrupted(error.signum, f"{error} while working on {run_dir} ({kept}): run the same command "
                                            "again to resume") from None


def _fit_and_finish(cfg: DictConfig, run_dir: Path, splits: Splits, method: Method, stop: SignalStop
                    ) -> dict[str, Any]:
    """Train (resuming from the last checkpoint), evaluate and write the run's files; the folder is locked."""
    checkpoint = run_dir / LAST_CHECKPOINT
    normalizer = build_normalizer(cfg, splits.train.images)
    write_text_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    module = MethodModule(method, normalizer, splits, cfg)
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=trainer_strategy(cfg.train), precision=cfg.train.precision,
        logger=ResumableCSVLogger(str(run_dir), name=LOG_DIR, version=""),
        callbacks=[AtomicCheckpoint(dirpath=str(checkpoint.parent), filename=checkpoint.stem, save_top_k=1,
                                    enable_version_counter=False, save_on_train_epoch_end=True),
                   StopAtBatchEnd(stop)],
        enable_progress_bar=bool(cfg.train.progress_bar), enable_model_summary=False,
        log_every_n_steps=cfg.train.log_every_n_steps, num_sanity_val_steps=0,
        check_val_every_n_epoch=int(cfg.train.get("val_every_n_epochs", 1)), default_root_dir=str(run_dir))
    resume = str(checkpoint) if checkpoint.exists() else None
    log.info("training %s on %s for %d epochs into %s%s", cfg.method.name, cfg.data.name, cfg.train.epochs, run_dir,
             f" (resuming from {checkpoint})" if resume else "")
    start = time.perf_counter()
    environment = {key: os.environ.get(key) for key in DDP_LAUNCH_ENVIRONMENT}
    try:
        with stop.deferred():
            trainer.fit(module, ckpt_path=resume, weights_only=True)
    except SIGTERMException as error:  # Lightning's own SIGTERM stop (a bare SystemExit): not a finished run
        raise Interrupted(stop.received or signal.SIGTERM) from error
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # (ddp) the next run in this process starts its own
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}
    history = module.exit_weight_history
    if not history and checkpoint.exists():
        # ddp_spawn trained in other processes: this process got the final weights back from rank 0 (Lightning
        # loads them into the module), but not the module's Python state; rank 0 saved it in the last checkpoint.
        history = load_checkpoint(checkpoint).get("exit_weight_history", [])
    # Lightning moves the module to the CPU after fit; evaluate on the device it trained on (rank 0's).
    metrics = finish_run(run_dir, cfg, method, normalizer, splits, history, train_seconds,
                         trainer.strategy.root_device)
    log.info("%s", run_summary(run_dir, metrics))
    return metrics


def evaluate_model(cfg: DictConfig, method: Method, normalizer: Normalizer, splits: Splits,
                   device: torch.device | str) -> dict[str, Any]:
    """Everything a run folder records about a trained model: test (clean and shifted), validation,
    cost, the learned exit weights and the feature-reuse probe; with ``evaluation.calibrate`` the temperature
    fitted on the validation split and the calibrated metrics (``calibrated``), with ``evaluation.prune_exits``
    the network with exits pruned (``pruned``). All read from one pass over each set."""
    method = method.to(device).eval()
    normalizer = normalizer.to(device)
    batch = int(cfg.train.eval_batch_size)
    log.info("evaluation: validation set (%d images) ...", len(splits.validation.labels))
    validation_logits, validation_weights = predict_logits(method, splits.validation.images, normalizer, batch, device)
    readouts = {"raw": RAW}
    fit = None
    if cfg.evaluation.get("calibrate", True):
        fit = fit_temperature(validation_logits, validation_weights, splits.validation.labels)
        readouts["calibrated"] = Readout(fit.temperature)
    eps = cfg.evaluation.get("prune_exits")
    if eps is not None and can_prune(method):
        readouts["pruned"] = Readout(weights=pruned_weights(method, eps))
    evaluation = evaluate_readouts(method, splits.test, normalizer, readouts, batch, device, shift_seed=int(cfg.seed),
                                   shifted=bool(cfg.evaluation.shifted))
    weights = method.exit_weights()
    input_shape = model_input_shape(cfg, splits.input_shape)
    log.info("evaluation: cost and feature-reuse probe ...")
    cost = count_cost(method, input_shape)
    results = {
        "format_version": FORMAT_VERSION, "method": cfg.method.name, "dataset": cfg.data.name,
        "data_shape": list(splits.input_shape), "num_classes": splits.num_classes,
        "class_names": None if splits.class_names is None else list(splits.class_names),
        "num_members": method.num_members, "num_exits": method.num_exits, "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "test": evaluation["raw"]["test"], "shifted": evaluation["raw"]["shifted"],
        "validation": classification_metrics(mixture_log_probs(validation_logits, validation_weights),
                                             splits.validation.labels),
        "cost": {"flops": cost.flops, "params": cost.params},
        "exit_weights": None if weights is None else weights.cpu().tolist(),
        "feature_reuse": feature_reuse(method),
    }
    if fit is not None:
        results["calibrated"] = calibrated_section(fit, evaluation["calibrated"])
    if "pruned" in evaluation:
        results["pruned"] = pruned_cost(method, eps, input_shape) | evaluation["pruned"]
    return results


def finish_run(run_dir: Path, cfg: DictConfig, method: Method, normalizer: Normalizer, splits: Splits,
               exit_weight_history: list, train_seconds: float, device: torch.device) -> dict[str, Any]:
    """Evaluate the final model, save its weights and write metrics.json (last, atomically)."""
    start = time.perf_counter()
    results = evaluate_model(cfg, method, normalizer, splits, device)
    results["exit_weights_history"] = exit_weight_history or None
    results["time"] = {"train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - start}
    results["provenance"] = provenance(device)
    save_weights(run_dir / WEIGHTS_FILE, method.cpu(), normalizer.cpu())
    write_calibration_of(run_dir, results)
    write_json_atomic(run_dir / METRICS_FILE, results)
    return results


def write_calibration_of(run_dir: Path, results: dict[str, Any]) -> None:
    """calibration.json from the ``calibrated`` section of fresh results, if they have one."""
    if results.get("calibrated") is not None:
        write_calibration(run_dir, results["calibrated"])


# Sections of metrics.json that post-hoc commands add (mimmo evaluate --anytime / --prune-exits, mimmo calibrate): a
# plain re-evaluation keeps them unless it computes them itself (they depend only on the saved weights).
POSTHOC_SECTIONS = ("anytime", "pruned", "calibrated")


def evaluate_run(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate a finished run folder again (e.g. after the evaluation changed) and update metrics.json.

    Its files are checked and its folder locked before any work: an unreadable metrics.json or config.yaml, a
    missing weights file or a folder that cannot be written are refused up front."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    previous = read_metrics(run_dir) or {}
    with lock(run_dir, "mimmo evaluate"), stop_on_signals():
        method, normalizer, cfg = load_run(run_dir, device)
        splits = load_splits(cfg)
        start = time.perf_counter()
        results = evaluate_model(cfg, method, normalizer, splits, device)
        results["exit_weights_history"] = previous.get("exit_weights_history")
        results["time"] = {**previous.get("time", {}), "evaluate_seconds": time.perf_counter() - start}
        for section in POSTHOC_SECTIONS:
            if section not in results and previous.get(section) is not None:
                results[section] = previous[section]
        write_calibration_of(run_dir, results)
        write_json_atomic(run_dir / METRICS_FILE, results)
    return results
