"""Test-set accuracy."""

from __future__ import annotations

import torch

from infoutil.data.base import ImageDataset
from infoutil.distributed import Context


def accuracy(model: torch.nn.Module, dataset: ImageDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on every image of ``dataset``, in one process."""
    return Context().sharded_accuracy(model, dataset, batch_size)
