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

from infoutil.data import tiny_imagenet
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
from infoutil.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, names_of, wnid_names
from infoutil.errors import UserError
from infoutil.io.atomic import atomic_writer

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
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


def _image_files(folder: Path, strict: bool = True) -> list[Path]:
    """The image files of a folder, sorted; with ``strict`` any other file is an error."""
    files = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            if strict:
                raise UserError(
                    f"{f}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); "
                    "move it out of the class folder"
                )
            continue
        files.append(f)
    return files


def _scan_folder_tree(split_dir: Path) -> dict[str, list[str]]:
    """class name -> sorted file paths relative to ``split_dir``, for the layouts datasets ship
    in: ImageFolder (``<class>/*``), Tiny-ImageNet's train (``<class>/images/*``, beside a
    boxes file) and val (``images/*`` + ``val_annotations.txt``), and ImageNet's flat val
    folder with Kaggle's ``LOC_val_solution.csv`` beside it. Errors name the folder or file."""
    annotations = split_dir / "val_annotations.txt"
    if annotations.is_file() and (split_dir / "images").is_dir():  # Tiny-ImageNet's val
        return _scan_labelled(split_dir, "images", _read_labels(annotations))
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not class_dirs and _image_files(split_dir, strict=False):  # a flat folder of images
        solution = split_dir.parent / "LOC_val_solution.csv"
        if solution.is_file():
            return _scan_labelled(split_dir, "", _read_labels(solution))
        raise UserError(
            f"{split_dir}: a flat folder of images with no class folders (ImageNet's validation "
            f"layout); sort it into class folders with 'infoutil data prepare {split_dir.parent} "
            "--val-labels LABELS' (LABELS: LOC_val_solution.csv, or lines of 'FILE CLASS')"
        )
    classes: dict[str, list[str]] = {}
    for class_dir in class_dirs:
        nested = class_dir / "images"  # Tiny-ImageNet's train: <wnid>/images/*.JPEG
        folder = nested if nested.is_dir() else class_dir
        files = [
            str(f.relative_to(split_dir)) for f in _image_files(folder, strict=folder is class_dir)
        ]
        if not files:
            raise UserError(f"{class_dir}: class folder is empty; add images or remove it")
        classes[class_dir.name] = files
    if not classes:
        raise UserError(f"{split_dir}: no class folders found (expected {split_dir}/<class>/...)")
    return classes


def _read_labels(path: Path) -> dict[str, str]:
    """file name -> class from a labels file: Kaggle's ``LOC_val_solution.csv`` (ImageId,
    PredictionString starting with the class), Tiny-ImageNet's ``val_annotations.txt`` (tab
    separated, class second), or lines of ``FILE CLASS`` / ``FILE,CLASS``."""
    labels: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.replace(",", " ").replace("\t", " ").split()
        if not parts or (n == 1 and parts[0] == "ImageId"):
            continue
        if len(parts) < 2:
            raise UserError(f"{path}:{n}: expected 'FILE CLASS', got {line!r}")
        stem = Path(parts[0]).stem
        if labels.get(stem, parts[1]) != parts[1]:
            raise UserError(f"{path}:{n}: {parts[0]} is labelled twice, {labels[stem]!r} first")
        labels[stem] = parts[1]
    if not labels:
        raise UserError(f"{path}: no labels in this file")
    return labels


def sort_flat_split(split_dir: Path, labels_file: Path, classes_from: Path) -> int:
    """Move the images of a flat ``split_dir`` into ``split_dir/<class>/`` by a labels file;
    every class must be one of ``classes_from``'s folders. Returns how many were moved."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such folder")
    if not labels_file.is_file():
        raise UserError(f"{labels_file}: no such labels file")
    known = (
        {p.name for p in classes_from.iterdir() if p.is_dir()} if classes_from.is_dir() else None
    )
    labels = _read_labels(labels_file)
    images = _image_files(split_dir, strict=False)
    for f in images:  # check everything before moving anything
        if f.stem not in labels:
            raise UserError(f"{f}: no label for this image in {labels_file}")
        if known is not None and labels[f.stem] not in known:
            raise UserError(
                f"{labels_file}: class {labels[f.stem]!r} of {f.name} is not a folder of "
                f"{classes_from}"
            )
    for f in images:
        target = split_dir / labels[f.stem] / f.name
        target.parent.mkdir(exist_ok=True)
        f.rename(target)
    return len(images)


def _scan_labelled(split_dir: Path, sub: str, labels: dict[str, str]) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    for f in _image_files(split_dir / sub if sub else split_dir, strict=False):
        if f.stem not in labels:
            raise UserError(f"{f}: no label for this image in the split's labels file")
        classes.setdefault(labels[f.stem], []).append(str(f.relative_to(split_dir)))
    return {c: sorted(v) for c, v in sorted(classes.items())}


def scan_zip(zf: zipfile.ZipFile, split: str, label: str) -> dict[str, list[str]]:
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
                if tr.is_dir() and te.is_dir() and not _unlabelled(te):
                    return base, base, test_split
    return None


def _unlabelled(split_dir: Path) -> bool:
    """Tiny-ImageNet's test/: one images/ folder and no labels; its val/ is the test split."""
    dirs = [p.name for p in split_dir.iterdir() if p.is_dir()]
    return dirs == ["images"] and not (split_dir / "val_annotations.txt").is_file()


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
                return scan_zip(zf, sp, str(src))
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


