"""A distil's cost at 200 classes beside 10 (issue "Three label regimes and 200 classes", 4).

The same pool a class (``--pool``), the same resolution (64 px), the same architecture
(ConvNet-4), IPC 10: Tiny-ImageNet's 200 classes with the committed teacher, and its first 10
wnids (sorted) as an ImageFolder of links with a 10-class teacher trained here for
``--teacher-epochs``. Each of the default and ``rded`` distils each, one process a run, one
thread; the stages' seconds and teacher forwards and the process's peak RSS come from each
run's ``run_stats.json``; each run scores afresh (a cache of its own that links the decoded
datasets and holds no scores). A stage whose seconds per candidate grow from 10 to 200 classes is a
per-class cost that does not scale; the default's wall time is compared with rded's on the same
pool (the issue's bound: 1.5x). Resumable: finished teachers and sets are kept.

    python benchmarks/class_cost.py --data-root DATA --work RUNS/class-cost \\
        --teacher benchmarks/teachers/tiny-convnet4 --out benchmarks/results/class_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from infoutil.atomic import atomic_write_json

INFOUTIL = [sys.executable, "-m", "infoutil"]


def tiny_subset(data_root: Path, classes: int) -> Path:
    """Tiny-ImageNet's first ``classes`` wnids as ``train/<wnid>`` and ``val/<wnid>`` links."""
    src, out = data_root / "tiny-imagenet-200", data_root / f"tiny{classes}"
    wnids = sorted(line.strip() for line in (src / "wnids.txt").read_text().splitlines())[:classes]
    for w in wnids:
        link = out / "train" / w
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src / "train" / w)
    for line in (src / "val" / "val_annotations.txt").read_text().splitlines():
        name, w = line.split("\t")[:2]
        link = out / "val" / w / name
        if w in wnids and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src / "val" / "images" / name)
    return out


def fresh_cache(base: Path, dest: Path) -> Path:
    """A cache with ``base``'s decoded datasets (links) and no scores, so each distil pays for
    its own scoring and none for decoding."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():
        if entry.name != "scores" and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry)
    return dest


def call(args: list[str], cache: Path | None = None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if cache is not None:
        env["INFOUTIL_CACHE"] = str(cache)
    proc = subprocess.run([*INFOUTIL, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def distil(dataset: str, teacher: str, method: str, args, out: Path) -> dict:
    if not (out / "run_stats.json").is_file():
        cache = fresh_cache(args.cache, args.work / f"cache-{out.name}")
        call(["distill", "--method", method, "--dataset", dataset, "--teacher", teacher,
              "--ipc", str(args.ipc), "--candidates-per-class", str(args.pool),
              "--val-per-class", "50", "--data-root", str(args.data_root), "--threads", "1",
              "-q", "--out", str(out)], cache)  # fmt: skip
    stats = json.loads((out / "run_stats.json").read_text())
    n = args.pool * len(json.loads((out / "manifest.json").read_text())["dataset"]["class_names"])
    return {
        "dataset": dataset,
        "method": method,
        "candidates": n,
        "total_seconds": stats["total_seconds"],
        "stage_seconds": round(sum(x["seconds"] for x in stats["stages"]), 1),
        "peak_rss_mib": stats["peak_rss_mib"],
        "stages": stats["stages"],
        "ms_per_candidate": {
            s["stage"]: round(1000 * s["seconds"] / n, 2) for s in stats["stages"]
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--teacher", required=True, help="the 200-class Tiny-ImageNet teacher")
    ap.add_argument("--pool", type=int, default=50, help="candidates a class")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("INFOUTIL_CACHE", "")),
                    help="the cache holding the decoded datasets (INFOUTIL_CACHE)")  # fmt: skip
    args = ap.parse_args()
    few = f"imagefolder:{tiny_subset(args.data_root, 10)}"
    few_teacher = args.work / "teacher-tiny10"
    if not (few_teacher / f"epoch_{args.teacher_epochs:04d}.json").is_file():
        resume = ["--resume"] if (few_teacher / "config.json").is_file() else []
        call(["teacher", "train", "--dataset", few, "--arch", "convnet4", "--lr", "0.01",
              "--epochs", str(args.teacher_epochs), "--val-per-class", "50", "--compile",
              "--precision", "bf16", "--threads", "1", "--data-root", str(args.data_root),
              "--out", str(few_teacher), *resume])  # fmt: skip
    runs = []
    for dataset, teacher, tag in (
        ("tiny-imagenet", args.teacher, "200"),
        (few, str(few_teacher), "10"),
    ):
        for method in ("infoutil", "rded"):
            runs.append(distil(dataset, teacher, method, args, args.work / f"{method}-{tag}"))
            print(json.dumps(runs[-1]), flush=True)
    by = {(r["candidates"] // args.pool, r["method"]): r for r in runs}
    report = {
        "date": str(date.today()),
        "pool_per_class": args.pool,
        "ipc": args.ipc,
        "runs": runs,
        # the stages' seconds (scoring to writing), and the whole run's (with loading)
        "default_over_rded": {
            str(c): round(by[c, "infoutil"]["stage_seconds"] / by[c, "rded"]["stage_seconds"], 2)
            for c in (200, 10)
        },
        "default_over_rded_total": {
            str(c): round(by[c, "infoutil"]["total_seconds"] / by[c, "rded"]["total_seconds"], 2)
            for c in (200, 10)
        },
    }
    atomic_write_json(args.out, report)
    print(json.dumps(report["default_over_rded"]))


if __name__ == "__main__":
    main()
