"""fast.ai's ImageNet subsets, ImageWoof and ImageNette (github.com/fastai/imagenette): the
zips in the data root (``imagewoof/train.zip`` + ``val.zip``), the official release folder
(``imagewoof2-320/``) or its ``.tgz``, or a checked download. Class order is the sorted
wnids; 128 px by default."""

from __future__ import annotations

from pathlib import Path

from infoutil.data.base import DatasetInfo, ImageDataset, Source
from infoutil.data.download import download_all, extract_tar
from infoutil.data.folders import find_split_sources, load_folder_cached
from infoutil.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, display_name, names_of
from infoutil.data.roots import need_root
from infoutil.errors import UserError

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
FASTAI_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{name}2-320.tgz"


def _fastai_subset_base(root: Path, name: str) -> Path | None:
    """Where a fast.ai subset lies under ``root``: ``<name>/`` with train.zip + val.zip (as in
    shared/), or an official release folder ``<name>2-{320,160,}`` with train/ + val/; an
    official ``.tgz`` found there is extracted once, beside it."""
    folders = [root / name, *(root / f"{name}2{s}" for s in ("-320", "-160", "")), root]
    for base in folders:
        if base.is_dir() and find_split_sources(base) is not None:
            return base
    for base in folders[:-1]:
        archive = base.with_name(base.name + ".tgz")
        if base.name != name and archive.is_file():
            extract_tar(archive, base)
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
    root = need_root(root, name)
    base = _fastai_subset_base(root, name)
    if base is None and download:  # the official 320 px release, checked, then extracted
        download_all([FASTAI_URL.format(name=name)], root, cache_dir)
        base = _fastai_subset_base(root, name)
    if base is None:
        raise UserError(
            f"{name} not found under {root}: expected {name}/train.zip + val.zip, or the "
            f"official {name}2-320/ (train/, val/) or {name}2-320.tgz (or pass --download)"
        )
    wnids = FASTAI_SUBSETS[name]
    size = image_size or FASTAI_SUBSET_SIZE
    ds = load_folder_cached(name, base, split, 3, size, IMAGENET_MEAN, IMAGENET_STD, cache_dir)
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


def fastai_info(name: str, image_size: int | None) -> DatasetInfo:
    size = image_size or FASTAI_SUBSET_SIZE
    return DatasetInfo(name, tuple(sorted(FASTAI_SUBSETS[name])), size, 3, IMAGENET_MEAN,
                       IMAGENET_STD)  # fmt: skip


SOURCES = tuple(
    Source(
        name,
        lambda root, split, cache, size, download, name=name: load_fastai_subset(
            name, root, split, cache, size, download
        ),
        lambda root, size, name=name: fastai_info(name, size),
        None,
        f"{name}/train.zip + val.zip, {name}2-320/ or {name}2-320.tgz",
    )
    for name in FASTAI_SUBSETS
)
