"""Image folders and zips in ImageFolder layout (``<split>/<class>/<file>``), and the layouts
ImageNet-family datasets ship in: Tiny-ImageNet's nested train and labelled val, ImageNet's
flat val with Kaggle's ``LOC_val_solution.csv``. ``imagefolder:PATH`` names such a folder;
CIFAR-10's and the fast.ai subsets' zips are read through the same code.

A zip is decoded once into the array cache; a folder tree is decoded when asked for
(ImageNet-scale trees never fit in memory).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from infoutil.atomic import atomic_write_json
from infoutil.data.base import (
    IMAGE_SUFFIXES,
    DatasetInfo,
    FolderImageDataset,
    ImageDataset,
    TensorImageDataset,
)
from infoutil.data.cache import (
    as_tensors,
    cache_key,
    decoded_split,
    resolve_cache_dir,
    source_stamp,
)
from infoutil.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from infoutil.errors import UserError


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


def scan_tree(split_dir: Path, cache_dir: Path | None = None) -> dict[str, list[str]]:
    """``_scan_folder_tree``'s file index, built once and kept in the cache (ImageNet's train
    folder is 1.28 M files: a second run reads one file instead of walking them). It is keyed
    by the folder and the modification times of it and its class folders (and their
    ``images/``), which change whenever a file is added, removed or renamed in them."""
    cache_dir = resolve_cache_dir(cache_dir)
    stamps = [_mtime(split_dir)]
    for child in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if child.is_dir():
            nested = Path(child.path) / "images"
            stamps.append((child.name, child.stat().st_mtime_ns, _mtime(nested)))
    for labels in ("val_annotations.txt",):
        stamps.append(_mtime(split_dir / labels))
    stamps.append(_mtime(split_dir.parent / "LOC_val_solution.csv"))
    path = cache_dir / f"index-{cache_key('index', split_dir.resolve(), stamps)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # rebuilt below
    classes = _scan_folder_tree(split_dir)
    atomic_write_json(path, classes)
    return classes


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


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


def _imagefolder_arrays(
    source: Path,
    split: str,
    class_names: list[str],
    classes: dict[str, list[str]],
    channels: int,
    size: int | None,
    cache_dir: Path,
) -> dict[str, np.ndarray]:
    items = [(f, k) for k, c in enumerate(class_names) for f in classes[c]]
    key = cache_key("imagefolder", source_stamp(source), split, channels, size)
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            return decoded_split(
                cache_dir, key, items, lambda n: io.BytesIO(zf.read(n)), channels, size,
                str(source),
            )  # fmt: skip
    return decoded_split(
        cache_dir, key, items, lambda n: source / split / n, channels, size, str(source / split)
    )


def find_split_sources(base: Path) -> tuple[Path, Path, str] | None:
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


def load_folder_cached(
    name: str,
    base: Path,
    split: str,
    channels: int,
    size: int | None,
    mean,
    std,
    cache_dir: Path,
) -> TensorImageDataset:
    found = find_split_sources(base)
    if found is None:
        raise UserError(f"{base}: expected train.zip and test.zip, or train/ and test/ folders")
    train_src, test_src, test_split = found

    def scan(src: Path, sp: str) -> dict[str, list[str]]:
        if src.is_file():
            with zipfile.ZipFile(src) as zf:
                return scan_zip(zf, sp, str(src))
        return scan_tree(src / sp, cache_dir)

    train_classes, test_classes = scan(train_src, "train"), scan(test_src, test_split)
    class_names = list(train_classes)
    _check_same_classes(class_names, list(test_classes), str(base))
    want_split = "train" if split == "train" else test_split
    src, classes = (train_src, train_classes) if split == "train" else (test_src, test_classes)
    arrays = _imagefolder_arrays(src, want_split, class_names, classes, channels, size, cache_dir)
    images, labels, ids = as_tensors(arrays)
    info = DatasetInfo(name, tuple(class_names), images.shape[-1], channels, mean, std)
    return TensorImageDataset(info, split, images, labels, ids)


def _image_header(open_first: Callable[[], object], label: str) -> tuple[int, int]:
    """(channels, shorter side) of one image, from its header."""
    try:
        with Image.open(open_first()) as im:
            channels = 1 if im.mode in ("L", "I", "I;16", "1") else 3
            return channels, min(im.size)
    except (OSError, SyntaxError) as err:
        raise UserError(f"{label}: cannot decode this image ({err}); replace or remove it") from err


def imagefolder_info(
    path: Path, image_size: int | None, cache_dir: Path | None = None
) -> DatasetInfo:
    """What an ``imagefolder:PATH`` dataset is (classes, size, channels), from a scan of its
    folders or zips and one image header: nothing is decoded."""
    return _imagefolder_scan(path, image_size, cache_dir)[0]


def _imagefolder_scan(path: Path, image_size: int | None, cache_dir: Path | None = None):
    if not path.is_dir():
        raise UserError(f"imagefolder {path} does not exist or is not a directory")
    found = find_split_sources(path)
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
        train_classes = scan_tree(path / "train", cache_dir)
        test_classes = scan_tree(path / test_split, cache_dir)
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
        path, image_size, cache_dir
    )
    if train_src.is_file():
        return load_folder_cached(
            info.name, path, split, info.channels, info.image_size, info.mean, info.std,
            resolve_cache_dir(cache_dir),
        )  # fmt: skip
    classes = train_classes if split == "train" else test_classes
    split_dir = path / ("train" if split == "train" else test_split)
    samples = [(f, k) for k, c in enumerate(info.class_names) for f in classes[c]]
    return FolderImageDataset(info, split, split_dir, samples)
