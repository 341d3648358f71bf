"""Fashion-MNIST (Zalando): the four IDX files, in the data root or Debian's package."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from infoutil.data.base import DatasetInfo, Source, TensorImageDataset
from infoutil.data.download import download_all
from infoutil.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise UserError(f"{path}: corrupt IDX file ({err})") from err


def _fashion_dir(root: Path | None, download: bool, cache_dir: Path) -> Path:
    bases = []
    if root is not None:
        bases += [
            root / "fashion-mnist",
            root / "fashion_mnist",
            root / "FashionMNIST" / "raw",
            root,
        ]
    bases.append(DEBIAN_FASHION_MNIST)
    for base in bases:
        if all((base / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return base
    if download and root is not None:
        dest = root / "fashion-mnist"
        missing = [f for pair in FASHION_FILES.values() for f in pair if not (dest / f).exists()]
        download_all([FASHION_MNIST_URL + f for f in missing], dest, cache_dir)
        return dest
    where = (
        f"{root}/fashion-mnist/ or {DEBIAN_FASHION_MNIST}" if root else str(DEBIAN_FASHION_MNIST)
    )
    raise UserError(
        f"Fashion-MNIST IDX files not found in {where}; pass --data-root "
        "(or install Debian's dataset-fashion-mnist, or pass --download)"
    )


def load_fashion_mnist(root: Path | None, split: str, download: bool, cache_dir: Path):
    base = _fashion_dir(root, download, cache_dir)
    img_file, lbl_file = FASHION_FILES["train" if split == "train" else "test"]
    images = _read_idx(base / img_file)
    labels = _read_idx(base / lbl_file)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserError(
            f"{base}: image and label files do not match ({images.shape}, {labels.shape})"
        )
    info = fashion_mnist_info()
    return TensorImageDataset(
        info,
        split,
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def fashion_mnist_info() -> DatasetInfo:
    return DatasetInfo(
        "fashion-mnist", FASHION_MNIST_CLASSES, 28, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    )


SOURCES = (
    Source(
        "fashion-mnist",
        lambda root, split, cache, size, download: load_fashion_mnist(root, split, download, cache),
        lambda root, size: fashion_mnist_info(),
        28,
        "the four IDX files in fashion-mnist/ (or Debian's)",
    ),
)
