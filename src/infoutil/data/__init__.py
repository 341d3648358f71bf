"""Datasets: named sources, explicit class order, batched augmentations."""

from infoutil.data.base import (
    DatasetInfo,
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
    per_class_sample,
    subset,
)
from infoutil.data.sources import DATASETS, load_dataset, resolve_cache_dir, resolve_data_root

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FolderImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "load_dataset",
    "per_class_sample",
    "resolve_cache_dir",
    "resolve_data_root",
    "subset",
]
