"""Did a quarter-set student learn the mosaic layout rather than the objects?

Each kept student of an evaluation is measured on the split its set was distilled without, as
is (the evaluation's own number) and with every image shrunk to half its side and tiled 2x2
(the layout of a factor-2 set: four pictures to an image, here whole ones at half scale). A
student that learnt the layout should read the tiled images better than a whole-image student
does; run both. Issue "A strong teacher at 128 px".

    python benchmarks/scale_shift.py --data-root DATA --out benchmarks/results/scale_shift.json \\
        RUNS/study-imagenette/eval/default-ipc10-val-bf16 \\
        RUNS/study-imagenette/eval/default-f2-ipc10-val-bf16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from infoutil.data import load_dataset
from infoutil.data.base import ValidationSplit
from infoutil.distributed import Context
from infoutil.io.distilled import load_distilled
from infoutil.models import create_model


def tiled(x: torch.Tensor) -> torch.Tensor:
    """Each image at half its side, four times, 2x2."""
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    return small.repeat(1, 1, 2, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluations", nargs="+", type=Path)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = Context()  # one process: the whole split
    rows = []
    for folder in args.evaluations:
        config = json.loads((folder / "config.json").read_text())
        distilled = load_distilled(config["distilled"])
        validation = ValidationSplit.from_dict(distilled.manifest.get("validation"))
        size = distilled.info.image_size
        data = load_dataset(distilled.info.name, config["split"], args.data_root,
                            validation=validation, image_size=size)  # fmt: skip
        for seed in config["seeds"]:
            model = create_model(config["student"], distilled.info)
            model.load_state_dict(load_file(str(folder / f"seed_{seed}_student.safetensors")))
            whole = ctx.sharded_accuracy(model, data, 250)  # eval mode, no grad
            half = ctx.sharded_accuracy(model, data, 250, transform=tiled)
            row = {
                "evaluation": folder.name,
                "seed": seed,
                "whole": whole,
                "tiled_half_scale": half,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
