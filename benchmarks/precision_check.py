"""Does bf16 autocast train a teacher as well as fp32? Short real runs, 2 seeds each, compiled.

Each setting trains the same architecture on a seeded subset of real images for a few epochs
and is measured on the whole test set at its last epoch; the seeds give the noise that the
fp32-bf16 gap is held against. Runs are resumable (each is an ordinary teacher run folder).

    python benchmarks/precision_check.py --dataset imagenette --arch convnet5 \\
        --train-per-class 200 --epochs 5 --runs /work/runs/precision-check \\
        --out benchmarks/results/precision_check_imagenette_convnet5.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from infoutil.atomic import atomic_write_json
from infoutil.config import TeacherConfig
from infoutil.io.checkpoint import completed_epochs
from infoutil.training.teacher import train_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--train-per-class", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--runs", required=True, help="folder for the teacher runs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for precision in ("fp32", "bf16"):
        for seed in range(args.seeds):
            cfg = TeacherConfig(
                dataset=args.dataset, arch=args.arch, epochs=args.epochs, seed=seed,
                train_per_class=args.train_per_class, compile=True, precision=precision,
            )  # fmt: skip
            run = Path(args.runs) / f"{args.dataset}-{args.arch}-{precision}-seed{seed}"
            t0 = time.perf_counter()
            meta = train_teacher(cfg, run, data_root=args.data_root, resume=bool(
                completed_epochs(run)), progress_bar=False)  # fmt: skip
            log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
            rows.append({
                "precision": precision, "seed": seed, "test_accuracy": meta["test_accuracy"],
                "train_images_per_second": [r.get("train_images_per_second") for r in log],
                "seconds_this_call": round(time.perf_counter() - t0, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    out = {"dataset": args.dataset, "arch": args.arch, "epochs": args.epochs,
           "train_per_class": args.train_per_class, "threads": args.threads,
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "runs": rows}  # fmt: skip
    for precision in ("fp32", "bf16"):
        accs = [r["test_accuracy"] for r in rows if r["precision"] == precision]
        out[f"{precision}_mean"] = round(statistics.fmean(accs), 4)
        out[f"{precision}_std"] = round(statistics.pstdev(accs), 4)
    print(json.dumps(out, indent=1))
    atomic_write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
