"""The dataset registry: a name on the command line (``--dataset cifar10``) to its source.

Each family of sources is one small module that declares its ``SOURCES`` (``data.cifar``,
``data.fashion_mnist``, ``data.fastai``, ``data.tiny_imagenet``); ``imagefolder:PATH`` names any
folder in ImageFolder layout (``data.folders``). Datasets are found under a data root
(``--data-root`` or ``INFOUTIL_DATA``); nothing is hard-coded, and nothing is downloaded
unless asked. Decoded images are cached under ``--cache-dir`` / ``INFOUTIL_CACHE``
(``data.cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

from infoutil.data import cifar, fashion_mnist, fastai, tiny_imagenet
from infoutil.data.base import DatasetInfo, ImageDataset, Source, ValidationSplit, split_train_val
from infoutil.data.cache import resolve_cache_dir
from infoutil.data.folders import imagefolder_info, load_imagefolder
from infoutil.data.roots import resolve_data_root
from infoutil.errors import UserError

IMAGEFOLDER = "imagefolder:"
REGISTRY: dict[str, Source] = {
    s.name: s for module in (cifar, fashion_mnist, fastai, tiny_imagenet) for s in module.SOURCES
}
DATASETS = (*REGISTRY, "imagefolder:PATH")
# the names whose --image-size resizes (the rest come in one size)
RESIZABLE = (*(n for n, s in REGISTRY.items() if s.native_size is None), "imagefolder:PATH")


def source(name: str) -> Source:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return REGISTRY[name]


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

    ``name`` is one of ``DATASETS``.
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
    name: str,
    data_root: str | os.PathLike | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetInfo | None:
    """What a dataset's images will be (classes, size, channels) without decoding them,
    so a teacher that cannot fit is refused first; None where only loading can tell."""
    if name.startswith(IMAGEFOLDER):  # a directory scan and one image header
        path = Path(name.split(":", 1)[1]).expanduser()
        return imagefolder_info(path, image_size, resolve_cache_dir(cache_dir))
    src = source(name)
    _check_size(src, image_size)
    root = resolve_data_root(data_root)
    return src.info(root, image_size)


def _check_size(src: Source, image_size: int | None) -> None:
    if image_size is not None and src.native_size is not None and image_size != src.native_size:
        raise UserError(
            f"{src.name} images are {src.native_size} px; --image-size {image_size} applies "
            f"only to {', '.join(RESIZABLE)} (leave it out)"
        )


def _load_split(name, split, data_root, download, cache_dir, image_size) -> ImageDataset:
    cache = resolve_cache_dir(cache_dir)
    if name.startswith(IMAGEFOLDER):
        return load_imagefolder(Path(name.split(":", 1)[1]).expanduser(), split, image_size, cache)
    src = source(name)
    _check_size(src, image_size)
    return src.load(resolve_data_root(data_root), split, cache, image_size, download)
