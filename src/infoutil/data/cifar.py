"""CIFAR-10 and CIFAR-100: the authors' pickle release, or CIFAR-10 as ImageFolder zips or
folders (``cifar10/train.zip`` + ``test.zip``). Class order is the standard label order."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from infoutil.data.base import DatasetInfo, ImageDataset, Source, TensorImageDataset
from infoutil.data.download import download_all, extract_tar
from infoutil.data.folders import find_split_sources, load_folder_cached
from infoutil.data.roots import need_root
from infoutil.errors import UserError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
SIZE = 32
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _cifar_pickle_dir(
    root: Path, folder: str, url: str, download: bool, cache_dir: Path
) -> Path | None:
    for base in (root, root / "cifar10", root / "cifar100", root / "cifar"):
        if (base / folder).is_dir():
            return base / folder
    if download:
        archive = root / Path(url).name
        if not archive.exists():
            download_all([url], root, cache_dir)
        extract_tar(archive, root / folder)
        return root / folder
    return None


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing file of the CIFAR pickle release")
    try:
        with open(path, "rb") as f:
            # The CIFAR release is a pickle by design; it is read only from the user's data root.
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise UserError(f"{path}: corrupt CIFAR pickle file ({err})") from err


def _cifar_pickle_dataset(
    name: str,
    folder: Path,
    files: list[str],
    label_key: str,
    class_names: tuple[str, ...],
    split: str,
    mean,
    std,
) -> TensorImageDataset:
    data, labels = [], []
    for fname in files:
        d = _unpickle(folder / fname)
        data.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[label_key])
    images = torch.from_numpy(np.concatenate(data))
    info = DatasetInfo(name, class_names, 32, 3, mean, std)
    return TensorImageDataset(info, split, images, torch.tensor(labels))


def load_cifar10(root: Path | None, split: str, download: bool, cache_dir: Path) -> ImageDataset:
    root = need_root(root, "cifar10")
    for base in (root / "cifar10", root / "CIFAR10", root):
        if find_split_sources(base) is not None:
            ds = load_folder_cached(
                "cifar10", base, split, 3, 32, CIFAR10_MEAN, CIFAR10_STD, cache_dir
            )
            if ds.info.class_names != CIFAR10_CLASSES:
                raise UserError(f"{base}: class folders {ds.info.class_names} are not CIFAR-10's")
            return ds
    folder = _cifar_pickle_dir(root, "cifar-10-batches-py", CIFAR10_URL, download, cache_dir)
    if folder is None:
        raise UserError(
            f"CIFAR-10 not found under {root}: expected cifar10/train.zip + test.zip, "
            "train/ + test/ folders, or cifar-10-batches-py/ (or pass --download)"
        )
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _cifar_pickle_dataset(
        "cifar10", folder, files, "labels", CIFAR10_CLASSES, split, CIFAR10_MEAN, CIFAR10_STD
    )


def load_cifar100(root: Path | None, split: str, download: bool, cache_dir: Path) -> ImageDataset:
    root = need_root(root, "cifar100")
    folder = _cifar_pickle_dir(root, "cifar-100-python", CIFAR100_URL, download, cache_dir)
    if folder is None:
        raise UserError(
            f"CIFAR-100 not found under {root}: expected cifar-100-python/ (or pass --download)"
        )
    classes = tuple(_unpickle(folder / "meta")["fine_label_names"])
    return _cifar_pickle_dataset(
        "cifar100",
        folder,
        ["train" if split == "train" else "test"],
        "fine_labels",
        classes,
        split,
        CIFAR100_MEAN,
        CIFAR100_STD,
    )


def cifar10_info() -> DatasetInfo:
    return DatasetInfo("cifar10", CIFAR10_CLASSES, SIZE, 3, CIFAR10_MEAN, CIFAR10_STD)


SOURCES = (
    Source(
        "cifar10",
        lambda root, split, cache, size, download: load_cifar10(root, split, download, cache),
        lambda root, size: cifar10_info(),
        SIZE,
        "cifar10/train.zip + test.zip, train/ + test/, or cifar-10-batches-py/",
    ),
    Source(
        "cifar100",
        lambda root, split, cache, size, download: load_cifar100(root, split, download, cache),
        lambda root, size: None,  # the class names are in the release's meta file
        SIZE,
        "cifar-100-python/",
    ),
)
