"""Datasets as in-memory uint8 tensors: the embedded default, CIFAR-10/100 from a local copy (or downloaded:
``mimmo.data.download``), a folder of images (``mimmo.data.folder``). ``mimmo.data.registry`` declares them.

Every loader returns a :class:`Splits` of train, validation and test :class:`ImageSet` s. Images stay
uint8 (N, C, H, W) until a batch is on the device, where :class:`Normalizer` turns them into floats.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mimmo.data.safe_pickle import safe_load


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels {tuple(self.labels.shape)} do not match images {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set on ``device`` (on a GPU, batches are then cut without a host-to-device copy per step)."""
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Splits:
    name: str
    train: ImageSet
    validation: ImageSet
    test: ImageSet
    num_classes: int
    class_names: tuple[str, ...] | None = None  # label k's name, for reports (None: the labels' numbers)
    # With data.holdout_classes (mimmo.data.holdout): the held-out classes' test images (their original labels),
    # the near-OOD set, and the original label of each label of the remapped label space.
    holdout: ImageSet | None = None
    class_map: tuple[int, ...] | None = None
    # Other datasets' test images, matched to this data's shape, as OOD sets (evaluation.ood_sets;
    # mimmo.evaluation.ood_sets.with_ood_datasets): {name: images}.
    ood_datasets: dict[str, ImageSet] | None = None

    def __post_init__(self) -> None:
        for part in ("train", "validation", "test"):
            labels = getattr(self, part).labels
            if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < self.num_classes):
                raise ValueError(f"{self.name}: the {part} labels must lie in [0, {self.num_classes - 1}] "
                                 f"({self.num_classes} classes), got values from {int(labels.min())} to "
                                 f"{int(labels.max())}")
        shapes = {part.images.shape[1:] for part in (self.train, self.validation, self.test)}
        if len(shapes) != 1:
            raise ValueError(f"{self.name}: the train, validation and test images differ in shape: {sorted(shapes)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


class Normalizer(torch.nn.Module):
    """uint8 or [0, 1] float images -> per-channel standardised floats, on the images' device.

    The mean and standard deviation come from the training split and are saved with the model. With
    ``flatten`` the standardised images (B, C, H, W) leave as vectors (B, C*H*W), for backbones that take
    flat inputs (the MLP); the test-time shifts still apply to the images before.
    """

    def __init__(self, mean: Tensor, std: Tensor, flatten: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, -1, 1, 1))
        self.flatten = bool(flatten)

    @classmethod
    def fit(cls, images: Tensor, flatten: bool = False) -> Normalizer:
        """Statistics of uint8 images (N, C, H, W) on the [0, 1] scale."""
        x = images.double() / 255.0
        return cls(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6), flatten)

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}, flatten={self.flatten}"

    @staticmethod
    def to_unit(images: Tensor) -> Tensor:
        """uint8 -> float in [0, 1] (floats pass through)."""
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images

    def forward(self, images: Tensor) -> Tensor:
        x = (self.to_unit(images) - self.mean) / self.std
        return x.flatten(1) if self.flatten else x


def stratified_split(labels: Tensor, fraction: float, generator: torch.Generator,
                     total: int | None = None) -> tuple[Tensor, Tensor]:
    """Split indices into (rest, held_out) with ``fraction`` of every class held out, shuffled.

    With ``total``, exactly ``total`` samples are held out: each class gets floor(n_c * fraction) and the
    classes with the largest remainders one more (largest-remainder apportionment).
    """
    classes = labels.unique(sorted=True)
    members = [(labels == label).nonzero().flatten() for label in classes]
    quotas = torch.tensor([len(index) * fraction for index in members], dtype=torch.float64)
    if total is None:
        counts = quotas.round().long()
    else:
        counts = quotas.floor().long()
        remainder = quotas - counts
        extra = total - int(counts.sum())
        counts[remainder.argsort(descending=True, stable=True)[:extra]] += 1
    rest, held = [], []
    for index, num_held in zip(members, counts.tolist(), strict=True):
        index = index[torch.randperm(len(index), generator=generator)]
        held.append(index[:num_held])
        rest.append(index[num_held:])
    rest_t, held_t = torch.cat(rest), torch.cat(held)
    return (rest_t[torch.randperm(len(rest_t), generator=generator)],
            held_t[torch.randperm(len(held_t), generator=generator)])


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")


