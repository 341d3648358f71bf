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
from infoutil.data.cache import resolve_cache_dir
from infoutil.data.roots import resolve_data_root
from infoutil.data.sources import DATASETS, load_dataset

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