# published digests of the files the downloads fetch: MD5 (32 hex digits) or SHA-256 (64).
# CIFAR and Fashion-MNIST: the authors' pages (torchvision uses the same). fast.ai publishes
# none for its ImageNet subsets; these are the ones torchvision's Imagenette (MD5) and
# FastAI.jl's ImageWoof (SHA-256) check the same official archives against.
DOWNLOAD_DIGEST = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "imagenette2-320.tgz": "3df6f0d01a2c9592104656642f5e78a3",
    "imagewoof2-320.tgz": "4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d",
    tiny_imagenet.ARCHIVE: tiny_imagenet.MD5,
}
FASTAI_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{name}2-320.tgz"


def _download_all(urls: list[str], dest_dir: Path, cache_dir: Path) -> None:
    """Fetch every file into a scratch folder, check each against its published digest, and only
    then move them into ``dest_dir``: a bad or broken download leaves nothing in the data root.
    ``INFOUTIL_MIRROR`` (a base URL) fetches the same file names from a mirror."""
    import shutil
    import tempfile

    mirror = os.environ.get("INFOUTIL_MIRROR")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="download-") as scratch:
        fetched = []
        for url in urls:
            name = url.rsplit("/", 1)[1]
            if mirror:
                url = mirror.rstrip("/") + "/" + name
            tmp = Path(scratch) / name
            print(f"downloading {url}")
            published = DOWNLOAD_DIGEST[name]
            algorithm = "MD5" if len(published) == 32 else "SHA-256"
            digest = hashlib.md5() if algorithm == "MD5" else hashlib.sha256()
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        digest.update(block)
                        f.write(block)
            except OSError as err:
                raise UserError(
                    f"cannot download {url} ({err}); fetch it by hand into {dest_dir}"
                ) from err
            if digest.hexdigest() != published:
                raise UserError(
                    f"{url}: the download's {algorithm} {digest.hexdigest()} is not the published "
                    f"{published}; nothing was written to {dest_dir}, try again or "
                    "fetch it by hand"
                )
            fetched.append(tmp)
        dest_dir.mkdir(parents=True, exist_ok=True)
        for tmp in fetched:
            with atomic_writer(dest_dir / tmp.name) as f, open(tmp, "rb") as src:
                shutil.copyfileobj(src, f)


def _extract_tar(archive: Path, into: Path) -> None:
    tmp = into.with_name(into.name + f".tmp-{os.getpid()}")
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    (tmp / into.name).rename(into)  # the rename is the completion marker
    tmp.rmdir()


def _cifar_pickle_dir(
    root: Path, folder: str, url: str, download: bool, cache_dir: Path
) -> Path | None:
    for base in (root, root / "cifar10", root / "cifar100", root / "cifar"):
        if (base / folder).is_dir():
            return base / folder
    if download:
        archive = root / Path(url).name
        if not archive.exists():
            _download_all([url], root, cache_dir)
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
    root = _need_root(root, "cifar100")
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


# ---------------------------------------------------------------- ImageWoof, ImageNette

# fast.ai's ImageNet subsets (github.com/fastai/imagenette): class order is the sorted wnids,
# the names are ImageNet's, for reports
# the official wnid sets of fast.ai's releases; their names come from ImageNet's class list
IMAGEWOOF_WNIDS = (
    "n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
    "n02096294", "n02099601", "n02105641", "n02111889", "n02115641",
)  # fmt: skip
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)  # fmt: skip
IMAGEWOOF_CLASSES = names_of(IMAGEWOOF_WNIDS)
IMAGENETTE_CLASSES = names_of(IMAGENETTE_WNIDS)
# the paper's and RDED's size for ConvNet-5 on these subsets (anchors.md §1.4)
FASTAI_SUBSET_SIZE = 128
FASTAI_SUBSETS = {"imagewoof": IMAGEWOOF_CLASSES, "imagenette": IMAGENETTE_CLASSES}


