"""Where datasets come from: CIFAR archives, Fashion-MNIST IDX files, any ImageFolder tree.

A dataset is named on the command line (``--dataset cifar10``) and found under a data root
(``--data-root`` or the ``INFOUTIL_DATA`` environment variable); nothing is hard-coded.
Decoded archives are cached as ``.npz`` files under the cache directory (``--cache-dir``,
``INFOUTIL_CACHE``, default ``~/.cache/infoutil``), written atomically, so an interrupted
extraction never leaves a cache that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from infoutil.data.base import (
    IMAGE_SUFFIXES,
    DatasetInfo,
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
    ValidationSplit,
    decode_image,
    split_train_val,
)
from infoutil.errors import UserError
from infoutil.io.atomic import atomic_writer

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CACHE_VERSION = "1"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    root = data_root if data_root is not None else os.environ.get("INFOUTIL_DATA")
    if root is None:
        return None
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"data root {path} does not exist; pass --data-root or set INFOUTIL_DATA")
    return path


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    d = cache_dir or os.environ.get("INFOUTIL_CACHE") or Path.home() / ".cache" / "infoutil"
    return Path(d).expanduser()


def _need_root(root: Path | None, name: str) -> Path:
    if root is None:
        raise UserError(
            f"dataset {name!r} needs a data root: pass --data-root PATH or set INFOUTIL_DATA"
        )
    return root


def _cache_key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (CACHE_VERSION, *parts))).encode()).hexdigest()[:16]


def _source_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _cached_arrays(
    cache_dir: Path, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    path = cache_dir / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    arrays = build()
    with atomic_writer(path) as f:
        np.savez(f, **arrays)
    return arrays


# ---------------------------------------------------------------- ImageFolder (zip or tree)


def _scan_folder_tree(split_dir: Path) -> dict[str, list[str]]:
    """class name -> sorted relative file names; errors name the offending folder or file."""
    classes: dict[str, list[str]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = []
        for f in sorted(class_dir.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(
                    f"{f}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); "
                    "move it out of the class folder"
                )
            files.append(f"{class_dir.name}/{f.name}")
        if not files:
            raise UserError(f"{class_dir}: class folder is empty; add images or remove it")
        classes[class_dir.name] = files
    if not classes:
        raise UserError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/...)")
    return classes


def _scan_zip(zf: zipfile.ZipFile, split: str, label: str) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == split and parts[1]:
            files = classes.setdefault(parts[1], [])
            if parts[2] and not parts[2].startswith("."):
                if Path(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
                    raise UserError(
                        f"{label}:{name}: not an image file; remove it from the archive"
                    )
                files.append(name)
    for cls, files in classes.items():
        if not files:
            raise UserError(f"{label}:{split}/{cls}/: class folder is empty")
        files.sort()
    if not classes:
        raise UserError(f"{label}: no {split}/<class>/ folders inside the archive")
    return dict(sorted(classes.items()))


def _check_same_classes(train: list[str], test: list[str], where: str) -> None:
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise UserError(
            f"{where}: train and test classes differ (only in train: {only_train or '-'}; "
            f"only in test: {only_test or '-'}); both splits need the same class folders"
        )


def _decode_all(
    items: list[tuple[str, int]],
    open_item: Callable[[str], object],
    channels: int,
    size: int | None,
    label: str,
) -> dict[str, np.ndarray]:
    images, labels = [], []
    for name, y in tqdm(items, desc=f"decode {label}", unit="img", leave=False):
        images.append(decode_image(open_item(name), channels, size, name=f"{label}:{name}"))
        labels.append(y)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) != 1:
        raise UserError(f"{label}: images have different sizes {sorted(shapes)[:3]}")
    return {
        "images": torch.stack(images).numpy(),
        "labels": np.asarray(labels, dtype=np.int64),
        "ids": np.asarray([n for n, _ in items]),
    }


def _imagefolder_arrays(
    source: Path,
    split: str,
    class_names: list[str],
    classes: dict[str, list[str]],
    channels: int,
    size: int | None,
    cache_dir: Path,
) -> dict[str, np.ndarray]:
    items = [(f, class_names.index(c)) for c in class_names for f in classes[c]]
    key = _cache_key("imagefolder", _source_stamp(source), split, channels, size)

    def build() -> dict[str, np.ndarray]:
        if source.is_file():
            with zipfile.ZipFile(source) as zf:
                return _decode_all(
                    items, lambda n: io.BytesIO(zf.read(n)), channels, size, str(source)
                )
        return _decode_all(items, lambda n: source / split / n, channels, size, str(source / split))

    return _cached_arrays(cache_dir, key, build)


def _find_split_sources(base: Path) -> tuple[Path, Path, str] | None:
    """(train source, test source, test split name): zips or folders under ``base``."""
    for test_split in ("test", "val"):
        for kind in ("zip", "dir"):
            if kind == "zip":
                tr, te = base / "train.zip", base / f"{test_split}.zip"
                if tr.is_file() and te.is_file():
                    return tr, te, test_split
            else:
                tr, te = base / "train", base / test_split
                if tr.is_dir() and te.is_dir():
                    return base, base, test_split
    return None


def _load_imagefolder_cached(
    name: str,
    base: Path,
    split: str,
    channels: int,
    size: int | None,
    mean,
    std,
    cache_dir: Path,
) -> TensorImageDataset:
    found = _find_split_sources(base)
    if found is None:
        raise UserError(f"{base}: expected train.zip and test.zip, or train/ and test/ folders")
    train_src, test_src, test_split = found

    def scan(src: Path, sp: str) -> dict[str, list[str]]:
        if src.is_file():
            with zipfile.ZipFile(src) as zf:
                return _scan_zip(zf, sp, str(src))
        return _scan_folder_tree(src / sp)

    train_classes, test_classes = scan(train_src, "train"), scan(test_src, test_split)
    class_names = list(train_classes)
    _check_same_classes(class_names, list(test_classes), str(base))
    want_split = "train" if split == "train" else test_split
    src, classes = (train_src, train_classes) if split == "train" else (test_src, test_classes)
    arrays = _imagefolder_arrays(src, want_split, class_names, classes, channels, size, cache_dir)
    images = torch.from_numpy(arrays["images"])
    info = DatasetInfo(name, tuple(class_names), images.shape[-1], channels, mean, std)
    return TensorImageDataset(
        info, split, images, torch.from_numpy(arrays["labels"]), [str(i) for i in arrays["ids"]]
    )


# ---------------------------------------------------------------- CIFAR


def _download(url: str, dest: Path) -> None:
    print(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, atomic_writer(dest) as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as err:
        raise UserError(
            f"cannot download {url} ({err}); fetch it by hand into {dest.parent}"
        ) from err


def _extract_tar(archive: Path, into: Path) -> None:
    tmp = into.with_name(into.name + f".tmp-{os.getpid()}")
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    (tmp / into.name).rename(into)  # the rename is the completion marker
    tmp.rmdir()


def _cifar_pickle_dir(root: Path, folder: str, url: str, download: bool) -> Path | None:
    for base in (root, root / "cifar10", root / "cifar100", root / "cifar"):
        if (base / folder).is_dir():
            return base / folder
    if download:
        archive = root / Path(url).name
        if not archive.exists():
            _download(url, archive)
        _extract_tar(archive, root / folder)
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


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def load_cifar10(root: Path | None, split: str, download: bool, cache_dir: Path) -> ImageDataset:
    root = _need_root(root, "cifar10")
    for base in (root / "cifar10", root / "CIFAR10", root):
        if _find_split_sources(base) is not None:
            ds = _load_imagefolder_cached(
                "cifar10", base, split, 3, 32, CIFAR10_MEAN, CIFAR10_STD, cache_dir
            )
            if ds.info.class_names != CIFAR10_CLASSES:
                raise UserError(f"{base}: class folders {ds.info.class_names} are not CIFAR-10's")
            return ds
    folder = _cifar_pickle_dir(root, "cifar-10-batches-py", CIFAR10_URL, download)
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
    root = _need_root(root, "cifar100")
    folder = _cifar_pickle_dir(root, "cifar-100-python", CIFAR100_URL, download)
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


# ---------------------------------------------------------------- Fashion-MNIST

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


def _fashion_dir(root: Path | None, download: bool) -> Path:
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
        for pair in FASHION_FILES.values():
            for f in pair:
                if not (dest / f).exists():
                    _download(FASHION_MNIST_URL + f, dest / f)
        return dest
    where = (
        f"{root}/fashion-mnist/ or {DEBIAN_FASHION_MNIST}" if root else str(DEBIAN_FASHION_MNIST)
    )
    raise UserError(
        f"Fashion-MNIST IDX files not found in {where}; pass --data-root "
        "(or install Debian's dataset-fashion-mnist, or pass --download)"
    )


def load_fashion_mnist(root: Path | None, split: str, download: bool, cache_dir: Path):
    base = _fashion_dir(root, download)
    img_file, lbl_file = FASHION_FILES["train" if split == "train" else "test"]
    images = _read_idx(base / img_file)
    labels = _read_idx(base / lbl_file)
    if images.ndim != 3 or len(images) != len(labels):
        raise UserError(
            f"{base}: image and label files do not match ({images.shape}, {labels.shape})"
        )
    info = DatasetInfo(
        "fashion-mnist", FASHION_MNIST_CLASSES, 28, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    )
    return TensorImageDataset(
        info,
        split,
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


# ---------------------------------------------------------------- imagefolder:PATH


def load_imagefolder(path: Path, split: str, image_size: int | None) -> ImageDataset:
    if not path.is_dir():
        raise UserError(f"imagefolder {path} does not exist or is not a directory")
    found = _find_split_sources(path)
    if found is None or found[0].is_file():
        raise UserError(f"{path}: expected train/<class>/... and val/ or test/ folders")
    test_split = found[2]
    train_classes = _scan_folder_tree(path / "train")
    test_classes = _scan_folder_tree(path / test_split)
    class_names = list(train_classes)
    _check_same_classes(class_names, list(test_classes), str(path))
    classes = train_classes if split == "train" else test_classes
    split_dir = path / ("train" if split == "train" else test_split)
    first = split_dir / classes[class_names[0]][0]
    try:
        with Image.open(first) as im:
            channels = 1 if im.mode in ("L", "I", "I;16", "1") else 3
            smaller_side = min(im.size)
    except (OSError, SyntaxError) as err:
        raise UserError(f"{first}: cannot decode this image ({err}); replace or remove it") from err
    # the image size: --image-size, else the first image's shorter side, at most 224
    size = image_size or min(224, smaller_side)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    info = DatasetInfo(f"imagefolder:{path}", tuple(class_names), size, channels, mean, std)
    samples = [(f, class_names.index(c)) for c in class_names for f in classes[c]]
    return FolderImageDataset(info, split, split_dir, samples)


# ---------------------------------------------------------------- registry

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder:PATH")


def load_dataset(
    name: str,
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    validation: ValidationSplit | None = None,
) -> ImageDataset:
    """Load one split (``"train"``, ``"val"`` or ``"test"``) of a named dataset.

    ``name`` is one of ``cifar10``, ``cifar100``, ``fashion-mnist`` or ``imagefolder:PATH``.
    With ``validation``, ``"train"`` is the training set without the held-out images and
    ``"val"`` is the held-out images; ``"val"`` needs a split.
    """
    if split not in ("train", "val", "test"):
        raise UserError(f"split {split!r} is not 'train', 'val' or 'test'")
    if split == "val" and validation is None:
        raise UserError("the 'val' split needs a validation split (--val-per-class N)")
    if split == "test" or validation is None:
        return _load_split(name, split, data_root, download, cache_dir, image_size)
    whole = _load_split(name, "train", data_root, download, cache_dir, image_size)
    train_part, held_out = split_train_val(whole, validation)
    return train_part if split == "train" else held_out


def dataset_info(
    name: str, data_root: str | os.PathLike | None = None, image_size: int | None = None
) -> DatasetInfo | None:
    """What a dataset's images will be (classes, size, channels) without decoding them,
    so a teacher that cannot fit is refused first; None where only loading can tell."""
    if name == "cifar10":
        return DatasetInfo("cifar10", CIFAR10_CLASSES, 32, 3, CIFAR10_MEAN, CIFAR10_STD)
    if name == "fashion-mnist":
        return DatasetInfo(
            "fashion-mnist", FASHION_MNIST_CLASSES, 28, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD
        )
    if name.startswith("imagefolder:"):  # a directory scan and one image header
        return load_imagefolder(Path(name.split(":", 1)[1]).expanduser(), "train", image_size).info
    if name not in ("cifar100",):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return None


def _load_split(name, split, data_root, download, cache_dir, image_size) -> ImageDataset:
    cache = resolve_cache_dir(cache_dir)
    if name.startswith("imagefolder:"):
        return load_imagefolder(Path(name.split(":", 1)[1]).expanduser(), split, image_size)
    root = resolve_data_root(data_root)
    loaders = {
        "cifar10": load_cifar10,
        "cifar100": load_cifar100,
        "fashion-mnist": load_fashion_mnist,
    }
    if name not in loaders:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return loaders[name](root, split, download, cache)
