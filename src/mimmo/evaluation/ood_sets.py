"""The OOD sets a run is evaluated on (docs/method.md, "Where the OOD sets come from"):

- ``holdout``: the test images of the classes held out of training (``data.holdout_classes``; near-OOD);
- ``gaussian`` and ``uniform``: synthetic noise images at the data's shape, drawn from the seed (far-OOD,
  always available): every pixel i.i.d., N(0.5, 1) clipped to [0, 1] or U[0, 1] (as in Hendrycks et al.,
  2019), as many images as the in-distribution test set, at most :data:`MAX_NOISE_IMAGES`;
- every dataset of ``evaluation.ood_sets``: its test split, channels matched (grey <-> RGB) and resized
  (bilinear, antialiased) to the data's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mimmo.config import CONFIG_DIR
from mimmo.data.datasets import ImageSet, Splits
from mimmo.data.holdout import MIN_OOD_IMAGES
from mimmo.data.registry import DATASETS, dataset_shape, dataset_spec

NOISE_SETS = ("gaussian", "uniform")
MAX_NOISE_IMAGES = 2000
NOISE_SEED_OFFSET = {"gaussian": 2_000_003, "uniform": 3_000_017}  # streams of their own, apart from the split's
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, RGB -> grey


def ood_enabled(cfg: DictConfig) -> bool:
    """``evaluation.ood`` (true for runs saved before it existed); ValueError unless a boolean."""
    value = OmegaConf.select(cfg, "evaluation.ood", default=True)
    if not isinstance(value, bool):
        raise ValueError(f"evaluation.ood must be true or false, got {value!r}")
    return value


def _entries(cfg: DictConfig) -> list[dict[str, Any]]:
    """``evaluation.ood_sets`` as data configs: a name takes its configs/data/<name>.yaml defaults (and the
    in-distribution data's root, unless either is a folder dataset); a mapping gives its own options."""
    value = OmegaConf.select(cfg, "evaluation.ood_sets", default=None)
    if value is None:
        return []
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"evaluation.ood_sets must be a list of dataset names or {{name: ..., option: ...}} "
                         f"mappings, got {value!r}")
    entries, names = [], []
    for item in value:
        entry = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else None
        if entry is None or entry.get("name") not in DATASETS:
            raise ValueError(f"evaluation.ood_sets: {item!r} is not a dataset; give one of {sorted(DATASETS)} "
                             "(or a mapping with its name and options)")
        path = Path(CONFIG_DIR) / "data" / f"{entry['name']}.yaml"
        defaults = OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else {}
        own_root = isinstance(item, Mapping) and "root" in item
        if not own_root and "folder" not in (entry["name"], cfg.data.name) and cfg.data.get("root") is not None:
            entry["root"] = cfg.data.root
        entry = {**defaults, **entry, "holdout_classes": None, "label_noise": 0.0, "train_size": None}
        if entry["name"] in names:
            raise ValueError(f"evaluation.ood_sets names {entry['name']!r} twice (an OOD set is named after its "
                             "dataset)")
        names.append(entry["name"])
        entries.append(entry)
    return entries


def check_ood_config(cfg: DictConfig) -> None:
    """Refuse bad ``evaluation.ood`` / ``evaluation.ood_sets`` settings before anything runs: ValueError naming the
    value (an unknown dataset, one named twice, channels that cannot be matched), FileNotFoundError for a dataset
    whose files are missing."""
    ood_enabled(cfg)
    entries = _entries(cfg)
    if not entries:
        return
    channels = dataset_shape(cfg.data)[0][0]
    for entry in entries:
        other = dataset_shape(entry)[0][0]
        if not can_match_channels(other, channels):
            raise ValueError(f"evaluation.ood_sets: dataset {entry['name']!r} has {other} channels, which cannot be "
                             f"matched to the data's {channels} (same number, or grey 1 <-> RGB 3)")
        dataset_spec(entry).check(entry)


def can_match_channels(have: int, want: int) -> bool:
    return have == want or {have, want} == {1, 3}


def match_images(images: Tensor, shape: Sequence[int]) -> Tensor:
    """uint8 images (N, C', H', W') with their channels matched (RGB -> grey by BT.601 luma, grey -> RGB by
    repetition) and resized (bilinear, antialiased) to ``shape`` (C, H, W)."""
    channels, height, width = shape
    if not can_match_channels(images.shape[1], channels):
        raise ValueError(f"images with {images.shape[1]} channels cannot be matched to {channels} "
                         "(same number, or grey 1 <-> RGB 3)")
    x = images.float()
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def with_ood_datasets(cfg: DictConfig, splits: Splits) -> Splits:
    """``splits`` with the test images of every ``evaluation.ood_sets`` dataset, matched to its shape, as
    ``ood_datasets`` (loaded now, so that a run refuses a bad set before its folder exists); ValueError for a
    set of fewer than :data:`MIN_OOD_IMAGES` images."""
    check_ood_config(cfg)
    entries = _entries(cfg)
    if not entries:
        return splits
    loaded = {}
    for entry in entries:
        test = dataset_spec(entry).load(entry, int(cfg.seed)).test
        if len(test) < MIN_OOD_IMAGES:
            raise ValueError(f"evaluation.ood_sets: dataset {entry['name']!r} has {len(test)} test images; an OOD set "
                             f"needs at least {MIN_OOD_IMAGES}")
        images = match_images(test.images, splits.input_shape)
        loaded[entry["name"]] = ImageSet(images, torch.full((len(images),), -1, dtype=torch.int64))
    return replace(splits, ood_datasets=loaded)


def noise_images(kind: str, count: int, shape: Sequence[int], seed: int) -> Tensor:
    """``count`` uint8 noise images of ``shape`` (C, H, W), drawn from ``seed``: ``gaussian`` N(0.5, 1) clipped
    to [0, 1], or ``uniform`` U[0, 1], per pixel."""
    if kind not in NOISE_SEED_OFFSET:
        raise ValueError(f"unknown noise {kind!r}; choose one of {list(NOISE_SEED_OFFSET)}")
    generator = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET[kind])
    size = (count, *shape)
    if kind == "gaussian":
        x = (0.5 + torch.randn(size, generator=generator)).clamp(0.0, 1.0)
    else:
        x = torch.rand(size, generator=generator)
    return (x * 255.0).round().to(torch.uint8)


def ood_sets(cfg: DictConfig, splits: Splits, force: bool = False) -> dict[str, ImageSet]:
    """Every OOD set of the run, {name: images} (labels -1): ``holdout`` (if classes were held out), the noise
    sets, then ``splits.ood_datasets``; {} with ``evaluation.ood=false`` unless ``force``."""
    if not (ood_enabled(cfg) or force):
        return {}
    sets: dict[str, ImageSet] = {}
    if splits.holdout is not None:
        sets["holdout"] = ImageSet(splits.holdout.images, torch.full((len(splits.holdout),), -1, dtype=torch.int64))
    count = max(MIN_OOD_IMAGES, min(len(splits.test), MAX_NOISE_IMAGES))
    for kind in NOISE_SETS:
        sets[kind] = ImageSet(noise_images(kind, count, splits.input_shape, int(cfg.seed)),
                              torch.full((count,), -1, dtype=torch.int64))
    sets.update(splits.ood_datasets or {})
    return sets
