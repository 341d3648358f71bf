"""Same seeds, same bytes: hash what the demo and one CIFAR-10 distil of each method write.

Run it on two revisions (``PYTHONPATH=OTHER/src`` for the other) and compare the two JSON
files with ``--compare``: every file of every distilled set and every kept student must have
the same sha256 (``run_stats.json`` and ``results.json`` carry timings and are left out; the
students' accuracies are compared instead).

    python benchmarks/bytes_check.py --out /tmp/bytes-new --data-root ../shared/data \\
        --record /tmp/bytes-new.json
    python benchmarks/bytes_check.py --compare /tmp/bytes-old.json /tmp/bytes-new.json
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from pathlib import Path

import torch

METHODS = ("infoutil", "rded", "random", "herding", "kcenter", "full")
SKIP = ("run_stats.json", "results.json", "curve.png")
CIFAR_TEACHER = Path(__file__).resolve().parent / "teachers" / "cifar10-convnet3"


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in SKIP
    }


def record(out: Path, data_root: str, imagewoof: bool = False) -> dict:
    import infoutil
    from infoutil.config import DistillConfig
    from infoutil.demo import run_demo
    from infoutil.methods import distill

    # the same calls on revisions before and after the run context (RunContext) came in
    if "run" in inspect.signature(distill).parameters:
        from infoutil.runtime import RunContext

        where = {"run": RunContext(data_root=data_root, progress=False)}
    else:
        where = {"data_root": data_root, "progress": False}
    sets = {}
    for method in METHODS:
        target = out / "cifar10" / method
        if not target.exists():
            cfg = DistillConfig(method=method, dataset="cifar10", ipc=10, seed=0)
            distill(cfg, CIFAR_TEACHER, target, resume=True, **where)
        sets[f"cifar10/{method}"] = _hashes(target)
    if imagewoof:  # 128 px: the default and rded on the committed ConvNet-5 teacher
        woof_teacher = CIFAR_TEACHER.parent / "imagewoof-convnet5"
        for method in ("infoutil", "rded"):
            target = out / "imagewoof" / method
            if not target.exists():
                cfg = DistillConfig(method=method, dataset="imagewoof", ipc=10, seed=0,
                                    candidates_per_class=100)  # fmt: skip
                distill(cfg, woof_teacher, target, resume=True, **where)
            sets[f"imagewoof/{method}"] = _hashes(target)
    run_demo(out / "demo", **where)
    for sub in ("distilled/infoutil", "distilled/rded", "eval/infoutil", "eval/rded"):
        sets[f"demo/{sub}"] = _hashes(out / "demo" / sub)
    accuracy = {
        m: json.loads((out / "demo" / "eval" / m / "results.json").read_text())["accuracy"]
        for m in ("infoutil", "rded")
    }
    return {"infoutil_from": str(Path(infoutil.__file__).parent), "sets": sets,
            "demo_accuracy": accuracy}  # fmt: skip


def compare(a: dict, b: dict) -> list[str]:
    problems = []
    for name in sorted(set(a["sets"]) | set(b["sets"])):
        fa, fb = a["sets"].get(name, {}), b["sets"].get(name, {})
        for rel in sorted(set(fa) | set(fb)):
            # an evaluation's COMPLETE.json listed its curve.png until the curve moved to
            # report (drawn beside the output): the students and every set file still compare
            if "/eval/" in f"/{name}/" and rel == "COMPLETE.json":
                continue
            if fa.get(rel) != fb.get(rel):
                problems.append(f"{name}/{rel}: {fa.get(rel)} != {fb.get(rel)}")
    if a["demo_accuracy"] != b["demo_accuracy"]:
        problems.append(f"demo accuracy {a['demo_accuracy']} != {b['demo_accuracy']}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data-root")
    ap.add_argument("--record", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", nargs=2, type=Path)
    ap.add_argument("--imagewoof", action="store_true", help="ImageWoof distils too (128 px)")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        problems = compare(a, b)
        files = sum(len(v) for v in a["sets"].values())
        print(f"{len(a['sets'])} outputs, {files} files: {len(problems)} differ")
        print("\n".join(problems[:40]))
        sys.exit(1 if problems else 0)
    torch.set_num_threads(args.threads)
    result = record(args.out, args.data_root, args.imagewoof)
    args.record.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{args.record}: {sum(len(v) for v in result['sets'].values())} files hashed")


if __name__ == "__main__":
    main()
