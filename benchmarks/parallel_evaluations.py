"""N evaluations of one distilled set at the same time, each its own process timed with
``/usr/bin/time -v``: do they fit in the machine's memory together? (Three 128 px
evaluations side by side were killed by the kernel's out-of-memory killer before the test
pass sized its batches.)

    python benchmarks/parallel_evaluations.py --set SET --copies 3 --epochs 2 \\
        --work /tmp/side --out benchmarks/results/parallel_evaluations_imagewoof.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, help="a distilled set")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--student", default="convnet5")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    procs = []
    t0 = time.perf_counter()
    for i in range(args.copies):
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "infoutil", "evaluate", args.set,
               "--student", args.student, "--epochs", str(args.epochs), "--seeds", "1",
               "--threads", "1", "-q", "--out", str(args.work / f"e{i}")]  # fmt: skip
        log = open(args.work / f"e{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    rows = []
    for i, (proc, log) in enumerate(procs):
        code = proc.wait()
        log.close()
        text = (args.work / f"e{i}.log").read_text()
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        rows.append({"copy": i, "exit": code, "peak_rss_mib": round(int(rss.group(1)) / 1024, 1)
                     if rss else None})  # fmt: skip
    failed = [r["copy"] for r in rows if r["exit"] != 0]
    if failed:  # a failed copy measures nothing: no record
        raise SystemExit(f"copies {failed} failed; see {args.work / f'e{failed[0]}.log'}")
    record = {"set": args.set, "copies": args.copies, "epochs": args.epochs,
              "student": args.student, "wall_seconds": round(time.perf_counter() - t0, 1),
              "rows": rows, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    print(json.dumps(record, indent=1))
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
