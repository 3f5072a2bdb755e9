"""Dataset names as used in configs (``data=<name>``): one declaration per dataset.

A :class:`DatasetSpec` says, from the ``data`` config alone, the input shape and number of classes (so that
``mimmo cost`` needs no data), whether the data is there (checked before a run or a grid starts), and how to
load it into :class:`~mimmo.data.datasets.Splits`. Adding a dataset: write a loader returning ``Splits`` of
uint8 (N, C, H, W) images, declare it with :func:`register_dataset`, and add ``configs/data/<name>.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimmo.data.datasets import CIFAR_HELP, CIFAR_LAYOUT, Splits, load_cifar, load_embedded, with_label_noise
from mimmo.data.download import download_cifar
from mimmo.data.folder import (
    check_channels,
    check_folder,
    folder_classes,
    folder_identity,
    image_size,
    load_folder,
)
from mimmo.data.holdout import check_holdout_classes, hold_out_classes

DataConfig = Mapping[str, Any]  # the ``data`` config: name plus the dataset's options
DEFAULT_ROOT = "~/.cache/mimmo"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its shape and classes, a check that its files are there, and its loader."""

    name: str
    describe: Callable[[DataConfig], tuple[tuple[int, ...], int]]  # (input shape (C, H, W), number of classes)
    check: Callable[[DataConfig], None]  # FileNotFoundError naming the dataset and the missing path
    load: Callable[[DataConfig, int], Splits]  # (config, seed) -> splits
    # For a dataset whose files data.root chooses: what identifies them (names, counts, sizes; no image read), or
    # None where they are not there; a run records it and refuses to resume or be skipped on other data.
    identity: Callable[[DataConfig], dict[str, Any] | None] | None = None


def data_root(data: DataConfig) -> Path:
    """``data.root``, else ``$MIMMO_DATA``, else ``~/.cache/mimmo``."""
    root = data.get("root") or os.environ.get("MIMMO_DATA") or DEFAULT_ROOT
    return Path(str(root)).expanduser()


def _embedded_check(data: DataConfig) -> None:
    import importlib.util

    if importlib.util.find_spec("animal_shape_mnist") is None:
        raise FileNotFoundError("dataset embedded: the package animal-shape-mnist is not installed "
                                "(pip install animal-shape-mnist==0.39)")


def _embedded_load(data: DataConfig, seed: int) -> Splits:
    return load_embedded(seed, data.get("validation_fraction", 0.1), data.get("test_fraction", 0.2),
                         data.get("train_size"))


def _cifar(name: str) -> DatasetSpec:
    folder, num_classes = CIFAR_LAYOUT[name][0], CIFAR_LAYOUT[name][4]

    def check(data: DataConfig) -> None:
        path = data_root(data) / folder
        if not path.is_dir() and not data.get("download", False):
            raise FileNotFoundError(f"dataset {name}: expected the folder {path}, which does not exist. {CIFAR_HELP}")

    def load(data: DataConfig, seed: int) -> Splits:
        root = data_root(data)
        if data.get("download", False):
            download_cifar(name, root)
        return load_cifar(name, root, seed, data.get("validation_fraction", 0.1), data.get("train_size"))

    def identity(data: DataConfig) -> dict[str, Any] | None:
        path = data_root(data) / folder
        if not path.is_dir():
            return None  # to be downloaded: the official archive, MD5 checked
        return {"files": {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}}

    return DatasetSpec(name, lambda data: ((3, 32, 32), num_classes), check, load, identity)


def _folder_describe(data: DataConfig) -> tuple[tuple[int, ...], int]:
    height, width = image_size(data.get("size", 32))
    return (check_channels(data.get("channels", 3)), height, width), len(folder_classes(data.get("root")))


def _folder_load(data: DataConfig, seed: int) -> Splits:
    return load_folder(data.get("root"), seed, data.get("size", 32), data.get("channels", 3),
                       data.get("validation_fraction", 0.1), data.get("train_size"))


def _folder_identity(data: DataConfig) -> dict[str, Any] | None:
    root = data.get("root")
    if root is None or not (Path(str(root)).expanduser() / "train").is_dir():
        return None  # not there: the check names the missing folder
    return folder_identity(root)


DATASETS: dict[str, DatasetSpec] = {
    "embedded": DatasetSpec("embedded", lambda data: ((1, 28, 28), 10), _embedded_check, _embedded_load),
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "folder": DatasetSpec("folder", _folder_describe, lambda data: check_folder(data.get("root")), _folder_load,
                          _folder_identity),
}


def register_dataset(spec: DatasetSpec) -> None:
    """Make ``data=<spec.name>`` load ``spec`` (a config ``configs/data/<name>.yaml`` gives its options)."""
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError(f"a dataset name must be a non-empty string, got {spec.name!r}")
    DATASETS[spec.name] = spec


def dataset_spec(data: DataConfig) -> DatasetSpec:
    name = data.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def dataset_shape(data: DataConfig) -> tuple[tuple[int, ...], int]:
    """Input shape (C, H, W) and number of classes of the configured dataset, without loading it (the classes
    left after ``data.holdout_classes``, which is checked here)."""
    shape, num_classes = dataset_spec(data).describe(data)
    return shape, num_classes - len(check_holdout_classes(data.get("holdout_classes"), num_classes))


def check_data(data: DataConfig) -> None:
    """Raise FileNotFoundError (naming the dataset and the path) unless the data is there or will be downloaded."""
    dataset_spec(data).check(data)


def dataset_identity(data: DataConfig) -> dict[str, Any] | None:
    """What identifies the files of the configured dataset where ``data.root`` chooses them (``data=folder``: class
    names, images per split and class, a hash of the files' paths and sizes; CIFAR: its files' sizes); None for a
    dataset without one (the embedded data) or whose files are not there yet."""
    spec = dataset_spec(data)
    return None if spec.identity is None else spec.identity(data)


def identity_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], shown: int = 4) -> list[str]:
    """How the dataset ``current`` differs from the ``recorded`` one, in words (empty when they are the same)."""
    def flat(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}/") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
        return out

    then, now = flat(recorded), flat(current)
    changed = [key for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]
    words = [f"{key}: {then.get(key)} then, {now.get(key)} now" for key in changed if key != "files_sha256"]
    if len(words) > shown:
        words = [*words[:shown], f"and {len(words) - shown} more"]
    if not words and changed:
        words = ["the same classes and image counts, but other file names or sizes"]
    return words


def load_data(data: DataConfig, seed: int) -> Splits:
    """The configured dataset's splits, drawn from ``seed``; with ``data.holdout_classes`` those classes held out
    (:func:`mimmo.data.holdout.hold_out_classes`), then with ``data.label_noise`` the training labels noisy
    (:func:`mimmo.data.datasets.with_label_noise`)."""
    spec = dataset_spec(data)
    spec.check(data)
    splits = spec.load(data, seed)
    splits = hold_out_classes(splits, check_holdout_classes(data.get("holdout_classes"), splits.num_classes))
    return with_label_noise(splits, float(data.get("label_noise", 0.0)), seed)