def display_name(class_name: str) -> str:
    """A class as a person reads it: ImageNet's name for a known wnid, else the name itself."""
    return wnid_names().get(class_name, class_name)


def _fastai_subset_base(root: Path, name: str) -> Path | None:
    """Where a fast.ai subset lies under ``root``: ``<name>/`` with train.zip + val.zip (as in
    shared/), or an official release folder ``<name>2-{320,160,}`` with train/ + val/; an
    official ``.tgz`` found there is extracted once, beside it."""
    folders = [root / name, *(root / f"{name}2{s}" for s in ("-320", "-160", "")), root]
    for base in folders:
        if base.is_dir() and _find_split_sources(base) is not None:
            return base
    for base in folders[:-1]:
        archive = base.with_name(base.name + ".tgz")
        if base.name != name and archive.is_file():
            _extract_tar(archive, base)
            return base
    return None


def load_fastai_subset(
    name: str,
    root: Path | None,
    split: str,
    cache_dir: Path,
    image_size: int | None,
    download: bool = False,
) -> ImageDataset:
    root = _need_root(root, name)
    base = _fastai_subset_base(root, name)
    if base is None and download:  # the official 320 px release, checked, then extracted
        _download_all([FASTAI_URL.format(name=name)], root, cache_dir)
        base = _fastai_subset_base(root, name)
    if base is None:
        raise UserError(
            f"{name} not found under {root}: expected {name}/train.zip + val.zip, or the "
            f"official {name}2-320/ (train/, val/) or {name}2-320.tgz (or pass --download)"
        )
    wnids = FASTAI_SUBSETS[name]
    size = image_size or FASTAI_SUBSET_SIZE
    ds = _load_imagefolder_cached(
        name, base, split, 3, size, IMAGENET_MEAN, IMAGENET_STD, cache_dir
    )
    _check_wnids(ds.info.class_names, tuple(sorted(wnids)), name, base)
    return ds


def _check_wnids(found: tuple[str, ...], wanted: tuple[str, ...], name: str, base: Path) -> None:
    """Refuse class folders that are not the release's wnids, naming what does not fit."""
    if found == wanted:
        return
    extra = [c for c in found if c not in wanted]
    missing = [w for w in wanted if w not in found]
    raise UserError(
        f"{base}: the class folders are not {name}'s {len(wanted)} wnids: "
        f"unexpected {', '.join(extra) or '-'}; missing "
        f"{', '.join(f'{w} ({display_name(w)})' for w in missing) or '-'}"
    )


def load_tiny_imagenet(
    root: Path | None, split: str, cache_dir: Path, image_size: int | None, download: bool
) -> ImageDataset:
    root = _need_root(root, tiny_imagenet.NAME)
    release = tiny_imagenet.find_release(root)
    if release is None and download:
        _download_all([tiny_imagenet.URL], root, cache_dir)
        release = tiny_imagenet.find_release(root)
    if release is None:
        raise UserError(
            f"tiny-imagenet not found under {root}: expected the official "
            f"{tiny_imagenet.FOLDER}/ folder or {tiny_imagenet.ARCHIVE} (or pass --download)"
        )
    return tiny_imagenet.load(
        release, split, image_size, cache_dir, _cached_arrays, _decode_all, _cache_key,
        _source_stamp,
    )  # fmt: skip


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
        _download_all([FASHION_MNIST_URL + f for f in missing], dest, cache_dir)
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


def _image_header(open_first: Callable[[], object], label: str) -> tuple[int, int]:
    """(channels, shorter side) of one image, from its header."""
    try:
        with Image.open(open_first()) as im:
            channels = 1 if im.mode in ("L", "I", "I;16", "1") else 3
            return channels, min(im.size)
    except (OSError, SyntaxError) as err:
        raise UserError(f"{label}: cannot decode this image ({err}); replace or remove it") from err


def imagefolder_info(path: Path, image_size: int | None) -> DatasetInfo:
    """What an ``imagefolder:PATH`` dataset is (classes, size, channels), from a scan of its
    folders or zips and one image header: nothing is decoded."""
    return _imagefolder_scan(path, image_size)[0]


