"""The accuracy grid of issue "Evaluation": methods x IPC, students trained under one protocol.

Every distilled set and evaluation is a normal `infoutil` output; finished ones are skipped, so
the grid can be stopped and continued. Results (each run's results.json and the compare table)
go under --results; distilled sets and scores stay under --work.

    python benchmarks/grid.py --dataset fashion-mnist --teacher T --ipc 1 10 50 \
        --methods random rded infoutil --epochs 100 --seeds 3 \
        --work /tmp/grid --results benchmarks/results/fashion-mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

from infoutil.config import PROTOCOLS, DistillConfig
from infoutil.evaluation.compare import compare
from infoutil.pipeline import Cell, run_cell
from infoutil.report.plots import plot_compare
from infoutil.runtime import RunContext


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--label-teacher", default=None)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="+", default=["random", "rded", "infoutil"])
    ap.add_argument("--student", default="convnet3")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--full-epochs", type=int, default=2, help="epochs for the full baseline")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--candidates-per-class", type=int, default=300)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    args = ap.parse_args()

    work, results = Path(args.work), Path(args.results)
    run = RunContext(data_root=args.data_root)
    for method in args.methods:
        for ipc in [1] if method == "full" else args.ipc:
            name = f"{method}-ipc{ipc}" if method != "full" else "full"
            cfg = DistillConfig(
                method=method,
                dataset=args.dataset,
                ipc=ipc,
                candidates_per_class=args.candidates_per_class,
            )
            epochs = args.full_epochs if method == "full" else args.epochs
            protocol = PROTOCOLS["rded"].model_copy(update={"epochs": epochs})
            cell = Cell(name, cfg, args.teacher, args.label_teacher, args.student, protocol,
                        args.seeds)  # fmt: skip
            run_cell(cell, work, run, results)
    rows = compare([results], results / "table")
    plot_compare(rows, results / "table")
    print((results / "table" / "results.md").read_text())
    print(len(rows), "rows")


if __name__ == "__main__":
    main()
