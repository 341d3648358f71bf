"""Why does InfoUtil trail RDED on a low-resolution dataset? One factor changed at a time.

Each variant changes one named option of the `infoutil` method; all share the teacher, the
candidate pool, the Shapley maps (cached) and the evaluation protocol.

    python benchmarks/ablation.py --dataset fashion-mnist --teacher T --ipc 10 --epochs 100 \
        --seeds 2 --work /tmp/ablation --results benchmarks/results/ablation-fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from infoutil.config import PROTOCOLS, DistillConfig
from infoutil.evaluation.compare import compare
from infoutil.evaluation.run import evaluate
from infoutil.io.distilled import COMPLETE
from infoutil.methods import distill

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
    for name in args.variants:
        cfg = DistillConfig(method="infoutil", dataset=args.dataset, ipc=args.ipc, **VARIANTS[name])
        distilled = work / "distilled" / name
        if not (distilled / COMPLETE).is_file():
            distill(
                cfg,
                args.teacher,
                distilled,
                data_root=args.data_root,
                resume=True,
                overwrite=distilled.exists(),
            )
        out = work / "eval" / name
        if not (out / COMPLETE).is_file():
            evaluate(
                distilled,
                out,
                protocol=protocol,
                seeds=list(range(args.seeds)),
                data_root=args.data_root,
                resume=True,
                overwrite=out.exists(),
            )
        dest = results / name
        dest.mkdir(parents=True, exist_ok=True)
        record = json.loads((out / "results.json").read_text())
        record["method"] = f"infoutil:{name}"
        (dest / "results.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shutil.copy(out / "curve.png", dest / "curve.png")
    compare([results], results / "table")
    print((results / "table" / "results.md").read_text())


if __name__ == "__main__":
    main()
