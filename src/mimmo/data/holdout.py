"""Held-out classes (``data.holdout_classes``): train and validate on the other classes, keep the held-out
classes' test images as a near-OOD set (docs/method.md, "Where the OOD sets come from").

The kept classes are renumbered 0..K'-1 in their original order; ``Splits.class_map`` records the original
label of each new one (it is also written to the run's metrics.json as ``class_map``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from mimmo.data.datasets import ImageSet, Splits

MIN_OOD_IMAGES = 10  # an OOD set smaller than this is refused (its detection metrics would mean little)


def check_holdout_classes(value: object, num_classes: int) -> tuple[int, ...]:
    """The held-out class labels of ``data.holdout_classes`` (null or [] holds none out); ValueError naming the
    value unless it lists distinct labels in [0, K-1] that leave at least 2 classes to train on."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"data.holdout_classes must be a list of class labels, got {value!r}")
    classes = list(value)  # a plain list (also of an OmegaConf list), for the messages
    allowed = f"class labels in [0, {num_classes - 1}]"
    for label in classes:
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
            raise ValueError(f"data.holdout_classes must list {allowed}, got {label!r} in {classes}")
    if len(set(classes)) != len(classes):
        duplicated = sorted({label for label in classes if classes.count(label) > 1})
        raise ValueError(f"data.holdout_classes lists {duplicated} more than once: {classes}")
    if num_classes - len(classes) < 2:
        raise ValueError(f"data.holdout_classes {classes} leaves {num_classes - len(classes)} of the {num_classes} "
                         "classes to train on; hold out fewer, so that at least 2 remain")
    return tuple(classes)


def hold_out_classes(splits: Splits, classes: Sequence[int]) -> Splits:
    """``splits`` without ``classes`` in train and validation, the rest renumbered; the held-out classes' test
    images (at least :data:`MIN_OOD_IMAGES`) become ``holdout``. No classes: ``splits`` unchanged."""
    held = check_holdout_classes(list(classes), splits.num_classes)
    if not held:
        return splits
    kept = [label for label in range(splits.num_classes) if label not in held]
    new_label = torch.full((splits.num_classes,), -1, dtype=torch.int64)
    new_label[kept] = torch.arange(len(kept))

    def keep(part: ImageSet) -> ImageSet:
        index = (new_label[part.labels] >= 0).nonzero().flatten()
        return ImageSet(part.images[index], new_label[part.labels[index]])

    held_index = (new_label[splits.test.labels] < 0).nonzero().flatten()
    if len(held_index) < MIN_OOD_IMAGES:
        raise ValueError(f"data.holdout_classes {list(held)}: the held-out classes have {len(held_index)} test images "
                         f"in {splits.name}'s test split; a near-OOD set needs at least {MIN_OOD_IMAGES}")
    names = None if splits.class_names is None else tuple(splits.class_names[label] for label in kept)
    return replace(splits, train=keep(splits.train), validation=keep(splits.validation), test=keep(splits.test),
                   num_classes=len(kept), class_names=names, holdout=splits.test.subset(held_index),
                   class_map=tuple(kept))
