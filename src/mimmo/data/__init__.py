"""Data: in-memory uint8 datasets, their registry, splits, normalisation (and the test-time shifts in ``shifts``)."""

from mimmo.data.datasets import ImageSet, Normalizer, Splits, load_cifar, load_embedded
from mimmo.data.folder import load_folder
from mimmo.data.registry import (
    DATASETS,
    DatasetSpec,
    check_data,
    dataset_shape,
    load_data,
    register_dataset,
)

__all__ = ["DATASETS", "DatasetSpec", "ImageSet", "Normalizer", "Splits", "check_data", "dataset_shape",
           "load_cifar", "load_data", "load_embedded", "load_folder", "register_dataset"]
