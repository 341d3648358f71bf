"""The decoded-image cache: one folder of ``.npy`` arrays per split, memory-mapped when read.

A split is decoded once, in chunks, into ``<cache>/<key>.partial/``: ``images.npy`` is
allocated at its full size first and filled chunk by chunk, and ``progress.json`` records the
chunks done, so a killed decode resumes where it stopped and writes the same bytes. The last
step renames the folder to ``<cache>/<key>/``: a folder without ``.partial`` is complete.
Reading maps ``images.npy`` into memory rather than loading it, so a split larger than the
machine's memory costs only the pages a stage touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from infoutil.atomic import atomic_write_json
from infoutil.data.base import decode_image
from infoutil.errors import UserError
from infoutil.runtime import progress

# "2": one folder of memory-mapped .npy files per split (was one .npz archive)
CACHE_VERSION = "2"
CHUNK = 2048  # images a chunk: its progress is saved, so a kill loses at most one


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    d = cache_dir or os.environ.get("INFOUTIL_CACHE") or Path.home() / ".cache" / "infoutil"
    return Path(d).expanduser()


def cache_key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (CACHE_VERSION, *parts))).encode()).hexdigest()[:16]


def source_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def read_split(folder: Path) -> dict[str, np.ndarray] | None:
    """A complete cached split, ``images`` memory-mapped; None if it is missing or damaged
    (a damaged cache is rebuilt, never trusted)."""
    try:
        images = np.load(folder / "images.npy", mmap_mode="c", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.ndim != 4 or not len(images) == len(labels) == len(ids):
        return None
    return {"images": images, "labels": labels, "ids": ids}


def decoded_split(
    cache_dir: Path,
    key: str,
    items: Sequence[tuple[str, int]],
    open_item: Callable[[str], object],
    channels: int,
    size: int | None,
    label: str,
) -> dict[str, np.ndarray]:
    """``items`` (name, label) decoded to uint8 [N, C, S, S] in the cache, or read from it."""
    done = cache_dir / key
    if (arrays := read_split(done)) is not None:
        return arrays
    shutil.rmtree(done, ignore_errors=True)
    stage = cache_dir / f"{key}.partial"
    stage.mkdir(parents=True, exist_ok=True)
    if size is None:  # every image at its own size: the first one's, checked on each
        first = decode_image(open_item(items[0][0]), channels, None, name=f"{label}:{items[0][0]}")
        shape = tuple(first.shape)
    else:
        shape = (channels, size, size)
    images = _images_file(stage, (len(items), *shape))
    state = stage / "progress.json"
    start = json.loads(state.read_text())["chunks"] if state.is_file() else 0
    bar = progress(total=len(items), initial=start * CHUNK, desc=f"decode {label}", unit="img")
    for begin in range(start * CHUNK, len(items), CHUNK):
        for row in range(begin, min(begin + CHUNK, len(items))):
            name = items[row][0]
            image = decode_image(open_item(name), channels, size, name=f"{label}:{name}")
            if tuple(image.shape) != shape:
                raise UserError(
                    f"{label}:{name}: the image is {tuple(image.shape)}, the others "
                    f"{shape}; give an image size (--image-size) to resize them all"
                )
            images[row] = image.numpy()
            bar.update(1)
        images.flush()
        atomic_write_json(state, {"chunks": begin // CHUNK + 1})
    bar.close()
    del images
    np.save(stage / "labels.npy", np.asarray([y for _, y in items], dtype=np.int64))
    np.save(stage / "ids.npy", np.asarray([n for n, _ in items]))
    state.unlink(missing_ok=True)
    stage.rename(done)  # the rename is the completion marker
    arrays = read_split(done)
    assert arrays is not None
    return arrays


def _images_file(stage: Path, shape: tuple[int, ...]) -> np.memmap:
    """``images.npy`` at its full size, reopened where a killed decode left it."""
    path = stage / "images.npy"
    if path.is_file():
        existing = np.load(path, mmap_mode="r+", allow_pickle=False)
        if existing.shape == shape and existing.dtype == np.uint8:
            return existing
    (stage / "progress.json").unlink(missing_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def as_tensors(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, labels, ids) over a cached split; the images stay memory-mapped."""
    return (
        torch.from_numpy(arrays["images"]),
        torch.from_numpy(np.asarray(arrays["labels"], dtype=np.int64)),
        [str(i) for i in arrays["ids"]],
    )
