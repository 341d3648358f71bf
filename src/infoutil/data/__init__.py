"""Datasets: named sources, explicit class order, batched augmentations."""

from infoutil.data.base import (
    DatasetInfo,
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
    ValidationSplit,
    per_class_sample,
    split_train_val,
    subset,
)
from infoutil.data.sources import DATASETS, load_dataset, resolve_cache_dir, resolve_data_root

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FolderImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "ValidationSplit",
    "load_dataset",
    "per_class_sample",
    "resolve_cache_dir",
    "resolve_data_root",
    "split_train_val",
    "subset",
]
