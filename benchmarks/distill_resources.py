"""Peak memory and scaling of `infoutil distill` (issues "Reliability" and "Scale out").

`memory`: the same distillation with pools of P and 10 x P candidates per class, each in a fresh
process with a fresh score cache; peak RSS from the kernel (ru_maxrss of the child) and the
wall time of each stage (from the run's run_stats.json); `--methods infoutil rded` for a ratio.
`speed`: rded, then InfoUtil with `--config`, on the same pool (`--pool` candidates per class,
`--factor`, the validation split held out), each measured as `memory` measures it; the ratio of
their wall times (issue "InfoUtil at RDED's speed"); `--rded-configs` runs rded again with
each of those options (a ratio against each). Each run gets a fresh inductor cache, so a
compiled run pays its compile.
`scaling`: the same distillation with 1 process and with `torchrun --nproc-per-node 2` (gloo,
one thread per process), fresh caches; wall time, speedup, and whether the outputs are
byte-identical. The load average before each run says how many cores were actually free.

    python benchmarks/distill_resources.py memory --teacher T --dataset cifar10 \
        --pools 300 3000 --out benchmarks/results/distill_memory.json
    python benchmarks/distill_resources.py scaling --teacher T --dataset fashion-mnist \
        --out benchmarks/results/distill_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def run(cmd: list[str], cache: Path) -> dict:
    env = dict(os.environ, INFOUTIL_CACHE=str(cache), OMP_NUM_THREADS="1")
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": round(seconds, 1),
        "load_average_before": round(load, 2),
        "peak_rss_mib_children_max": round(max(peak, before) / 1024, 1),
        "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
    }


def distill_cmd(
    args, out: Path, pool: int, launcher: list[str], method: str = "infoutil", config=None
) -> list[str]:
    # speed: the recipe comes from a config (or the defaults), not from --estimator/--budget
    recipe = (
        ["--factor", str(args.factor), "--val-per-class", str(args.val_per_class)]
        + (["-c", config] if config else [])
        if args.what == "speed"
        else ["--estimator", args.estimator, "--budget", str(args.budget)]
    )
    return [
        *launcher,
        "-m",
        "infoutil",
        "distill",
        "--method",
        method,
        "--dataset",
        args.dataset,
        "--teacher",
        args.teacher,
        "--ipc",
        str(args.ipc),
        "--candidates-per-class",
        str(pool),
        *recipe,
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "-q",
    ]


def measure_memory(args, work: Path, method: str, pool: int, config=None, name="") -> dict:
    # ru_maxrss of children is a running maximum: measure each run in its own python so that
    # the number belongs to that run alone
    out = work / f"{method}{pool}{name}"
    cmd = [
        sys.executable,
        "-c",
        "import resource,subprocess,sys,json;"
        "r=subprocess.run(sys.argv[1:]);"
        "print(json.dumps({'rc':r.returncode,'peak_kib':"
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))",
        *distill_cmd(args, out, pool, [sys.executable], method, config),
    ]
    cache = work / f"c-{method}{pool}{name}"
    cache.mkdir(parents=True)
    if getattr(args, "decoded", None):  # a decoded archive: the runs time distillation alone
        shutil.copy(args.decoded, cache / Path(args.decoded).name)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        # a fresh compile cache too: a compiled run pays its compile, as a user's first does
        env=dict(
            os.environ, INFOUTIL_CACHE=str(cache), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor")
        ),
    )
    lines = proc.stdout.strip().splitlines()
    line = json.loads(lines[-1])
    if line["rc"] != 0:
        raise SystemExit(proc.stderr[-3000:])
    return {
        "method": method,
        "config": config,
        "candidates_per_class": pool,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average_before": round(load, 2),
        "peak_rss_mib": round(line["peak_kib"] / 1024, 1),
        "stages": json.loads((out / "run_stats.json").read_text())["stages"],
        "summary": lines[-2] if len(lines) > 1 else "",
    }


def same_files(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(
        (a / r).read_bytes() == (b / r).read_bytes() for r in fa if r.name != "run_stats.json"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["memory", "scaling", "speed"])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--pools", type=int, nargs="+", default=[300, 3000])
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=["infoutil"], help="memory: methods to run")
    ap.add_argument("--estimator", default="leverage")
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--factor", type=int, default=2, help="speed: patches per side")
    ap.add_argument("--val-per-class", type=int, default=500, help="speed: held out")
    ap.add_argument("--config", help="speed: InfoUtil's options (YAML)")
    ap.add_argument(
        "--rded-configs",
        nargs="*",
        default=[],
        help="speed: rded again with each of these options (YAML), after its defaults",
    )
    ap.add_argument("--decoded", help="a decoded archive (.npz) copied into each fresh cache")
    ap.add_argument("--keep", help="speed: keep the distilled sets in this folder")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda, for every run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    report = {
        "date": str(date.today()),
        "cpus": os.cpu_count(),
        "what": args.what,
        "dataset": args.dataset,
        "ipc": args.ipc,
        "estimator": args.estimator,
        "budget": args.budget,
        "runs": [],
    }
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="infoutil-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "speed":  # rded, then infoutil with --config, one after the other
            plan = [("rded", None, "")]
            plan += [("rded", c, f"-{Path(c).stem}") for c in args.rded_configs]
            plan += [("infoutil", args.config, "")]
            for method, config, name in plan:
                report["runs"].append(measure_memory(args, work, method, args.pool, config, name))
                print(report["runs"][-1], flush=True)
            *rdeds, info = report["runs"]
            report.update(config=args.config, factor=args.factor, candidates_per_class=args.pool)
            report["ratio_infoutil_over_rded"] = round(info["seconds"] / rdeds[0]["seconds"], 2)
            for r in rdeds[1:]:
                report[f"ratio_infoutil_over_rded_{Path(r['config']).stem}"] = round(
                    info["seconds"] / r["seconds"], 2
                )
            print(f"infoutil / rded wall time: {report['ratio_infoutil_over_rded']}")
        elif args.what == "memory":
            for method in args.methods:
                for pool in args.pools:
                    report["runs"].append(measure_memory(args, work, method, pool))
                    print(report["runs"][-1], flush=True)
        else:
            one = run(distill_cmd(args, work / "one", args.pool, [sys.executable]), work / "c1")
            two = run(
                distill_cmd(
                    args,
                    work / "two",
                    args.pool,
                    [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--standalone",
                        "--nproc-per-node",
                        "2",
                    ],
                ),
                work / "c2",
            )
            report["runs"] = [dict(one, processes=1), dict(two, processes=2)]
            report["speedup"] = round(one["seconds"] / two["seconds"], 3)
            report["identical_output"] = same_files(work / "one", work / "two")
            report["candidates_per_class"] = args.pool
            print(report, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
