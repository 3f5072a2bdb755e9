"""A run's checkpoints, training log and final weights: written atomically, read back safely, and a finished run
rebuilt from its folder (:func:`load_run`)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mimmo.data.datasets import Normalizer
from mimmo.methods.base import Method
from mimmo.runs.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    atomic_path,
    disk_full,
    is_disk_full,
    read_config,
    read_metrics,
    temporary_name,
)
from mimmo.training.build import build_method_from_config, flattens_images, input_spec
from mimmo.training.compat import WritingCheckpoint


class AtomicCheckpoint(WritingCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it, so last.ckpt is never half-written."""

    def write(self, trainer: L.Trainer, filepath: str) -> None:
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded with ``weights_only=True`` (tensors and plain types only: a crafted file
    cannot run code); ValueError saying how to start over when it is truncated or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        run_dir = path.parent.parent
        raise ValueError(f"{path} is truncated or corrupt and cannot be resumed from ({str(error).splitlines()[0]}); "
                         f"to start this run over, remove {path} (or the whole folder {run_dir})") from error


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
    method = build_method_from_config(cfg, input_shape, num_classes, training=False)
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

