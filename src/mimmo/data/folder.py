"""A dataset from a folder of images: ``root/train/<class>/*.png|jpg``, ``root/test/<class>/...`` and an
optional ``root/val/<class>/...``.

Classes are the sub-folders of ``train/`` (sorted by name; label k is the k-th); a class folder without an
image is refused. Every image is read with Pillow and brought to 8 bits (:func:`eight_bit`: 16-bit grey and RGB
keep their high byte, palettes are looked up, transparency is composited onto black, other modes are refused
naming the file), converted to grey (1 channel) or RGB (3), resized to ``size`` (bilinear) and kept in memory as
uint8 (N, C, H, W), like every other dataset. Without ``val/``, ``validation_fraction`` of ``train/`` is held
out (stratified, drawn from the seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mimmo.data.datasets import ImageSet, Splits, check_train_size_keeps_every_class, split_train, stratified_split

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PIL_MODES = {1: "L", 3: "RGB"}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's 16-bit grey (older Pillow: "I")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
COLOUR_MODES = ("RGB", "RGBX", "CMYK", "YCbCr")  # converted to RGB by Pillow's own colour conversion
LAYOUT_HELP = ("data=folder reads data.root/train/<class>/*.png|jpg and data.root/test/<class>/... "
               "(and data.root/val/<class>/... if present)")


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (height, width): one integer for square images, or [height, width]."""
    sides = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(sides) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sides):
        raise ValueError(f"data.size must be a positive integer or [height, width], got {size!r}")
    return sides  # type: ignore[return-value]


def check_channels(channels: int) -> int:
    if channels not in PIL_MODES:
        raise ValueError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return channels


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names: the sub-folders of ``root/train``, sorted. FileNotFoundError naming the path if absent."""
    if root is None:
        raise FileNotFoundError(f"data=folder needs data.root=DIR: {LAYOUT_HELP}")
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"dataset folder: expected {train}, which does not exist; {LAYOUT_HELP}")
    classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not classes:
        raise FileNotFoundError(f"dataset folder: {train} holds no class sub-folders; {LAYOUT_HELP}")
    empty = [name for name in classes if not image_files(train / name)]
    if empty:
        raise FileNotFoundError(f"dataset folder: the class folder(s) {[str(train / name) for name in empty]} hold no "
                                f"{'/'.join(IMAGE_SUFFIXES)} image; every sub-folder of train/ is a class: add its "
                                "images or remove it")
    return classes


def folder_identity(root: str | Path) -> dict[str, Any]:
    """What identifies the images under ``root`` without reading them: the class names, the number of images per
    split and class, and a SHA-256 of every image's path and size (a run records it; see
    :func:`mimmo.data.registry.dataset_identity`)."""
    root = Path(root).expanduser()
    counts: dict[str, dict[str, int]] = {}
    lines = []
    for split in ("train", "val", "test"):
        if not (root / split).is_dir():
            continue
        counts[split] = {}
        for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            files = image_files(folder)
            counts[split][folder.name] = len(files)
            lines += [f"{split}/{folder.name}/{path.name}\t{path.stat().st_size}" for path in files]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"classes": list(folder_classes(root)), "images": counts, "files_sha256": digest}


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder (by suffix, sorted by name)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def eight_bit(image: Image, path: Path) -> Image:
    """``image`` as 8-bit grey ("L") or RGB: 16-bit grey keeps its high byte (Pillow does the same for 16-bit
    RGB), a palette is looked up, alpha is composited onto black (each colour times its opacity); CMYK and YCbCr
    are converted. ValueError naming the file and its mode for anything else (float, 32-bit integer, ...)."""
    from PIL import Image as PILImage

    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{path} is a {mode!r} image with values outside 16 bits [0, 65535]; data=folder reads "
                             "8- and 16-bit grey and RGB, palette and RGBA images")
        return PILImage.fromarray((values >> 8).astype(np.uint8), "L")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        grey = image.mode in ("LA", "La")
        values = np.asarray(image.convert("LA" if grey else "RGBA")).astype(np.uint32)
        colour, alpha = values[..., :-1], values[..., -1:]
        blended = ((colour * alpha + 127) // 255).astype(np.uint8)
        return PILImage.fromarray(blended[..., 0] if grey else blended, "L" if grey else "RGB")
    if image.mode in ("1", "L"):
        return image.convert("L")
    if image.mode in COLOUR_MODES:
        return image.convert("RGB")
    raise ValueError(f"{path} has the image mode {mode!r}, which data=folder does not read; save it as 8- or 16-bit "
                     "grey or RGB, a palette image or RGBA")


def check_folder(root: str | Path) -> None:
    """The layout is there: ``train/`` with classes and ``test/`` (images are read only when loading)."""
    folder_classes(root)
    test = Path(root).expanduser() / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"dataset folder: expected {test}, which does not exist; {LAYOUT_HELP}")


def read_images(folder: Path, classes: Sequence[str], size: tuple[int, int], channels: int) -> ImageSet:
    """Every image under ``folder/<class>/`` as uint8 (N, C, H, W) with its class index."""
    from PIL import Image, UnidentifiedImageError

    label_of = {name: index for index, name in enumerate(classes)}
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in label_of)
    if unknown:
        raise ValueError(f"{folder} has class folders {unknown} that train/ does not have; classes: {list(classes)}")
    images, labels = [], []
    height, width = size
    for name in classes:
        class_folder = folder / name
        if not class_folder.is_dir():
            continue
        for path in image_files(class_folder):
            try:
                with Image.open(path) as image:
                    image = eight_bit(image, path).convert(PIL_MODES[channels])
                    if image.size != (width, height):
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
                    array = np.asarray(image, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"{path} is not a readable image ({error})") from error
            images.append(array.reshape(height, width, channels).transpose(2, 0, 1))
            labels.append(label_of[name])
    if not images:
        raise FileNotFoundError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images in its class folders")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def load_folder(root: str | Path, seed: int, size: int | Sequence[int] = 32, channels: int = 3,
                validation_fraction: float = 0.1, train_size: int | None = None) -> Splits:
    """The folder dataset at ``root`` with images of ``size`` and ``channels``; splits drawn from ``seed``."""
    sides, channels = image_size(size), check_channels(channels)
    check_folder(root)
    root = Path(root).expanduser()
    classes = folder_classes(root)
    train = read_images(root / "train", classes, sides, channels)
    test = read_images(root / "test", classes, sides, channels)
    if not (root / "val").is_dir():
        return split_train("folder", train, test, len(classes), validation_fraction, seed, train_size, classes)
    validation = read_images(root / "val", classes, sides, channels)
    if train_size is not None:
        if not 0 < train_size <= len(train):
            raise ValueError(f"train_size must lie in [1, {len(train)}] (the training split), got {train_size}")
        if train_size < len(train):
            generator = torch.Generator().manual_seed(seed)
            _, keep = stratified_split(train.labels, train_size / len(train), generator, total=train_size)
            check_train_size_keeps_every_class("folder", train.labels, train.labels[keep], train_size, len(classes),
                                               classes)
            train = train.subset(keep)
    return Splits("folder", train, validation, test, len(classes), classes)
