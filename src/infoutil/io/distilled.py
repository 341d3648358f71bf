"""The distilled set on disk: a directory any user can open.

::

    OUT/
      images/<NNN>_<class>/<n>.png   lossless PNGs; folder names sort in class-index order
      labels.safetensors             per-patch soft-label logits [N, k, C] and hard labels [N]
      manifest.json                  config, seed, dataset, teachers, provenance of every image
      scores.safetensors             every candidate's scores (Shapley maps, boxes, grad norms)
      config.json                    the resolved options of the run
      run_stats.json                 wall time and forward passes (the one file that varies)
      COMPLETE.json                  sha256 of every other file, written last

The directory is built as ``OUT.partial`` and renamed into place (``io.outputs``), so ``OUT``
is either absent or complete; ``OUT.partial`` is what an interrupted run leaves, and
``--resume`` continues it.
The same seed and inputs give byte-identical files (all but ``run_stats.json``).
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from infoutil.atomic import (
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
)
from infoutil.data.base import BatchRows, DatasetInfo
from infoutil.errors import UserError
from infoutil.io.outputs import (  # noqa: F401  (re-exported: readers of a set need them)
    COMPLETE,
    DISTILLED_FORMAT,
    VARYING_FILES,
    staging_dir,
)
from infoutil.runtime import RunContext, fault_point


def class_folder(index: int, name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"
    return f"{index:03d}_{safe}"


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 [C, H, W] -> PNG bytes (no timestamps or text chunks: stable bytes)."""
    arr = image.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_distilled_files(
    stage: Path,
    info: DatasetInfo,
    images: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor | None,
    manifest: dict,
    scores: dict[str, torch.Tensor],
    stats: dict,
) -> None:
    """Write everything but the completion marker into ``stage``."""
    per_class: dict[int, int] = {}
    entries = manifest["images"]
    for row, (img, y) in enumerate(zip(images, labels.tolist(), strict=True)):
        n = per_class.get(y, 0)
        per_class[y] = n + 1
        rel = f"images/{class_folder(y, info.class_names[y])}/{n:05d}.png"
        atomic_write_bytes(stage / rel, png_bytes(img))
        entries[row]["file"] = rel
        fault_point("write-image")
    tensors = {"labels": labels.to(torch.int64)}
    if logits is not None:
        tensors["logits"] = logits.to(torch.float32)
    atomic_save_tensors(stage / "labels.safetensors", tensors)
    if scores:
        atomic_save_tensors(stage / "scores.safetensors", scores)
    atomic_write_json(stage / "manifest.json", manifest)
    atomic_write_json(stage / "run_stats.json", stats)


@dataclass
class DistilledSet(torch.utils.data.Dataset):
    """A distilled set loaded from disk. Items: (float image [C, H, W] in [0, 1], label)."""

    images: torch.Tensor  # uint8 [N, C, H, W] (the full baseline: rows read through the dataset)
    labels: torch.Tensor  # int64 [N]
    logits: torch.Tensor | None  # float32 [N, k, C] per-patch soft-label logits
    manifest: dict
    info: DatasetInfo
    path: Path
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, int(self.labels[i])

    @property
    def factor(self) -> int:
        return int(self.manifest.get("factor", 1))

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def ipc(self) -> int | None:
        return self.manifest.get("ipc")


def verify_complete(path: Path) -> dict:
    """Check the completion marker and every checksum; returns the marker."""
    if not path.is_dir():
        stage = staging_dir(path)
        hint = f" ({stage} is an interrupted run: rerun with --resume)" if stage.exists() else ""
        raise UserError(f"{path}: no distilled set here{hint}")
    marker = path / COMPLETE
    if not marker.is_file():
        raise UserError(
            f"{path}: incomplete distilled set (no {COMPLETE}); the run that wrote "
            "it did not finish, rerun it with --resume"
        )
    try:
        done = json.loads(marker.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{marker}: corrupt completion marker ({err})") from err
    for rel, digest in done.get("sha256", {}).items():
        f = path / rel
        if not f.is_file():
            raise UserError(f"{path}: corrupted distilled set, {rel} is missing")
        if sha256_file(f) != digest:
            raise UserError(f"{path}: corrupted distilled set, {rel} does not match its checksum")
    return done


def load_distilled(
    path: str | os.PathLike,
    *,
    verify: bool = True,
    run: RunContext | None = None,
) -> DistilledSet:
    """Open a distilled set; an incomplete or corrupted directory is refused in one line.

    The ``full`` baseline stores no images: it names the whole training set, which is loaded
    from the run's data root.
    """
    path, run = Path(path), run or RunContext()
    if verify:
        verify_complete(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}/manifest.json: missing or corrupt ({err})") from err
    if manifest.get("format") != DISTILLED_FORMAT:
        raise UserError(
            f"{path}: not an infoutil distilled set (format {manifest.get('format')!r})"
        )
    info = DatasetInfo.from_dict(manifest["dataset"])
    stats = {}
    if (path / "run_stats.json").is_file():
        stats = json.loads((path / "run_stats.json").read_text())
    if manifest.get("full_training_set"):
        from infoutil.data import ValidationSplit, load_dataset

        validation = ValidationSplit.from_dict(manifest.get("validation"))
        train = load_dataset(
            info.name,
            "train",
            run.data_root,
            cache_dir=run.cache_dir,
            validation=validation,
            image_size=info.image_size,
        )
        # read a batch at a time through the dataset: the training set need not fit in memory
        rows = BatchRows(train)
        return DistilledSet(rows, train.targets, None, manifest, info, path, stats)
    try:
        tensors = load_file(str(path / "labels.safetensors"))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}/labels.safetensors: unreadable ({err})") from err
    images = []
    for entry in manifest["images"]:
        f = path / entry["file"]
        try:
            with Image.open(f) as img:
                img.load()
                arr = torch.from_numpy(np.asarray(img).copy())
        except OSError as err:
            raise UserError(f"{f}: cannot read this image ({err})") from err
        images.append(arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1))
    stacked = torch.stack(images).contiguous()
    return DistilledSet(
        stacked, tensors["labels"], tensors.get("logits"), manifest, info, path, stats
    )
