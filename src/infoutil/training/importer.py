"""``teacher import``: published weights (torchvision, timm, RDED) as an ordinary teacher.

No code in the weights file runs, and neither torchvision nor timm is needed
(``models.pretrained``). Where a test set is named, the teacher is measured on it, and one
that scores near chance is refused: the usual cause is a class order that is not the
dataset's (``--class-order`` gives the weights' own).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from infoutil.data import load_dataset
from infoutil.data.base import DatasetInfo
from infoutil.data.sources import dataset_info
from infoutil.distributed import Context
from infoutil.errors import UserError
from infoutil.io.checkpoint import class_fit, completed_epochs, foreign_file, save_teacher_epoch
from infoutil.models import inference_batch
from infoutil.models.pretrained import import_weights, restrict_classes
from infoutil.runtime import RunContext

NEAR_CHANCE = 2.0  # refused below this many times chance: a class order that does not match


def read_class_order(path: Path, info: DatasetInfo) -> list[int]:
    """For each of the dataset's classes, the row of the weights' last layer that scores it,
    from a file that lists the weights' classes in their order (one per line, like
    Tiny-ImageNet's ``wnids.txt``)."""
    try:
        lines = path.read_text().splitlines()
        names = [line.split("\t")[0].strip() for line in lines if line.strip()]
    except OSError as err:
        raise UserError(f"--class-order {path}: cannot read it ({err.strerror})") from err
    if sorted(names) != sorted(info.class_names):
        missing = sorted(set(info.class_names) - set(names))
        extra = sorted(set(names) - set(info.class_names))
        raise UserError(
            f"--class-order {path}: lists {len(names)} classes, not {info.name}'s "
            f"{info.num_classes} (missing {', '.join(missing[:3]) or '-'}; not in the dataset "
            f"{', '.join(extra[:3]) or '-'})"
        )
    row = {name: i for i, name in enumerate(names)}
    return [row[name] for name in info.class_names]


def reorder_classes(model: torch.nn.Module, rows: list[int]) -> None:
    """Permute the last layer so that output ``i`` is the dataset's class ``i``."""
    index = torch.tensor(rows)
    with torch.no_grad():
        model.fc.weight.copy_(model.fc.weight[index])
        model.fc.bias.copy_(model.fc.bias[index])


def import_teacher(
    weights: Path,
    arch: str,
    out: Path,
    *,
    classes: str,
    dataset: str | None = None,
    layout: str = "auto",
    image_size: int | None = None,
    class_order: Path | None = None,
    run: RunContext | None = None,
) -> dict:
    """Write the weights as a teacher at ``out``; returns its metadata."""
    run = run or RunContext()
    if completed_epochs(out):
        raise UserError(f"{out}: already holds a teacher; choose another --out")
    if (foreign := foreign_file(out)) is not None:
        raise UserError(f"{out}: holds {foreign.name}; import into a new or empty folder")
    source = None
    if classes != "imagenet-1k":
        source = (
            dataset_info(classes, run.data_root, image_size, run.cache_dir)
            or load_dataset(
                classes, "test", run.data_root, cache_dir=run.cache_dir, image_size=image_size
            ).info
        )
    model, info, layout = import_weights(weights, arch, classes, layout, image_size, source)
    if class_order is not None:
        reorder_classes(model, read_class_order(class_order, info))
    acc = None
    if dataset is not None:
        # only weights in a dataset's own class order can be misordered; ImageNet-1K's are
        # mapped to a subset by their wnids
        acc = _measure(model, info, dataset, image_size, weights, run, classes != "imagenet-1k")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    imported = {"file": weights.name, "sha256": digest, "layout": layout}
    if class_order is not None:
        imported["class_order"] = str(class_order)
    meta = {
        "arch": arch,
        "dataset": info.to_dict(),
        "epoch": 1,
        "epochs": 1,
        "seed": None,
        "test_accuracy": acc,
        "test_dataset": dataset,
        "imported_from": imported,
    }
    return save_teacher_epoch(out, model, meta)


def _measure(model, info: DatasetInfo, dataset: str, image_size, weights: Path, run,
             check_order: bool) -> float:  # fmt: skip
    """Test accuracy on ``dataset`` (through the subset's logits for a 1,000-class teacher on a
    wnid subset); near chance is refused with the likely cause."""
    size = image_size or info.image_size
    known = dataset_info(dataset, run.data_root, size, run.cache_dir)
    if known is not None:
        class_fit(info, known, str(weights))  # refused before any image is decoded
    test = load_dataset(dataset, "test", run.data_root, cache_dir=run.cache_dir, image_size=size)
    _, restriction = class_fit(info, test.info, str(weights))
    scored = model
    if restriction is not None:  # measured on the subset's logits; saved whole
        scored = copy.deepcopy(model)
        restrict_classes(scored, restriction["indices"])
    scored = scored.to(run.compute)
    acc = round(Context().sharded_accuracy(scored, test, inference_batch(scored, test.info)), 6)
    chance = 1 / test.info.num_classes
    if check_order and acc < NEAR_CHANCE * chance:
        raise UserError(
            f"{weights}: {100 * acc:.1f}% on {dataset}'s test set, near chance "
            f"({100 * chance:.1f}%): the weights' classes are probably in another order than "
            f"{dataset}'s ({', '.join(test.info.class_names[:3])}...); pass --class-order FILE "
            "listing the weights' classes in their order (RDED's Tiny-ImageNet checkpoints use "
            "the sorted wnids, not wnids.txt's order)"
        )
    return acc
