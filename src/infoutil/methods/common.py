"""What every distillation method shares: the candidate pool, chunked and cached scoring,
assembly of patches into images, and soft labels.

A method returns a :class:`Selection`: for each class, its patches (a source image and a box)
in rank order. Everything else (stitching, labels, files) is common, so every method writes the
same format and is evaluated the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from infoutil.atomic import atomic_save_tensors
from infoutil.attribution.patch import patch_bounds
from infoutil.config import DistillConfig
from infoutil.data.augment import to_float
from infoutil.data.base import ImageDataset, index_sha256, per_class_sample
from infoutil.distributed import Context
from infoutil.errors import UserError
from infoutil.io.checkpoint import Teacher
from infoutil.runtime import StageTimer, fault_point, progress, warn
from infoutil.selection.scored import ScoredPatches


@dataclass
class Patch:
    """One piece of a distilled image: a box (top, left, height, width) of a training image."""

    source: int
    box: tuple[int, int, int, int]
    provenance: dict = field(default_factory=dict)


@dataclass
class Selection:
    patches: list[list[Patch]]  # per class, best first; ipc * factor^2 each
    factor: int
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # for scores.safetensors
    stitch: str = "consecutive"  # how ranked patches fill the images (STITCH_RULES)
    # what the judge teacher thought of the kept patches and of the whole pool, as scored
    selected_scored: ScoredPatches | None = None
    pool_scored: ScoredPatches | None = None
    layout: str = "patches"  # or "whole images": real images kept whole at any factor
    quarter_probe: dict | None = None  # the teacher on random quarters (selection.probe)


@dataclass
class MethodContext:
    cfg: DistillConfig
    train: ImageDataset
    teacher: Teacher
    store_root: Path
    timer: StageTimer
    dist: Context
    progress: bool = True
    device: torch.device = torch.device("cpu")

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """Training images ``indices`` as floats in [0, 1] on the compute device."""
        return to_float(self.train.get_batch(indices)).to(self.device)

    @property
    def factor(self) -> int:
        if self.cfg.factor is not None:
            return self.cfg.factor
        return 1 if self.train.info.low_resolution else 2

    @property
    def forward_batch(self) -> int:
        return forward_batch(self.cfg, self.train.info)

    @property
    def crop_batch(self) -> int:
        return crop_batch(self.cfg, self.train.info)

    @property
    def patches_per_image(self) -> int:
        return self.factor**2

    def store(self, stage: str, **key) -> ScoreStore:
        parts = {
            "stage": stage,
            "dataset": self.train.info.name,
            "classes": list(self.train.info.class_names),
            "train_size": len(self.train),
            "teacher": self.teacher.weights_sha256,
            **key,
        }
        if self.train.validation is not None:
            parts["validation"] = self.train.validation["sha256"]
        return ScoreStore(self.store_root, stage, parts)


def forward_batch(cfg, info) -> int:
    """Images per teacher forward: the config's, else 512 of 32 px or as many pixels."""
    if cfg.forward_batch_size is not None:
        return cfg.forward_batch_size
    return max(16, min(512, 512 * 32 * 32 // info.image_size**2))


def crop_batch(cfg, info) -> int:
    """Crops a forward for their logits or features (crop scores, the cluster rule's features,
    soft labels): 256 up to 32 px, as these forwards always were; fewer where images are larger."""
    return min(256, forward_batch(cfg, info))


def full_box(info) -> tuple[int, int, int, int]:
    return (0, 0, info.image_size, info.image_size)


def candidate_pool(train: ImageDataset, per_class: int, seed: int) -> torch.Tensor:
    """Up to ``per_class`` training indices per class, drawn with the seed, grouped by class.

    A class with fewer images than ``per_class`` contributes all it has, with a warning.
    """
    counts = torch.bincount(train.targets, minlength=train.info.num_classes)
    for c in torch.nonzero(counts < per_class).flatten().tolist():
        warn(
            f"class {train.info.class_names[c]!r} has only {int(counts[c])} images, fewer than "
            f"candidates_per_class {per_class}; using all of them"
        )
    return per_class_sample(train.targets, train.info.num_classes, per_class, seed)


def check_supply(counts: list[int], need: int, info, what: str, fix: str) -> None:
    """Every class must offer ``need`` items; the error names the first class that cannot."""
    for c, have in enumerate(counts):
        if have < need:
            raise UserError(
                f"class {info.class_names[c]!r} has only {have} {what} but {need} are needed; {fix}"
            )


def check_finite(t: torch.Tensor, what: str, teacher: Teacher) -> None:
    if not torch.isfinite(t).all():
        raise UserError(
            f"{teacher.path}: the teacher produced NaN or Inf {what}; "
            "the checkpoint is broken, retrain or pick another epoch"
        )


class ScoreStore:
    """Finished chunks of a scoring stage, saved as they complete.

    The directory name is a hash of everything the scores depend on (dataset, teacher weights,
    seed, the stage's settings), so a resumed run, a run at another IPC, or another rank reuses
    finished chunks, and a change of any input starts afresh.
    """

    def __init__(self, root: Path, stage: str, key: dict):
        import hashlib

        self.key = json.dumps(key, sort_keys=True)
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:20]
        self.dir = Path(root) / f"{stage}-{digest}"

    def _path(self, chunk: int, candidates: torch.Tensor) -> Path:
        # named by its candidates too: runs on other pools (another --candidates-per-class)
        # share the directory, and must not overwrite each other's chunk i
        return self.dir / f"chunk_{chunk:05d}_{index_sha256(candidates)[:12]}.safetensors"

    def load(
        self, chunk: int, expect: torch.Tensor, fields: tuple[str, ...] = ()
    ) -> dict[str, torch.Tensor] | None:
        """A finished chunk, or None: missing, damaged, for other candidates, or written by an
        older version that lacked one of ``fields`` (all of these are recomputed)."""
        path = self._path(chunk, expect)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError):
            return None
        if not torch.equal(tensors.pop("candidates", torch.empty(0)), expect):
            return None
        if any(f not in tensors for f in fields):
            return None
        return tensors

    def save(self, chunk: int, candidates: torch.Tensor, tensors: dict[str, torch.Tensor]):
        self.save_tensors(self._path(chunk, candidates).name, {"candidates": candidates, **tensors})

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """``name`` in the store, atomically, beside the key it was computed under."""
        if not (self.dir / "key.json").is_file():
            from infoutil.atomic import atomic_write_bytes

            atomic_write_bytes(self.dir / "key.json", self.key.encode())
        atomic_save_tensors(self.dir / name, tensors)


