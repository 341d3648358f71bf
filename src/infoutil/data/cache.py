"""The decoded-image cache: one folder of ``.npy`` arrays per split, memory-mapped when read.

A split is decoded once, in chunks, into ``<cache>/<key>.partial/``: ``images.npy`` is
allocated at its full size first and filled chunk by chunk, and ``progress.json`` records the
chunks done, so a killed decode resumes where it stopped and writes the same bytes. The last
step renames the folder to ``<cache>/<key>/``: a folder without ``.partial`` is complete.
A split that fits in a GiB is read into memory; a larger one is read by rows when a batch
asks for them (``data.rows``), so a split larger than the machine's memory costs only the
images a stage reads.
"""

from __future__ import annotations

import fcntl
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
from infoutil.data.rows import RowFile, open_images
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


def read_split(folder: Path) -> dict | None:
    """A complete cached split (``images``: a tensor in memory, or rows read on demand); None
    if it is missing or damaged (a damaged cache is rebuilt, never trusted)."""
    try:
        images = open_images(folder / "images.npy")
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if not len(images) == len(labels) == len(ids):
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
    """``items`` (name, label) decoded to uint8 [N, C, S, S] in the cache, or read from it.
    One process decodes a split at a time (torchrun's other ranks wait, then read it)."""
    done = cache_dir / key
    if (arrays := read_split(done)) is not None:
        return arrays
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (arrays := read_split(done)) is not None:
            return arrays
        return _decode(cache_dir, key, items, open_item, channels, size, label)


def _decode(cache_dir, key, items, open_item, channels, size, label) -> dict:
    done = cache_dir / key
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
    fd = os.open(images.path, os.O_WRONLY)
    try:
        for begin in range(start * CHUNK, len(items), CHUNK):
            rows = []
            for name, _ in items[begin : begin + CHUNK]:
                image = decode_image(open_item(name), channels, size, name=f"{label}:{name}")
                if tuple(image.shape) != shape:
                    raise UserError(
                        f"{label}:{name}: the image is {tuple(image.shape)}, the others "
                        f"{shape}; give an image size (--image-size) to resize them all"
                    )
                rows.append(image.numpy())
                bar.update(1)
            # written, not mapped: the pages go to the page cache, not this process
            os.pwrite(fd, np.stack(rows).tobytes(), images.offset + begin * images.row_bytes)
            os.fsync(fd)
            atomic_write_json(state, {"chunks": begin // CHUNK + 1})
    finally:
        os.close(fd)
        bar.close()
    np.save(stage / "labels.npy", np.asarray([y for _, y in items], dtype=np.int64))
    np.save(stage / "ids.npy", np.asarray([n for n, _ in items]))
    state.unlink(missing_ok=True)
    stage.rename(done)  # the rename is the completion marker
    arrays = read_split(done)
    assert arrays is not None
    return arrays


def _images_file(stage: Path, shape: tuple[int, ...]) -> RowFile:
    """``images.npy`` at its full size (a header and a sparse body), reopened where a killed
    decode left it."""
    path = stage / "images.npy"
    if path.is_file():
        try:
            existing = RowFile(path)
            if existing.shape == shape:
                return existing
        except ValueError:
            pass
    (stage / "progress.json").unlink(missing_ok=True)
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del header  # only the header was written; the rows follow with pwrite
    return RowFile(path)


def as_tensors(arrays: dict) -> tuple:
    """(images, labels, ids) of a cached split, as ``TensorImageDataset`` takes them."""
    return (
        arrays["images"],
        torch.from_numpy(np.asarray(arrays["labels"], dtype=np.int64)),
        [str(i) for i in arrays["ids"]],
    )