def _imagefolder_scan(path: Path, image_size: int | None):
    if not path.is_dir():
        raise UserError(f"imagefolder {path} does not exist or is not a directory")
    found = _find_split_sources(path)
    if found is None:
        raise UserError(
            f"{path}: expected train/<class>/... and val/ or test/ folders, or train.zip and "
            "val.zip or test.zip"
        )
    train_src, test_src, test_split = found
    if train_src.is_file():  # train.zip + val.zip/test.zip: <split>/<class>/<file> inside
        with zipfile.ZipFile(train_src) as zf:
            train_classes = scan_zip(zf, "train", str(train_src))
            first = train_classes[next(iter(train_classes))][0]
            channels, smaller = _image_header(lambda: io.BytesIO(zf.read(first)), first)
        with zipfile.ZipFile(test_src) as zf:
            test_classes = scan_zip(zf, test_split, str(test_src))
    else:
        train_classes = _scan_folder_tree(path / "train")
        test_classes = _scan_folder_tree(path / test_split)
        first = path / "train" / train_classes[next(iter(train_classes))][0]
        channels, smaller = _image_header(lambda: first, str(first))
    class_names = list(train_classes)
    _check_same_classes(class_names, list(test_classes), str(path))
    # the image size: --image-size, else the first image's shorter side, at most 224
    size = image_size or min(224, smaller)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    info = DatasetInfo(f"imagefolder:{path}", tuple(class_names), size, channels, mean, std)
    return info, found, train_classes, test_classes


def load_imagefolder(
    path: Path, split: str, image_size: int | None, cache_dir: Path | None = None
) -> ImageDataset:
    """A folder tree is decoded when asked for (ImageNet-scale trees never fit in memory);
    zips are decoded once into the array cache, as the named datasets are."""
    info, (train_src, test_src, test_split), train_classes, test_classes = _imagefolder_scan(
        path, image_size
    )
    if train_src.is_file():
        return _load_imagefolder_cached(
            info.name, path, split, info.channels, info.image_size, info.mean, info.std,
            resolve_cache_dir(cache_dir),
        )  # fmt: skip
    classes = train_classes if split == "train" else test_classes
    split_dir = path / ("train" if split == "train" else test_split)
    samples = [(f, info.class_names.index(c)) for c in info.class_names for f in classes[c]]
    return FolderImageDataset(info, split, split_dir, samples)


# ---------------------------------------------------------------- registry

DATASETS = (
    "cifar10",
    "cifar100",
    "fashion-mnist",
    "imagewoof",
    "imagenette",
    "tiny-imagenet",
    "imagefolder:PATH",
)


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


def load_split_of(config, split: str, data_root=None, cache_dir=None) -> ImageDataset:
    """``split`` of the dataset a run's config names, at its image size and, for training,
    without its validation split (``config``: a TeacherConfig or a DistillConfig)."""
    return load_dataset(
        config.dataset,
        split,
        data_root,
        cache_dir=cache_dir,
        validation=config.validation if split != "test" else None,
        image_size=config.image_size,
    )


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
    if name in FASTAI_SUBSETS:
        size = image_size or FASTAI_SUBSET_SIZE
        classes = tuple(sorted(FASTAI_SUBSETS[name]))
        return DatasetInfo(name, classes, size, 3, IMAGENET_MEAN, IMAGENET_STD)
    if name.startswith("imagefolder:"):  # a directory scan and one image header
        return imagefolder_info(Path(name.split(":", 1)[1]).expanduser(), image_size)
    if name == tiny_imagenet.NAME:  # wnids.txt only
        release = tiny_imagenet.find_release(_need_root(resolve_data_root(data_root), name))
        if release is None:
            return None  # loading says where it looked, or downloads it
        return tiny_imagenet.info(tiny_imagenet.wnids_and_names(release)[0], image_size)
    if name not in ("cifar100",):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return None


def _load_split(name, split, data_root, download, cache_dir, image_size) -> ImageDataset:
    cache = resolve_cache_dir(cache_dir)
    if name.startswith("imagefolder:"):
        return load_imagefolder(Path(name.split(":", 1)[1]).expanduser(), split, image_size, cache)
    native = {"cifar10": 32, "cifar100": 32, "fashion-mnist": 28}.get(name)
    if image_size is not None and native is not None and image_size != native:
        raise UserError(
            f"{name} images are {native} px; --image-size {image_size} applies only to "
            "imagewoof, imagenette, tiny-imagenet and imagefolder:PATH datasets (leave it out)"
        )
    root = resolve_data_root(data_root)
    if name in FASTAI_SUBSETS:
        return load_fastai_subset(name, root, split, cache, image_size, download)
    if name == tiny_imagenet.NAME:
        return load_tiny_imagenet(root, split, cache, image_size, download)
    loaders = {
        "cifar10": load_cifar10,
        "cifar100": load_cifar100,
        "fashion-mnist": load_fashion_mnist,
    }
    if name not in loaders:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return loaders[name](root, split, download, cache)
