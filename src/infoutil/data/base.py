"""Datasets as explicit data: uint8 images, integer labels, and a record of what they are."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infoutil.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, recorded in every checkpoint and manifest."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def low_resolution(self) -> bool:
        """The paper's split: CIFAR and Tiny-ImageNet (<= 64 px) are low resolution."""
        return self.image_size <= 64

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        return cls(
            name=d["name"],
            class_names=tuple(d["class_names"]),
            image_size=int(d["image_size"]),
            channels=int(d["channels"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
        )


class ImageDataset(torch.utils.data.Dataset):
    """A split of a labelled image dataset.

    Items are ``(uint8 tensor [C, H, W], label)``. ``targets`` holds every label, ``ids`` a
    stable source id per image (an archive member, a file path or ``split:index``) for provenance.
    """

    info: DatasetInfo
    split: str
    targets: torch.Tensor
    # set on both parts of a training set split by a ValidationSplit: its record
    # (rule, count, hash of the held-out indices), which every output copies
    validation: dict | None = None

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.get_batch([index])[0], int(self.targets[index])

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def source_id(self, index: int) -> str:
        raise NotImplementedError

    def resident_bytes(self) -> int:
        """The memory its images hold while loaded (0 where they are read on demand)."""
        return 0

    def class_indices(self, label: int) -> torch.Tensor:
        return torch.nonzero(self.targets == label).flatten()

    def iter_batches(
        self, indices: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(uint8 images, labels)`` for ``indices`` in order, ``batch_size`` at a time."""
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield self.get_batch(chunk), self.targets[chunk]


class TensorImageDataset(ImageDataset):
    """A dataset of uint8 images in one tensor: in memory (CIFAR, Fashion-MNIST) or mapped
    from the cache (``data.cache``), optionally through an index (a ``subset``), so that a
    part of a split is a view, not a copy: only the images a stage reads are paged in."""

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        images,  # uint8 [N, C, H, W]: a tensor, or rows read on demand (data.rows.RowFile)
        targets: torch.Tensor,
        ids: Sequence[str] | None = None,
        index: torch.Tensor | None = None,
    ):
        if isinstance(images, torch.Tensor) and (images.dtype != torch.uint8 or images.dim() != 4):
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        self.info = info
        self.split = split
        self._images = images
        self._index = index
        self.targets = targets.to(torch.int64)
        self._ids = list(ids) if ids is not None else None

    @property
    def images(self) -> torch.Tensor:
        """Every image as one tensor (a copy where this is a view or the rows are read from
        the cache: for what fits in memory only)."""
        if self._index is None and isinstance(self._images, torch.Tensor):
            return self._images
        return self.get_batch(torch.arange(len(self)))

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(indices, dtype=torch.int64)
        return self._images[rows if self._index is None else self._index[rows]]

    def source_id(self, index: int) -> str:
        return self._ids[index] if self._ids is not None else f"{self.split}:{index}"

    def resident_bytes(self) -> int:
        return self._images.numel() if isinstance(self._images, torch.Tensor) else 0

    def view(self, indices: torch.Tensor, split: str) -> TensorImageDataset:
        rows = indices if self._index is None else self._index[indices]
        ids = [self.source_id(int(i)) for i in indices]
        return TensorImageDataset(self.info, split, self._images, self.targets[indices], ids, rows)


class BatchRows:
    """A dataset's images indexed like a tensor (``rows[indices]``), read through
    ``get_batch``: what a student trained on a whole training set reads, a batch at a time."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices) -> torch.Tensor:
        return self.dataset.get_batch(indices)


class BatchSource(torch.utils.data.Dataset):
    """The batches of one epoch as a map-style dataset, so that DataLoader workers decode
    them ahead of the training step: item ``i`` is ``dataset.get_batch(order[i*bs:(i+1)*bs])``."""

    def __init__(self, dataset: ImageDataset, order: torch.Tensor, batch_size: int):
        self.dataset, self.order, self.batch_size = dataset, order, batch_size

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.dataset.get_batch(
            self.order[step * self.batch_size : (step + 1) * self.batch_size]
        )


def batches(dataset: ImageDataset, order: torch.Tensor, batch_size: int, workers: int = 0):
    """The uint8 batches of ``order``, in order; with ``workers``, decoded ahead by that many
    DataLoader processes (the same batches either way)."""
    source = BatchSource(dataset, order, batch_size)
    if workers <= 0:
        return (source[i] for i in range(len(source)))
    return iter(torch.utils.data.DataLoader(source, batch_size=None, num_workers=workers))


class FolderImageDataset(ImageDataset):
    """Images decoded from files when asked for (ImageNet-scale folders never fit in memory).

    Each image is resized on its shorter side to ``info.image_size`` and centre-cropped.
    """

    def __init__(self, info: DatasetInfo, split: str, root: Path, samples: list[tuple[str, int]]):
        self.info = info
        self.split = split
        self.root = root
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.int64)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        size = self.info.image_size
        out = torch.empty((len(idx), self.info.channels, size, size), dtype=torch.uint8)
        for row, i in enumerate(idx):
            out[row] = decode_image(self.root / self.samples[i][0], self.info.channels, size)
        return out

    def source_id(self, index: int) -> str:
        return self.samples[index][0]


def pil_to_tensor(img: Image.Image, channels: int, size: int | None) -> torch.Tensor:
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_image(source, channels: int, size: int | None, name: str | None = None) -> torch.Tensor:
    """Decode one image file (a path or a file object) to uint8 [C, H, W].

    A truncated or unreadable file raises :class:`UserError` naming it.
    """
    label = name or str(source)
    try:
        with Image.open(source) as img:
            img.load()
            return pil_to_tensor(img, channels, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(
            f"{label}: cannot decode this image ({err}); replace or remove the file"
        ) from err


def subset(dataset: ImageDataset, indices: torch.Tensor, split: str | None = None) -> ImageDataset:
    """A dataset of only ``indices``: a view of a tensor dataset (nothing copied), the named
    files of a folder dataset.

    Source ids are kept, so provenance still names the original file or index.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64)
    split = split or dataset.split
    if isinstance(dataset, TensorImageDataset):
        out = dataset.view(indices, split)
    elif isinstance(dataset, FolderImageDataset):
        samples = [dataset.samples[int(i)] for i in indices]
        out = FolderImageDataset(dataset.info, split, dataset.root, samples)
    else:
        raise TypeError(f"cannot subset {type(dataset).__name__}")
    out.validation = dataset.validation
    return out


@dataclass(frozen=True)
class ValidationSplit:
    """``per_class`` training images per class, held out by a seeded draw.

    Method research chooses on this split, never on the test set. When a run names a split,
    its training part is all that candidate pools, coresets, ``full`` and teacher training
    ever see; ``evaluate --split val`` measures on the held-out part.
    """

    per_class: int
    seed: int = 0

    def indices(self, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Indices of the held-out images in the whole training set, sorted per class."""
        from infoutil.runtime import derive_seed

        # its own seed space, so the split does not repeat the candidate pool's draw
        return per_class_sample(
            targets, num_classes, self.per_class, derive_seed("validation", self.seed) % 2**40
        )

    def describe(self, train: ImageDataset) -> dict:
        """What an output records: the rule, the count and a hash of the held-out indices."""
        idx = self.indices(train.targets, train.info.num_classes)
        return {
            "per_class": self.per_class,
            "seed": self.seed,
            "images": len(idx),
            "sha256": index_sha256(idx),
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> ValidationSplit | None:
        return None if d is None else cls(int(d["per_class"]), int(d["seed"]))


def split_train_val(
    train: ImageDataset, validation: ValidationSplit
) -> tuple[ImageDataset, ImageDataset]:
    """(the training part, the held-out part) of a training set; every class keeps images."""
    counts = torch.bincount(train.targets, minlength=train.info.num_classes)
    for c in range(train.info.num_classes):
        if int(counts[c]) <= validation.per_class:
            raise UserError(
                f"class {train.info.class_names[c]!r} has {int(counts[c])} training images; "
                f"--val-per-class {validation.per_class} would leave none to train on, "
                "lower it"
            )
    held = validation.indices(train.targets, train.info.num_classes)
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[held] = True
    rest = torch.nonzero(~mask).flatten()
    parts = subset(train, rest, "train"), subset(train, held, "val")
    record = validation.describe(train)
    for part in parts:
        part.validation = record
    return parts


def index_sha256(indices: torch.Tensor) -> str:
    """The SHA-256 of integer indices as little-endian int64: the same set in the same order
    gives the same digest on every machine (what outputs and caches are keyed by)."""
    import hashlib

    return hashlib.sha256(indices.numpy().astype("<i8").tobytes()).hexdigest()


def per_class_sample(
    targets: torch.Tensor, num_classes: int, per_class: int, seed: int
) -> torch.Tensor:
    """Draw up to ``per_class`` indices of each class with the seed, sorted within each class.

    Class c's draw uses its own generator, so it does not depend on the other classes.
    """
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        perm = torch.randperm(len(idx), generator=g)[:per_class]
        chosen.append(idx[perm].sort().values)
    return torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class Source:
    """A named dataset: how to load a split and what it is without decoding anything.

    ``load(root, split, cache_dir, image_size, download)`` returns the split ("train" or
    "test"); ``info(root, image_size)`` the DatasetInfo from names and headers alone (None
    where only loading can tell). ``native_size``: the one size its images come in
    (``--image-size`` is refused), or None where any size is made by resizing.
    """

    name: str
    load: Callable[..., ImageDataset]
    info: Callable[..., DatasetInfo | None]
    native_size: int | None
    reads: str  # what it reads, in a few words, for --help and errors
