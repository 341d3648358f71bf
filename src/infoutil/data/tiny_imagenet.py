"""Tiny-ImageNet (CS231n): 200 ImageNet classes at 64 px, 500 training images a class, and the
official val split (50 a class, labelled in ``val_annotations.txt``) as the test set.

Read from the official ``tiny-imagenet-200/`` folder or ``tiny-imagenet-200.zip`` under the
data root, or fetched with ``--download`` from the official address, checked against its
published MD5 before anything lands. Class order is the sorted wnids, which is also RDED's
(its ``prepare/tinyimagenet.md`` maps folders 00000..00199 to the sorted wnids), not the
order of ``wnids.txt``; class names come from ``words.txt``.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from infoutil.data.base import DatasetInfo, Source, TensorImageDataset
from infoutil.data.cache import as_tensors, cache_key, decoded_split, source_stamp
from infoutil.data.download import DOWNLOAD_DIGEST, download_all
from infoutil.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from infoutil.data.roots import need_root
from infoutil.errors import UserError

NAME = "tiny-imagenet"
FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = DOWNLOAD_DIGEST[ARCHIVE]  # the published digest of the official archive
SIZE = 64
SPLIT_COUNTS = {"train": 500, "test": 50}  # images a class in the official release


@dataclass(frozen=True)
class Release:
    """Where the release lies: a folder or a zip, and the prefix of its members."""

    path: Path
    is_zip: bool

    def read_text(self, rel: str) -> str:
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                try:
                    return zf.read(f"{FOLDER}/{rel}").decode()
                except KeyError:
                    raise UserError(f"{self.path}: {FOLDER}/{rel} is missing") from None
        f = self.path / rel
        if not f.is_file():
            raise UserError(f"{f}: missing file of the Tiny-ImageNet release")
        return f.read_text()

    def members(self) -> list[str]:
        """Every file, relative to the release folder."""
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                prefix = FOLDER + "/"
                return [n[len(prefix) :] for n in zf.namelist() if n.startswith(prefix)]
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]


def find_release(root: Path) -> Release | None:
    """The official folder (``root/tiny-imagenet-200/`` or ``root`` itself) or zip."""
    for base in (root / FOLDER, root):
        if (base / "wnids.txt").is_file() and (base / "train").is_dir():
            return Release(base, False)
    if (root / ARCHIVE).is_file():
        return Release(root / ARCHIVE, True)
    return None


def wnids_and_names(release: Release) -> tuple[tuple[str, ...], dict[str, str]]:
    """The sorted wnids of ``wnids.txt`` and each one's first name in ``words.txt``."""
    wnids = tuple(sorted(release.read_text("wnids.txt").split()))
    if len(set(wnids)) != len(wnids) or not wnids:
        raise UserError(f"{release.path}: wnids.txt is empty or lists a wnid twice")
    words = {}
    for line in release.read_text("words.txt").splitlines():
        wnid, _, names = line.partition("\t")
        words[wnid] = names.split(",")[0].strip()
    missing = [w for w in wnids if w not in words]
    if missing:
        raise UserError(f"{release.path}: words.txt has no name for {missing[0]}")
    return wnids, {w: words[w] for w in wnids}


def split_items(release: Release, split: str, wnids: tuple[str, ...]) -> list[tuple[str, int]]:
    """(member, label) of a split, sorted by class then file: ``train/<wnid>/images/*`` for
    training, ``val/images/*`` labelled by ``val/val_annotations.txt`` for the test set."""
    index = {w: i for i, w in enumerate(wnids)}
    files = release.members()
    items: list[tuple[str, int]] = []
    if split == "train":
        for m in files:
            parts = m.split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                if parts[1] not in index:
                    raise UserError(f"{release.path}: train/{parts[1]}/ is not in wnids.txt")
                items.append((m, index[parts[1]]))
    else:
        labels = {}
        for n, line in enumerate(release.read_text("val/val_annotations.txt").splitlines(), 1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise UserError(f"{release.path}: val/val_annotations.txt:{n}: unknown class")
            labels[fields[0]] = index[fields[1]]
        for m in files:
            parts = m.split("/")
            if len(parts) == 3 and parts[:2] == ["val", "images"]:
                if parts[2] not in labels:
                    raise UserError(f"{release.path}: {m} has no label in val_annotations.txt")
                items.append((m, labels[parts[2]]))
    if not items:
        raise UserError(f"{release.path}: no {split} images found (is the release complete?)")
    return sorted(items, key=lambda item: (item[1], item[0]))


def info(wnids: tuple[str, ...], image_size: int | None = None) -> DatasetInfo:
    return DatasetInfo(NAME, wnids, image_size or SIZE, 3, IMAGENET_MEAN, IMAGENET_STD)


def load(
    release: Release, split: str, image_size: int | None, cache_dir: Path
) -> TensorImageDataset:
    """A split decoded once into the array cache."""
    wnids, _ = wnids_and_names(release)
    items = split_items(release, split, wnids)
    size = image_size or SIZE
    key = cache_key(NAME, source_stamp(release.path), split, size)
    if release.is_zip:
        with zipfile.ZipFile(release.path) as zf:
            arrays = decoded_split(
                cache_dir, key, items, lambda m: io.BytesIO(zf.read(f"{FOLDER}/{m}")), 3, size,
                str(release.path),
            )  # fmt: skip
    else:
        arrays = decoded_split(
            cache_dir, key, items, lambda m: release.path / m, 3, size, str(release.path)
        )
    return TensorImageDataset(info(wnids, size), split, *as_tensors(arrays))


def load_tiny_imagenet(
    root: Path | None, split: str, cache_dir: Path, image_size: int | None, download: bool
) -> TensorImageDataset:
    root = need_root(root, NAME)
    release = find_release(root)
    if release is None and download:
        download_all([URL], root, cache_dir)
        release = find_release(root)
    if release is None:
        raise UserError(
            f"tiny-imagenet not found under {root}: expected the official {FOLDER}/ folder or "
            f"{ARCHIVE} (or pass --download)"
        )
    return load(release, split, image_size, cache_dir)


def tiny_info(root: Path | None, image_size: int | None) -> DatasetInfo | None:
    """From ``wnids.txt`` alone; None where the release is not there yet (loading says where
    it looked, or downloads it)."""
    release = find_release(need_root(root, NAME))
    return None if release is None else info(wnids_and_names(release)[0], image_size)


SOURCES = (
    Source(
        NAME,
        lambda root, split, cache, size, download: load_tiny_imagenet(
            root, split, cache, size, download
        ),
        tiny_info,
        None,
        f"{FOLDER}/ or {ARCHIVE}",
    ),
)