def chunked_scores(
    mc: MethodContext,
    store: ScoreStore,
    candidates: torch.Tensor,
    compute: Callable[[slice], dict[str, torch.Tensor]],
    *,
    desc: str,
    chunk_size: int = 64,
    forwards_per_item: int | Callable[[dict], int] = 0,
    fields: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Score ``candidates`` in fixed chunks, each saved when done; ranks split the chunks.

    ``compute`` gets the slice of ``candidates`` it should score. ``forwards_per_item`` is the
    teacher forwards each item costs, or a function of a computed chunk's tensors that counts
    them.

    Chunk ``i`` always holds candidates ``[i * chunk_size, (i + 1) * chunk_size)``, and any
    randomness inside ``compute`` is seeded per candidate, so the result does not depend on the
    number of ranks or on where a previous run was killed.
    """
    n_chunks = math.ceil(len(candidates) / chunk_size)
    mine = list(range(mc.dist.rank, n_chunks, mc.dist.world_size))
    results: dict[int, dict[str, torch.Tensor]] = {}
    bar = progress(
        total=sum(len(candidates[i * chunk_size : (i + 1) * chunk_size]) for i in mine),
        desc=desc,
        unit="img",
        enabled=mc.progress,
    )
    computed = 0
    with mc.timer.stage(desc):
        for i in mine:
            sl = slice(i * chunk_size, (i + 1) * chunk_size)
            chunk = candidates[sl]
            tensors = store.load(i, chunk, fields)
            if tensors is None:
                tensors = compute(sl)
                store.save(i, chunk, tensors)
                fault_point(f"{desc}-chunk")
                computed += (
                    forwards_per_item(tensors)
                    if callable(forwards_per_item)
                    else len(chunk) * forwards_per_item
                )
            results[i] = tensors
            bar.update(len(chunk))
        bar.close()
    mc.timer.count(desc, computed)
    if mc.dist.active:
        merged: dict[int, dict[str, torch.Tensor]] = {}
        for part in mc.dist.all_gather_object(results):
            merged.update(part)
        results = merged
    keys = results[0].keys() if results else []
    return {k: torch.cat([results[i][k] for i in range(n_chunks)]) for k in keys}


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of ``[C, H, W]`` or ``[B, C, H, W]``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batched = x if x.dim() == 4 else x[None]
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out if x.dim() == 4 else out[0]


def cell_slices(size: int, factor: int) -> list[tuple[slice, slice]]:
    """Row-major cells of a ``factor x factor`` canvas (remainder pixels spread as RDED does)."""
    b = patch_bounds(size, factor)
    return [
        (slice(b[r], b[r + 1]), slice(b[q], b[q + 1])) for r in range(factor) for q in range(factor)
    ]


def stitch_consecutive(ipc: int, k: int) -> list[list[int]]:
    """Image j takes ranks j*k .. j*k + k - 1 (InfoUtil's Algorithm 1)."""
    return [list(range(j * k, (j + 1) * k)) for j in range(ipc)]


def stitch_blocks(ipc: int, k: int) -> list[list[int]]:
    """Slot s of image j takes rank s*ipc + j: the j-th patch of the s-th block of ``ipc``
    ranks (RDED's ``mix_images``), so every image's first slot holds one of the best."""
    return [[s * ipc + j for s in range(k)] for j in range(ipc)]


STITCH_RULES = {"consecutive": stitch_consecutive, "blocks": stitch_blocks}


def assemble(
    train: ImageDataset, selection: Selection, ipc: int
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stitch each class's ranked patches, ``factor^2`` per image, by the selection's rule;
    a selection of whole images keeps one image each whatever the factor.

    Returns uint8 images ``[N, C, H, W]``, labels ``[N]`` and one manifest entry per image.
    """
    info = train.info
    whole = selection.layout == "whole images"
    f = 1 if whole else selection.factor
    k = f * f
    cells = cell_slices(info.image_size, f)
    slots = STITCH_RULES[selection.stitch](ipc, k)
    images, labels, entries = [], [], []
    for c, patches in enumerate(selection.patches):
        for j in range(ipc):
            group = [patches[r] for r in slots[j]]
            canvas = torch.zeros((info.channels, info.image_size, info.image_size))
            sources = to_float(train.get_batch([p.source for p in group]))
            for p, (patch, src) in enumerate(zip(group, sources, strict=True)):
                top, left, h, w = patch.box
                ys, xs = cells[p]
                canvas[:, ys, xs] = resize_to(
                    src[:, top : top + h, left : left + w], (ys.stop - ys.start, xs.stop - xs.start)
                )
            images.append(canvas.mul(255).round().clamp(0, 255).to(torch.uint8))
            labels.append(c)
            entries.append(
                {
                    "class": c,
                    "patches": [
                        {
                            "source_index": p.source,
                            "source_id": train.source_id(p.source),
                            "box": list(p.box),
                            **p.provenance,
                        }
                        for p in group
                    ],
                }
            )
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), entries


@torch.inference_mode()
def soft_labels(
    label_teacher: Teacher, images: torch.Tensor, factor: int, batch_size: int = 256
) -> torch.Tensor:
    """Per-patch logits ``[N, factor^2, C]``: each cell of each image, resized to the input
    size, through the label teacher (the student sees the same pixels).

    The set is read ``batch_size // factor^2`` images at a time, so that only one batch of
    patches is ever in float (at 224 px a whole set of 2,090 images is 1.3 GB in float).
    Each forward holds the same patches as one ``batch_size`` slice of all of them in a row.
    """
    size = images.shape[-1]
    cells = cell_slices(size, factor)
    device = next(label_teacher.model.parameters()).device
    step = max(1, batch_size // len(cells))
    out = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step].to(device)
        crops = torch.stack(
            [resize_to(to_float(chunk[:, :, ys, xs]), (size, size)) for ys, xs in cells], 1
        )  # [n, k, C, H, W]
        out.append(label_teacher.model(crops.flatten(0, 1)).float().cpu())
    if not out:
        return torch.empty(0, len(cells), label_teacher.info.num_classes)
    return torch.cat(out).view(len(images), len(cells), -1)
