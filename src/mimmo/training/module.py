"""The Lightning module that trains any method with the configured recipe, one training step at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import DictConfig

from mimmo.data.augment import augmentation, member_views
from mimmo.data.datasets import ImageSet, Normalizer, Splits
from mimmo.data.loader import BatchLoader
from mimmo.evaluation.metrics import classification_metrics
from mimmo.methods.base import Method, Progress
from mimmo.training.build import channels_last_is_safe
from mimmo.training.compat import counted_step
from mimmo.training.loggers import log_exit_weights
from mimmo.training.recipe import build_optimizer, build_schedule, setting
from mimmo.training.step import CudaGraphs, GraphBackend, TrainingStep, eager_reason, prepare_optimizer


def cuda_graphs_available(device: torch.device, world_size: int) -> bool:
    """Whether training steps can be replayed as CUDA graphs: one process on a CUDA device."""
    return device.type == "cuda" and world_size == 1


def make_graph_backend(device: torch.device) -> GraphBackend:
    """How training steps are captured on ``device`` (tests put a stand-in here to run the graphed path on a CPU)."""
    return CudaGraphs(device)


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
        self.graphs_off_reason: str | None = None  # why steps are eager (known at the first step)
        self.graph_records: list[dict[str, Any]] = []  # of earlier fits (a resumed run's checkpoint) and this one
        self.epoch_sums: torch.Tensor | None = None
        self.augment = augmentation(setting(cfg.train, "augment"))  # None for train.augment=none

    def uses_cuda_graphs(self) -> bool:
        """``train.cuda_graphs``: auto (the default) replays training steps as CUDA graphs on a GPU when one
        process trains with Adam in 32-bit or bf16-mixed precision, without ``train.compile``; any other run is
        eager (:func:`~mimmo.training.step.eager_reason`), and true refuses it. Records why steps are eager."""
        graphs = self.train_cfg.get("cuda_graphs", "auto")
        single = isinstance(self.trainer.strategy, SingleDeviceStrategy)
        reason = eager_reason(self.train_cfg, "single_device" if single else type(self.trainer.strategy).__name__)
        if not cuda_graphs_available(self.device, self.trainer.world_size):
            reason = (f"training on {self.device.type}, not a CUDA device" if self.device.type != "cuda"
                      else f"{self.trainer.world_size} processes")
        if graphs is True and reason is not None:
            raise ValueError(f"train.cuda_graphs=true needs one CUDA device and one process; this run trains on "
                             f"{self.device.type} with {self.trainer.world_size} process(es): {reason} (use auto or "
                             "false)")
        self.graphs_off_reason = "train.cuda_graphs=false" if graphs is False else reason
        return self.graphs_off_reason is None

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
        self.release_step()  # a new fit has a new optimiser: its step is made at the first batch
        self.epoch_sums = None
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
                                     graphs=make_graph_backend(self.device) if graphs else None, module=self.method,
                                     required=self.train_cfg.get("cuda_graphs", "auto") is True)
        if self.augment is not None and self.method.augment_views > 1:  # one view per member, augmented apart
            images, labels = member_views(images, labels, self.method.augment_views)
        stats = counted_step(optimizer, lambda: self.step(images, labels, progress))
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
                f"{first_batch + index}; the run stops here and its last good checkpoint is {self.last_checkpoint()}")

    def last_checkpoint(self) -> str:
        """Where the trainer's checkpoint callback keeps the last whole epoch (the run folder's last.ckpt)."""
        callback = self.trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            return "none (this trainer saves no checkpoint)"
        return str(Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}")

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
            log_exit_weights(self.loggers, self.exit_weight_history[-1], self.global_step)  # for train.loggers

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
        checkpoint["cuda_graphs"] = self.cuda_graphs_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.exit_weight_history = checkpoint.get("exit_weight_history", [])
        self.graph_records = [checkpoint["cuda_graphs"]] if checkpoint.get("cuda_graphs") else []

    def release_step(self) -> None:
        """Drop the training step and its CUDA graph (end of a fit): its counts are kept for metrics.json."""
        if self.step is not None:
            self.graph_records.append(self.step.record())
            self.step.release()
        self.step = None

    def cuda_graphs_record(self) -> dict[str, Any]:
        """metrics.json's ``cuda_graphs``: the setting, whether steps were replayed as graphs, why they fell back to
        eager steps (if they did), the captures and replays (over the run's fits), and why steps were eager."""
        records = [*self.graph_records, *([self.step.record()] if self.step is not None else [])]
        return {"requested": self.train_cfg.get("cuda_graphs", "auto"),
                "used": any(r["used"] for r in records),
                "fallback_reason": next((r["fallback_reason"] for r in records if r["fallback_reason"]), None),
                "captures": sum(r["captures"] for r in records), "replays": sum(r["replays"] for r in records),
                "off_reason": self.graphs_off_reason}

