"""Scale-out with ``torch.distributed``: ``torchrun --nproc-per-node N -m infoutil ...``.

Under torchrun every command joins the process group it finds in the environment (NCCL on GPU,
gloo on CPU). Without torchrun this module is a single-process no-op. Nothing here schedules
work itself: ranks split data by index, and collectives combine results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from infoutil.data.augment import to_float
from infoutil.data.base import ImageDataset


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> None:
    """Join the process group torchrun describes, once; a no-op in a single process."""
    if _env_world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``model`` when there are several ranks."""
        if not self.active:
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard_batch(self, *tensors: torch.Tensor):
        """This rank's contiguous slice of a global batch (every rank built the same batch)."""
        if not self.active:
            return tensors if len(tensors) > 1 else tensors[0]
        out = tuple(torch.tensor_split(t, self.world_size)[self.rank] for t in tensors)
        return out if len(out) > 1 else out[0]

    def shard_indices(self, n: int) -> torch.Tensor:
        """Indices ``rank, rank + W, ...`` of ``range(n)``: an even split whatever ``n``."""
        return torch.arange(self.rank, n, self.world_size)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            on = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
            value = value.clone().to(on)
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value.cpu()
        return value

    def all_gather_object(self, obj):
        """A list of every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.inference_mode()
    def sharded_accuracy(
        self, model: torch.nn.Module, dataset: ImageDataset, batch_size: int = 500, transform=None
    ) -> float:
        """Top-1 accuracy over the whole dataset, each rank scoring its share; ``transform``
        (float images in, float images out) changes the images first."""
        was_training = model.training
        model.eval()
        idx = self.shard_indices(len(dataset))
        correct = torch.zeros((), dtype=torch.float64)
        device = next(model.parameters()).device
        for images, labels in dataset.iter_batches(idx, batch_size):
            x = to_float(images).to(device)
            pred = model(x if transform is None else transform(x)).argmax(1).cpu()
            correct += (pred == labels).sum()
        model.train(was_training)
        return float(self.all_sum(correct)) / max(len(dataset), 1)


def context() -> Context:
    init_from_env()
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()