def check_every_class_trains(name: str, before: Tensor, after: Tensor, cause: str, hint: str,
                             class_names: tuple[str, ...] | None = None) -> None:
    """Refuse a split that leaves a class of the labels ``before`` without a training image in ``after``, naming
    the classes, the ``cause`` (the setting that drew the split) and a ``hint``."""
    missing = sorted(set(before.unique().tolist()) - set(after.unique().tolist()))
    if missing:
        names = [class_names[k] if class_names else k for k in missing]
        raise ValueError(f"{name}: {cause} leaves the class(es) {names} without a training image; {hint}")


def check_train_size_keeps_every_class(name: str, before: Tensor, after: Tensor, train_size: int, num_classes: int,
                                       class_names: tuple[str, ...] | None = None) -> None:
    """Refuse a ``data.train_size`` whose stratified draw leaves a class out (always so below one per class)."""
    if train_size < num_classes:
        cause, hint = f"data.train_size={train_size}, fewer than the {num_classes} classes,", \
            f"raise it to at least {num_classes}"
    else:
        cause, hint = f"data.train_size={train_size} (kept per class in proportion, rounded)", "raise it"
    check_every_class_trains(name, before, after, cause, hint, class_names)


def split_train(name: str, train: ImageSet, test: ImageSet, num_classes: int, validation_fraction: float,
                seed: int, train_size: int | None = None, class_names: tuple[str, ...] | None = None) -> Splits:
    """Hold out ``validation_fraction`` of ``train`` (stratified, drawn from ``seed``); optionally keep only
    ``train_size`` training images (stratified) to study the overfitting regime."""
    _check_fraction("validation_fraction", validation_fraction)
    generator = torch.Generator().manual_seed(seed)
    train_index, validation_index = stratified_split(train.labels, validation_fraction, generator)
    if len(validation_index) == 0:
        raise ValueError(f"{name}: validation_fraction {validation_fraction} of {len(train)} training images holds "
                         "out no image of any class; raise it (or give the dataset more images)")
    train_part = train.subset(train_index)
    check_every_class_trains(name, train.labels, train_part.labels,
                             f"data.validation_fraction={validation_fraction} (held out per class, rounded)",
                             "lower it or give those classes more images", class_names)
    if train_size is not None:
        if not 0 < train_size <= len(train_part):
            raise ValueError(f"train_size must lie in [1, {len(train_part)}] (the training split), got {train_size}")
        if train_size < len(train_part):
            _, keep = stratified_split(train_part.labels, train_size / len(train_part), generator, total=train_size)
            check_train_size_keeps_every_class(name, train_part.labels, train_part.labels[keep], train_size,
                                               num_classes, class_names)
            train_part = train_part.subset(keep)
    return Splits(name, train_part, train.subset(validation_index), test, num_classes, class_names)


