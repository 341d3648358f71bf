"""The quarter probe of each committed teacher (issue "A strong teacher at 128 px", §5).

The probe (``infoutil.selection.probe``, recorded by every InfoUtil distil) is the teacher's
top-1 on one random native quarter of each of about 500 pool candidates, beside its top-1 on
the same images whole. Here it is run on named teachers, each on its own dataset's training
split less the validation split it was trained without, on the study's pool (100 candidates a
class, seed 0), so a threshold can be read against the studies' outcomes.

    python benchmarks/quarter_probe.py --data-root DATA \
        --out benchmarks/results/quarter_probe.json \
        benchmarks/teachers/cifar10-convnet3 benchmarks/teachers/imagewoof-convnet5 ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from infoutil.atomic import atomic_write_json
from infoutil.data import ValidationSplit, load_dataset
from infoutil.data.augment import to_float
from infoutil.io.checkpoint import load_teacher
from infoutil.methods.common import candidate_pool
from infoutil.selection.probe import quarter_probe


def probe(teacher: str, data_root: str, candidates_per_class: int, seed: int) -> dict:
    t = load_teacher(teacher)
    split = ValidationSplit.from_dict(t.meta.get("validation"))
    train = load_dataset(t.info.name, "train", data_root, validation=split)
    candidates = candidate_pool(train, candidates_per_class, seed)
    start = time.perf_counter()
    result = quarter_probe(
        t.model, lambda idx: to_float(train.get_batch(idx)), candidates, train.targets[candidates],
        num_classes=train.info.num_classes, seed=seed, fill=t.model.mean.reshape(-1),
        batch_size=64,
    )  # fmt: skip
    return {
        "teacher": teacher,
        "epoch": t.epoch,
        "dataset": t.info.name,
        "image_size": t.info.image_size,
        "test_accuracy": t.meta.get("test_accuracy"),
        "candidates_per_class": candidates_per_class,
        "seconds": round(time.perf_counter() - start, 1),
        **result,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("teachers", nargs="+")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--candidates-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for teacher in args.teachers:
        rows.append(probe(teacher, args.data_root, args.candidates_per_class, args.seed))
        r = rows[-1]
        print(
            f"{teacher} ({r['dataset']}, {r['image_size']} px): "
            f"quarters {100 * r['quarter_top1']:.1f}%, whole {100 * r['whole_top1']:.1f}% "
            f"of {r['images']} candidates ({r['seconds']} s)",
            flush=True,
        )
        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
