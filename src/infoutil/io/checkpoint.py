"""Teacher checkpoints: safetensors weights plus JSON metadata, one pair per epoch.

``DIR/epoch_0003.safetensors`` holds the weights (its header carries the metadata too) and
``DIR/epoch_0003.json`` the metadata: arch, dataset, class names, normalisation, epoch, seed,
test accuracy and the sha256 of the weights. The JSON is written last, so an epoch counts
only once both files are complete. Nothing here unpickles anything: loading a teacher never
runs code from a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from infoutil.atomic import atomic_save_tensors, atomic_write_json, tensors_sha256
from infoutil.data.base import DatasetInfo
from infoutil.errors import UserError
from infoutil.models import Classifier, create_model
from infoutil.models.pretrained import class_restriction, restrict_classes
from infoutil.runtime import fault_point

TEACHER_FORMAT = "infoutil-teacher/1"
_EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.json$")


@dataclass
class Teacher:
    model: Classifier
    info: DatasetInfo
    meta: dict
    path: Path

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def weights_sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def describe(self) -> dict:
        """What a manifest or a results file records about the teacher."""
        out = {
            "path": str(self.path),
            "arch": self.arch,
            "epoch": self.epoch,
            "test_accuracy": self.meta.get("test_accuracy"),
            "weights_sha256": self.weights_sha256,
            # the validation split it was trained without; None: the whole training set
            "validation": self.meta.get("validation"),
        }
        # an imported teacher says where from, and where a 1000-class teacher serves a wnid
        # subset, which of its logits are used (absent for our own teachers)
        for key in ("imported_from", "class_restriction"):
            if self.meta.get(key) is not None:
                out[key] = self.meta[key]
        return out


def epoch_paths(out_dir: Path, epoch: int) -> tuple[Path, Path]:
    stem = out_dir / f"epoch_{epoch:04d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


# what a teacher run writes into its folder; anything else there belongs to someone else
RUN_FILE = re.compile(
    r"^\.?(config\.json|train_log\.jsonl|(epoch|optimizer)_\d{4,}\.(json|safetensors))"
    r"(\.tmp-\d+)?$"  # and their atomic writes' temporary files
)


def foreign_file(out_dir: Path) -> Path | None:
    """The first thing in ``out_dir`` that a teacher run did not write, or None."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return out_dir
    for p in sorted(out_dir.iterdir()):
        if p.is_dir() or not RUN_FILE.match(p.name):
            return p
    return None


def completed_epochs(out_dir: Path) -> list[int]:
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m and epoch_paths(out_dir, int(m.group(1)))[0].is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def save_teacher_epoch(out_dir: Path, model: Classifier, meta: dict) -> dict:
    """Write one epoch's weights, then its JSON; returns the metadata with the weights hash."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta, format=TEACHER_FORMAT, weights_sha256=tensors_sha256(state))
    weights, meta_path = epoch_paths(out_dir, int(meta["epoch"]))
    atomic_save_tensors(weights, state, {"infoutil": json.dumps(meta, sort_keys=True)})
    fault_point("teacher-checkpoint")  # weights written, epoch not yet committed
    atomic_write_json(meta_path, meta)
    return meta


def _resolve(spec: str) -> tuple[Path, Path]:
    """A teacher spec -> (weights file, metadata file).

    ``DIR`` (the last epoch), ``DIR@N`` (epoch N) or a ``.safetensors`` file.
    """
    path_str, _, epoch_str = spec.partition("@")
    path = Path(path_str).expanduser()
    if path.suffix in (".pt", ".pth", ".pkl", ".bin"):
        raise UserError(
            f"{path}: a pickled checkpoint; import it first with "
            f"'infoutil teacher import {path} --arch ARCH --dataset NAME --out DIR'"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"{path}: not a teacher checkpoint (expected a .safetensors file)")
        return path, path.with_suffix(".json")
    if not path.is_dir():
        raise UserError(f"teacher {path} does not exist (expected a checkpoint directory)")
    epochs = completed_epochs(path)
    if not epochs:
        raise UserError(f"{path}: no finished epoch checkpoints (epoch_NNNN.json) in this folder")
    if epoch_str:
        if not epoch_str.isdigit() or int(epoch_str) not in epochs:
            raise UserError(f"{path}: no checkpoint for epoch {epoch_str!r}; it has {epochs}")
        epoch = int(epoch_str)
    else:
        epoch = epochs[-1]
    return epoch_paths(path, epoch)


def load_teacher(spec: str | Path, expect: DatasetInfo | None = None) -> Teacher:
    """Load a teacher checkpoint and check it against the dataset it will be used with."""
    weights, meta_path = _resolve(str(spec))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights}: unreadable safetensors file ({err})") from err
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path}: missing or corrupt teacher metadata ({err})") from err
    if meta.get("format") != TEACHER_FORMAT:
        raise UserError(f"{meta_path}: not an infoutil teacher (format {meta.get('format')!r})")
    if tensors_sha256(state) != meta.get("weights_sha256"):
        raise UserError(
            f"{weights}: weights do not match the hash in {meta_path.name}; "
            "the file is corrupt or was changed"
        )
    info = DatasetInfo.from_dict(meta["dataset"])
    serves, restriction = info, None
    if expect is not None:  # refused here, before the weights are built or an image decoded
        serves, restriction = class_fit(info, expect, str(weights))
    model = create_model(meta["arch"], info)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{weights}: weights do not fit arch {meta['arch']!r}") from err
    if restriction is not None:
        restrict_classes(model, restriction["indices"])
        meta = dict(meta, class_restriction=restriction)
    model.eval()
    return Teacher(model, serves, meta, weights)


def check_teacher_fits(have: DatasetInfo, want: DatasetInfo, where: str) -> None:
    if have.num_classes != want.num_classes:
        raise UserError(
            f"{where}: teacher has {have.num_classes} classes but dataset "
            f"{want.name} has {want.num_classes}; use a teacher trained on it"
        )
    if have.channels != want.channels:
        raise UserError(
            f"{where}: the teacher reads {have.channels}-channel images but dataset "
            f"{want.name} has {want.channels} channels; use a teacher trained on it"
        )
    if have.image_size != want.image_size:
        raise UserError(
            f"{where}: teacher expects {have.channels}x{have.image_size}x{have.image_size} "
            f"inputs but dataset {want.name} gives {want.channels}x{want.image_size}x"
            f"{want.image_size}; use a teacher trained on it"
        )
    if tuple(have.class_names) != tuple(want.class_names):
        raise UserError(
            f"{where}: teacher's class order {list(have.class_names)[:4]}... differs "
            f"from dataset {want.name}'s {list(want.class_names)[:4]}..."
        )


def class_fit(have: DatasetInfo, want: DatasetInfo, where: str) -> tuple[DatasetInfo, dict | None]:
    """Whether a teacher of ``have``'s classes can serve ``want``, checked without its weights:
    as it is, or, for a teacher of ImageNet's wnids on a wnid subset, with its last layer cut
    to the subset's classes in the subset's order (``restrict_classes`` with the record's
    ``indices``). Returns (the info it then has, the restriction record or None)."""
    indices = class_restriction(have, want, where)
    if indices is None:
        check_teacher_fits(have, want, where)
        return have, None
    restricted = DatasetInfo(
        have.name, want.class_names, have.image_size, have.channels, have.mean, have.std
    )
    check_teacher_fits(restricted, want, where)
    record = {
        "from": have.name,
        "from_classes": have.num_classes,
        "indices": indices,
        "class_names": list(want.class_names),
    }
    return restricted, record
