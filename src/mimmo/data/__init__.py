"""Data: in-memory uint8 datasets, splits, normalisation (and the test-time shifts in ``shifts``)."""

from mimmo.data.datasets import (
    DATASET_SHAPES,
    DATASETS,
    ImageSet,
    Normalizer,
    Splits,
    load_cifar,
    load_dataset,
    load_embedded,
)

__all__ = ["DATASETS", "DATASET_SHAPES", "ImageSet", "Normalizer", "Splits", "load_cifar", "load_dataset",
           "load_embedded"]
