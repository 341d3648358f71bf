"""Test-set accuracy."""

from __future__ import annotations

import torch

from infoutil.data.base import ImageDataset
from infoutil.distributed import Context
from infoutil.models import inference_batch


def accuracy(model: torch.nn.Module, dataset: ImageDataset, batch_size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on every image of ``dataset``, in one process; batches sized
    from the input size and the memory available unless given."""
    batch = batch_size or inference_batch(model, dataset.info)
    return Context().sharded_accuracy(model, dataset, batch)
