"""Why does InfoUtil trail RDED on a low-resolution dataset? One factor changed at a time.

Each variant changes one named option of the `infoutil` method; all share the teacher, the
candidate pool, the Shapley maps (cached) and the evaluation protocol.

    python benchmarks/ablation.py --dataset fashion-mnist --teacher T --ipc 10 --epochs 100 \
        --seeds 2 --work /tmp/ablation --results benchmarks/results/ablation-fashion-mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

from infoutil.config import PROTOCOLS, DistillConfig
from infoutil.evaluation.compare import compare
from infoutil.pipeline import Cell, run_cell
from infoutil.runtime import RunContext

VARIANTS = {
    "paper-defaults": {},
    "lowest-grad-norm": {"utility": {"select": "lowest"}},
    "whole-image-crops": {"informativeness": {"pool_kernel": 4}},
    "three-quarter-crops": {"informativeness": {"pool_kernel": 3}},
    "no-noise": {"informativeness": {"alpha": 0.0}},
    "whole-image-lowest": {"informativeness": {"pool_kernel": 4}, "utility": {"select": "lowest"}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    work, results = Path(args.work), Path(args.results)
    protocol = PROTOCOLS["rded"].model_copy(update={"epochs": args.epochs})
    run = RunContext(data_root=args.data_root)
    for name in args.variants:
        cfg = DistillConfig(method="infoutil", dataset=args.dataset, ipc=args.ipc, **VARIANTS[name])
        cell = Cell(name, cfg, args.teacher, protocol=protocol, seeds=args.seeds, evaluation=name,
                    label=f"infoutil:{name}")  # fmt: skip
        run_cell(cell, work, run, results)
    compare([results], results / "table")
    print((results / "table" / "results.md").read_text())


if __name__ == "__main__":
    main()
