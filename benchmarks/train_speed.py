"""Training throughput of a teacher step and a student step, eager against torch.compile, in
one process (issue "InfoUtil at high resolution": ConvNet-5 at 128 px is hours a teacher).

A teacher step is SGD on cross-entropy (``teacher train``); a student step is the protocol's:
a teacher forward for the online labels, then the student's KL step with AdamW. Each setting
is timed as the best of ``--steps`` steps after one warm-up (the compile happens there and is
reported apart). Synthetic images: the cost does not depend on content.

    python benchmarks/train_speed.py --arch convnet5 --size 128 --threads 2 \\
        --out benchmarks/results/train_speed_convnet5_128.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infoutil.atomic import atomic_write_json
from infoutil.data.base import DatasetInfo
from infoutil.models import create_model
from infoutil.runtime import compiled_or_refused, precision_autocast


def _timed(step, steps: int, batch: int) -> dict:
    """Images/s at the best of ``steps`` steps after the first, and the first's seconds."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return {"images_per_s": round(batch / best, 2), "first_step_s": round(first, 1)}


def _names(settings):
    for compiled, precision in settings:
        yield (
            compiled,
            ("compiled" if compiled else "eager") + ("" if precision == "fp32" else "_bf16"),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="convnet5")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--teacher-batch", type=int, default=128)
    ap.add_argument("--student-batch", type=int, default=50)  # RDED's at IPC 10
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precisions", default="fp32", help="comma list: fp32, bf16 (autocast)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = DatasetInfo(
        "synthetic", tuple(map(str, range(10))), args.size, 3, (0.5,) * 3, (0.25,) * 3
    )
    g = torch.Generator().manual_seed(0)
    out = {"arch": args.arch, "size": args.size, "threads": args.threads,
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    settings = [(c, p) for p in args.precisions.split(",") for c in (False, True)]
    for compiled, precision in settings:
        name = ("compiled" if compiled else "eager") + ("" if precision == "fp32" else "_bf16")
        cast = precision_autocast(precision, "cpu")
        torch.manual_seed(0)
        teacher = create_model(args.arch, info)
        opt = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)
        model = compiled_or_refused(teacher, "the teacher") if compiled else teacher
        x = torch.rand(args.teacher_batch, 3, args.size, args.size, generator=g)
        y = torch.randint(0, 10, (args.teacher_batch,), generator=g)

        def teacher_step(model=model, opt=opt, x=x, y=y, cast=cast):
            with cast:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for key, value in _timed(teacher_step, args.steps, args.teacher_batch).items():
            out[f"teacher_{name}_{key}"] = value

        labeller = create_model(args.arch, info).eval()
        student = create_model(args.arch, info)
        sopt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        s_model = compiled_or_refused(student, "the student") if compiled else student
        l_model = compiled_or_refused(labeller, "the teacher") if compiled else labeller
        xs = torch.rand(args.student_batch, 3, args.size, args.size, generator=g)

        def student_step(s_model=s_model, l_model=l_model, sopt=sopt, xs=xs, cast=cast):
            with torch.no_grad(), cast:
                target = torch.softmax(l_model(xs).float() / 20, 1)
            with cast:
                logits = s_model(xs).float()
            loss = F.kl_div(F.log_softmax(logits / 20, 1), target, reduction="batchmean")
            sopt.zero_grad(set_to_none=True)
            loss.backward()
            sopt.step()

        for key, value in _timed(student_step, args.steps, args.student_batch).items():
            out[f"student_{name}_{key}"] = value
        print(json.dumps(out), flush=True)
    for role in ("teacher", "student"):  # each setting against eager fp32, same process
        base = out[f"{role}_eager_images_per_s"]
        for _, name in {(c, n) for c, n in _names(settings)} - {(False, "eager")}:
            out[f"{role}_{name}_speedup"] = round(out[f"{role}_{name}_images_per_s"] / base, 2)
    print(json.dumps(out, indent=1))
    atomic_write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