def with_label_noise(splits: Splits, fraction: float, seed: int) -> Splits:
    """Symmetric label noise on the training split only: exactly round(``fraction`` × N) training images, drawn
    from ``seed``, get a label drawn uniformly from the other K − 1 classes. Validation and test labels stay clean.

    The draw depends on the seed and the split alone, so every method trained with a seed sees the same noisy
    labels. A stress test (memorisation of wrong labels makes an unregularised network's held-out NLL rise,
    as the paper's Base does on CIFAR-100), not a property of the data."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.label_noise must lie in [0, 1) (the fraction of training labels replaced), "
                         f"got {fraction!r}")
    if fraction == 0.0:
        return splits
    if splits.num_classes < 2:
        raise ValueError(f"{splits.name}: label noise needs at least 2 classes, got {splits.num_classes}")
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # a stream of its own, apart from the split's
    labels = splits.train.labels.clone()
    flipped = torch.randperm(len(labels), generator=generator)[:round(fraction * len(labels))]
    offset = torch.randint(1, splits.num_classes, (len(flipped),), generator=generator)
    labels[flipped] = (labels[flipped] + offset) % splits.num_classes
    return replace(splits, train=ImageSet(splits.train.images, labels))


def load_embedded(seed: int, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                  train_size: int | None = None) -> Splits:
    """animal-shape-mnist: 28x28 grey silhouettes of 10 animals, shipped in its wheel.

    Exact duplicate images are dropped (they would leak between splits); the test split is a stratified
    ``test_fraction`` drawn from ``seed``, and ``validation_fraction`` of the rest is held out.
    """
    _check_fraction("test_fraction", test_fraction)
    folder = importlib.resources.files("animal_shape_mnist") / "data" / "Animal Shape"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:  # type: ignore[arg-type]
        images = np.asarray(safe_load(f), dtype=np.uint8)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:  # type: ignore[arg-type]
        labels = np.asarray(safe_load(f), dtype=np.int64)
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    data = ImageSet(torch.from_numpy(images[keep][:, None].copy()), torch.from_numpy(labels[keep].copy()))
    generator = torch.Generator().manual_seed(seed)
    rest, test = stratified_split(data.labels, test_fraction, generator)
    num_classes = int(data.labels.max()) + 1
    return split_train("embedded", data.subset(rest), data.subset(test), num_classes, validation_fraction,
                       seed + 1, train_size)


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
CIFAR_META = {"cifar10": ("batches.meta", b"label_names"), "cifar100": ("meta", b"fine_label_names")}
CIFAR_HELP = ("Pass data.download=true to download it, or download the python version of CIFAR from "
              "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz or cifar-100-python.tar.gz), "
              "unpack it under the data root, and pass data.root=DIR (or set MIMMO_DATA).")


def _read_cifar_files(folder: Path, files: list[str], label_key: bytes) -> ImageSet:
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"expected the CIFAR file {path}, which does not exist. {CIFAR_HELP}")
        try:
            with open(path, "rb") as f:
                batch = safe_load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"b'data' must be an array of shape (N, 3072), got {data.shape}")
            data = data.reshape(-1, 3, 32, 32)
            label = np.asarray(batch[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, IndexError, AttributeError, ValueError, TypeError,
                OverflowError, MemoryError) as error:
            raise ValueError(f"{path} is not a valid CIFAR python-pickle batch ({error!r}). {CIFAR_HELP}") from error
        if len(data) != len(label):
            raise ValueError(f"{path} holds {len(data)} images but {len(label)} labels. {CIFAR_HELP}")
        images.append(torch.from_numpy(data))
        labels.append(torch.from_numpy(label))
    return ImageSet(torch.cat(images), torch.cat(labels))


def load_cifar(name: str, root: str | Path, seed: int, validation_fraction: float = 0.1,
               train_size: int | None = None) -> Splits:
    """CIFAR-10/100 from ``root``/cifar-10-batches-py or ``root``/cifar-100-python (python pickles)."""
    folder_name, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[name]
    folder = Path(root).expanduser() / folder_name
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: expected the folder {folder}, which does not exist. {CIFAR_HELP}")
    train = _read_cifar_files(folder, train_files, label_key)
    test = _read_cifar_files(folder, test_files, label_key)
    return split_train(name, train, test, num_classes, validation_fraction, seed, train_size,
                       _cifar_class_names(name, folder, num_classes))


def _cifar_class_names(name: str, folder: Path, num_classes: int) -> tuple[str, ...] | None:
    """The label names from the CIFAR meta file, or None if the folder has none (the data stays usable)."""
    meta_file, key = CIFAR_META[name]
    path = folder / meta_file
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            meta = safe_load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, AttributeError, ValueError, TypeError,
            OverflowError, MemoryError) as error:
        raise ValueError(f"{path} is not a valid CIFAR meta file ({error!r}); restore it from the "
                         f"archive, or remove it (the class names are then the labels' numbers). {CIFAR_HELP}"
                         ) from error
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes:
        raise ValueError(f"{path} does not list {num_classes} class names under {key!r}")
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: the class names under {key!r} are not UTF-8 text ({error})") from error
