"""Peak memory and time of each stage on an ImageNet-layout folder (issue "ImageNet on one
24 GB machine"): teacher import of a ResNet-18 in torchvision's layout, distil at IPC 10 with
the default and with rded, and a few epochs of evaluation. Each stage is its own process,
timed with ``/usr/bin/time -v`` (its maximum resident set), one thread.

The weights are random (this measures memory and time, not accuracy): a ResNet-18 with
torchvision's tensor names, ImageNet's 1,000 classes, served to the folder's wnids.

    python benchmarks/imagenet_layout.py ...   # the folder (see there)
    python benchmarks/imagenet_scale.py --folder DATA/imagenet-like --work /tmp/scale \\
        --candidates-per-class 40 --out benchmarks/results/imagenet_scale_210.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from infoutil.data.base import DatasetInfo
from infoutil.data.imagenet import imagenet1k_classes
from infoutil.models import create_model


def torchvision_resnet18(path: Path, seed: int = 0) -> Path:
    """Random ResNet-18 weights saved under torchvision's names (conv1, bn1, layerN.j, fc)."""
    torch.manual_seed(seed)
    wnids = tuple(w for w, _ in imagenet1k_classes())
    model = create_model("resnet18", DatasetInfo("imagenet-1k", wnids, 224, 3, (0.5,) * 3,
                                                 (0.25,) * 3))  # fmt: skip
    state = {}
    for name, value in model.state_dict().items():
        if name in ("mean", "std"):
            continue
        key = name.removeprefix("net.").replace("stem.0", "conv1").replace("stem.1", "bn1")
        key = re.sub(r"layers\.(\d)", lambda m: f"layer{int(m.group(1)) + 1}", key)
        state[key.replace("shortcut", "downsample")] = value
    torch.save(state, path)
    return path


def timed(label: str, args: list[str], log: Path) -> dict:
    """Run ``infoutil ARGS`` under /usr/bin/time -v; its wall time and peak RSS."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "infoutil", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); see {log}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    row = {"stage": label, "seconds": round(seconds, 1), "peak_rss_mib": round(rss / 1024, 1)}
    print(json.dumps(row), flush=True)
    return row


def save(args: argparse.Namespace, rows: list[dict]) -> None:
    """The record, with the rows of stages an earlier call measured kept."""
    done = {r["stage"] for r in rows}
    kept = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    record = {"folder": str(args.folder),
              "rows": [r for r in kept if r["stage"] not in done] + rows,
              "candidates_per_class": args.candidates_per_class,
              "rded_candidates_per_class": args.rded_candidates_per_class, "epochs": args.epochs,
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--candidates-per-class", type=int, default=40)
    ap.add_argument(
        "--rded-candidates-per-class",
        type=int,
        help="rded's pool, if not --candidates-per-class (at 224 px its factor 2 needs 4 IPC)",
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--stages",
        default="import,infoutil,rded,evaluate,report",
        help="which stages to run, comma-separated (finished ones are skipped anyway)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    weights = torchvision_resnet18(work / "resnet18-random.pth")
    data = f"imagefolder:{args.folder}"
    common = ["--image-size", "224", "--threads", "1", "--cache-dir", str(work / "cache")]
    rows: list[dict] = []

    def timed_row(label: str, cli: list[str], log: Path) -> None:
        rows.append(timed(label, cli, log))
        save(args, rows)  # after every stage: a kill loses at most the stage under way

    teacher = work / "teacher"
    stages = set(args.stages.split(","))
    pools = {"infoutil": args.candidates_per_class,
             "rded": args.rded_candidates_per_class or args.candidates_per_class}  # fmt: skip
    if "import" in stages and not (teacher / "epoch_0001.json").is_file():
        timed_row("teacher import (and its test pass)", [
            "teacher", "import", str(weights), "--arch", "resnet18", "--classes",
            "imagenet-1k", "--dataset", data, "--out", str(teacher), *common],
            work / "import.log")  # fmt: skip
    for method in ("infoutil", "rded"):
        out = work / f"{method}-ipc10"
        if method in stages and not (out / "COMPLETE.json").is_file():
            timed_row(f"distill {method} IPC 10", [
                "distill", "--method", method, "--dataset", data, "--teacher", str(teacher),
                "--ipc", "10", "--candidates-per-class", str(pools[method]),
                "--out", str(out), "--resume", "-q", *common], work / f"{method}.log")  # fmt: skip
    out = work / "eval"
    if "evaluate" in stages and not (out / "COMPLETE.json").is_file():
        timed_row(f"evaluate infoutil IPC 10, {args.epochs} epochs", [
            "evaluate", str(work / "infoutil-ipc10"), "--student", "resnet18", "--epochs",
            str(args.epochs), "--out", str(out), "--resume", "-q", "--threads", "1",
            "--cache-dir", str(work / "cache")], work / "evaluate.log")  # fmt: skip
    report = work / "report"
    if "report" in stages and not (report / "report.html").is_file():
        timed_row("report", ["report", str(work), "--out", str(report)],
                  work / "report.log")  # fmt: skip


if __name__ == "__main__":
    main()
