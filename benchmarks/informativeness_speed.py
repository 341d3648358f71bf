"""InfoUtil's informativeness stage made cheap, route by route (issue "InfoUtil at RDED's speed").

`routes`: N real training images (10 per class, seed 123, as `shapley_estimators.py`), the
default's Shapley game (4x4 grid, zero baseline, true-class probability, leverage-gp) and the
crop window of factor 2 (2x2 cells: quarter windows). Each route's time, teacher forwards and
the agreement of its five crops (four noisy, one clean, drawn as `distill` draws them) with
exact Shapley (all 65,536 coalitions, on the first `--exact-images` images, cached in blocks
of 10), with leverage-gp at 4,096 evaluations (all images), and with today's stage (fp32, 512).

`--fastshap PER_CLASS:COALITIONS:EPOCHS:PRECISION` adds the amortised explainer: trained on
PER_CLASS other training images a class (not the benchmark's), then three forwards per image.

`--plain BUDGET:PRECISION` adds per-image leverage-gp at other budgets (equal-cost comparisons).

`--compiled PRECISION:BATCH` adds today's stage with the teacher through `torch.compile`, that
many images a forward, then each `--z` early stop the same way (the compile is timed inside).

`forwards`: masked forwards per second of the teacher, eager and compiled, fp32 and bf16, at
batch sizes 32-512 (synthetic images, interleaved rounds, the median), and the seconds each
compile takes from a fresh inductor cache.

`agreement`: a distilled set's crops against a reference run's (the same pool): for each
selected patch, is its box the one the reference's maps give the same source and crop?

    python benchmarks/informativeness_speed.py routes --teacher T --dataset cifar10 \\
        --out benchmarks/results/informativeness_routes_cifar10.json
    python benchmarks/informativeness_speed.py agreement --run OUT --reference REF
    python benchmarks/informativeness_speed.py projection --out F.json
    python benchmarks/informativeness_speed.py forwards --teacher T --out F.json

`projection`: the measured per-image costs of a ResNet-18 teacher at 224 px on synthetic
inputs (a masked forward, fp32 and bf16, and a per-sample gradient norm), from which
BENCHMARKS.md projects ImageNet-1K IPC 10.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import load_file

from infoutil.atomic import atomic_write_json
from infoutil.attribution.amortized import (
    explained_maps,
    fit_explainer,
    kernel_coalitions,
    training_values,
)
from infoutil.attribution.patch import (
    compiled_teacher,
    patch_shapley,
    patch_shapley_early_stop,
    precision_autocast,
)
from infoutil.data import load_dataset, per_class_sample
from infoutil.data.augment import to_float
from infoutil.data.base import index_sha256
from infoutil.errors import UserError
from infoutil.io.checkpoint import load_teacher
from infoutil.methods.common import ScoreStore
from infoutil.runtime import resolve_device
from infoutil.selection.crops import informative_crops, noise_sigma, pool_map, settled_crops

KERNEL, CROPS, ALPHA = 2, 5, 2.0  # factor 2: quarter windows; the paper's 5 crops, alpha 2


def machine_header(threads: int, device: torch.device | None = None) -> dict:
    """When and where a result was measured."""
    out = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
    }
    if device is not None:
        out["device"] = device.type
        if device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(device)
    return out


def timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``, with the GPU's queue drained on both sides (its kernels run
    asynchronously: without the sync the clock would stop before they do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def crops_of(maps: torch.Tensor, seeds: torch.Tensor, size: int) -> torch.Tensor:
    """The five crop boxes ``[B, 5, 4]`` of each map on ``size``-px images, noise drawn from
    the image's seed."""
    sigma = noise_sigma(pool_map(maps, KERNEL), ALPHA, "per_image")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return informative_crops(
        maps, sigma, kernel=KERNEL, num_crops=CROPS, generators=gens, height=size, width=size
    )


def agreement(boxes: torch.Tensor, reference: torch.Tensor) -> dict | None:
    if len(reference) == 0:
        return None
    same = (boxes == reference).all(-1)  # [B, 5]
    return {
        "all_crops": round(float(same.double().mean()), 4),
        "clean_crop": round(float(same[:, -1].double().mean()), 4),
    }


def cached(store: ScoreStore, name: str, compute) -> torch.Tensor:
    """Reference maps from the library's score store (atomic, keyed by what they depend on)."""
    path = store.dir / name
    if path.is_file():
        return load_file(str(path))["maps"]
    maps = compute()
    store.save_tensors(name, {"maps": maps.contiguous()})
    return maps


def routes(args) -> None:
    torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    model = teacher.model
    train = load_dataset(args.dataset, "train", args.data_root)
    idx = per_class_sample(train.targets, train.info.num_classes, args.images // 10, seed=123)
    x, y = to_float(train.get_batch(idx)), train.targets[idx]
    seeds = torch.arange(len(idx)) + 1000  # per-image seeds, as distill derives them
    store = ScoreStore(Path(args.cache), "reference-maps", {
        "dataset": args.dataset, "teacher": teacher.weights_sha256, "sample_seed": 123,
        "images": index_sha256(idx)})  # fmt: skip

    exact_blocks = []
    for i in range(0, args.exact_images, 10):
        block = slice(i, min(i + 10, args.exact_images))
        exact_blocks.append(
            cached(
                store,
                f"exact-{i:05d}.safetensors",
                lambda b=block: patch_shapley(
                    model, x[b], y[b], estimator="exact", batch_size=4096, progress_bar=True
                ),
            )
        )
    exact = torch.cat(exact_blocks) if exact_blocks else torch.zeros(0, 4, 4)
    near = cached(
        store,
        "gp4096.safetensors",
        lambda: patch_shapley(model, x, y, budget=4096, seed=seeds + 10**6, batch_size=1024),
    )
    size = x.shape[-1]
    refs = {
        "exact": crops_of(exact, seeds[: len(exact)], size),
        "gp4096": crops_of(near, seeds, size),
    }

    def plain(budget, precision, net=model, batch=512):
        def run():
            maps = patch_shapley(
                net, x, y, budget=budget, seed=seeds, batch_size=batch, precision=precision
            )
            return maps, torch.full((len(x),), budget)

        return run

    def early(z, precision, first=128, budget=512, net=model, batch=512):
        def run():
            def settled(rows, maps, cov):
                gens = [torch.Generator().manual_seed(int(seeds[r])) for r in rows]
                return settled_crops(
                    maps, cov, kernel=KERNEL, num_crops=CROPS, alpha=ALPHA, generators=gens, z=z
                )

            return patch_shapley_early_stop(
                net,
                x,
                y,
                seeds,
                settled,
                budget=budget,
                first_budget=first,
                batch_size=batch,
                precision=precision,
            )

        return run

    def amortized(per_class, coalitions, epochs, precision):
        """FastSHAP: trained on ``per_class`` other training images a class, as `distill`
        trains it on part of its pool, then three forwards per benchmark image."""

        def run():
            t0 = time.perf_counter()
            fit = per_class_sample(train.targets, train.info.num_classes, per_class + 10, seed=7)
            fit = fit[~torch.isin(fit, idx)]
            fit = torch.cat(
                [fit[train.targets[fit] == c][:per_class] for c in range(train.info.num_classes)]
            )
            xf, yf = to_float(train.get_batch(fit)), train.targets[fit]
            g = torch.Generator().manual_seed(7)
            drawn = torch.stack([kernel_coalitions(16, coalitions, g) for _ in fit])
            game = dict(grid=4, batch_size=512, precision=precision)
            rows, v = training_values(model, xf, yf, drawn, **game)
            v = v.double()
            t1 = time.perf_counter()
            explainer = fit_explainer(
                model, xf, yf, drawn, v[:, 2:], v[:, 0], v[:, 1],
                num_classes=train.info.num_classes, grid=4, epochs=epochs, seed=7,
            )  # fmt: skip
            t2 = time.perf_counter()
            maps = explained_maps(explainer, model, x, y, **game)
            split[name] = {
                "training_images": len(fit),
                "training_forwards": int(rows.shape[0] * rows.shape[1]),
                "evaluations_s": round(t1 - t0, 1),
                "training_s": round(t2 - t1, 1),
                "prediction_s": round(time.perf_counter() - t2, 1),
            }
            return maps, torch.full((len(x),), 3)

        name = f"fastshap {per_class}/class x {coalitions}, {epochs} epochs, {precision}"
        return name, run

    split: dict[str, dict] = {}
    table = [("fp32, 512 (today's stage)", plain(512, "fp32"))]
    for spec in args.plain:
        budget, precision = spec.split(":")
        table.append((f"{precision}, {budget}", plain(int(budget), precision)))
    for spec in args.fastshap:
        per_class, coalitions, epochs, precision = spec.split(":")
        table.append(amortized(int(per_class), int(coalitions), int(epochs), precision))
    for spec in args.compiled:  # the compile is timed inside the route's own seconds
        precision, batch = spec.split(":")

        def compiled(route, precision=precision, batch=int(batch), **kw):
            def run():
                net = compiled_teacher(model, x[:2], precision)
                return route(precision=precision, net=net, batch=batch, **kw)()

            return run

        at = f"{precision}, compiled, batch {batch}"
        table.append((f"{at}, 512", compiled(plain, budget=512)))
        table += [(f"early stop z={z}, {at}", compiled(early, z=z)) for z in args.z]
    if args.fastshap_only or args.compiled:
        pass
    elif not args.early_only:
        table += [("bf16, 512", plain(512, "bf16"))]
        table += [("fp32, 256", plain(256, "fp32")), ("bf16, 256", plain(256, "bf16"))]
    for z in [] if args.fastshap_only or args.compiled else args.z:
        for first in args.first:
            at = "" if first == 128 else f" from {first}"
            table += [(f"early stop z={z}{at}, {p}", early(z, p, first)) for p in args.precisions]
    rows, today = [], None
    for name, run in table:
        t0 = time.perf_counter()
        maps, forwards = run()
        seconds = time.perf_counter() - t0
        boxes = crops_of(maps.double(), seeds, size)
        today = boxes if today is None else today
        rows.append(
            {
                "route": name,
                "seconds": round(seconds, 1),
                "forwards_per_image": round(float(forwards.double().mean()), 1),
                "vs_exact": agreement(boxes[: len(exact)], refs["exact"]),
                "vs_gp4096": agreement(boxes, refs["gp4096"]),
                "vs_today": agreement(boxes, today),
                "relative_squared_error_vs_gp4096": round(
                    float((maps.double() - near).square().sum() / near.square().sum()), 4
                ),
                **split.get(name, {}),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        **machine_header(args.threads),
        "teacher": teacher.describe(),
        "dataset": args.dataset,
        "images": len(idx),
        "exact_images": len(exact),
        "window": "factor 2: 2x2 cells of the 4x4 grid",
        "reference_gp4096_vs_exact": agreement(refs["gp4096"][: len(exact)], refs["exact"]),
        "routes": rows,
    }
    atomic_write_json(Path(args.out), report)


def compare(args) -> None:
    run, ref = (
        load_file(str(Path(args.run) / "scores.safetensors")),
        load_file(str(Path(args.reference) / "scores.safetensors")),
    )
    row_of = {int(c): i for i, c in enumerate(ref["candidates"].tolist())}
    rows = torch.tensor([row_of[int(c)] for c in run["candidates"].tolist()])
    same = (run["boxes"] == ref["boxes"][rows]).all(-1)  # [N, 5]: the same source and crop
    sel = run["selected"]
    manifest = json.loads((Path(args.run) / "manifest.json").read_text())
    reference = json.loads((Path(args.reference) / "manifest.json").read_text())

    def patches(m):
        return {(p["source_index"], tuple(p["box"])) for e in m["images"] for p in e["patches"]}

    mine, theirs = patches(manifest), patches(reference)
    report = {
        "selected_patches": int(sel.sum()),
        "selected_patch_agreement": round(float(same[sel].double().mean()), 4),
        "all_crops_agreement": round(float(same.double().mean()), 4),
        "clean_crop_agreement": round(float(same[:, -1].double().mean()), 4),
        "candidates_mapped": len(rows),
        "reference_candidates": len(ref["candidates"]),
        "selection_overlap_with_reference": round(len(mine & theirs) / len(mine), 4),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        atomic_write_json(Path(args.out), report)


def projection(args) -> None:
    from infoutil.data import DatasetInfo
    from infoutil.models import create_model
    from infoutil.selection.utility import grad_norms_and_logits

    torch.set_num_threads(args.threads)
    info = DatasetInfo(
        name="synthetic-imagenet",
        channels=3,
        image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        class_names=tuple(str(i) for i in range(1000)),
    )
    device = resolve_device(args.device)
    model = create_model("resnet18", info).eval().to(device)
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x, y = x.to(device), (torch.arange(args.batch) % 1000).to(device)
    out = {
        **machine_header(args.threads, device),
        "batch": args.batch,
    }

    def best_of(fn, repeats=3):
        fn()
        return min(timed(fn, device) for _ in range(repeats))

    for precision in ("fp32", "bf16"):

        def forward(precision=precision):
            with torch.inference_mode(), precision_autocast(precision, device.type):
                model(x)

        out[f"forward_{precision}_per_s"] = round(args.batch / best_of(forward), 2)
    small = max(args.batch // 4, 1)
    seconds = best_of(
        lambda: grad_norms_and_logits(model, x[:small], y[:small], batch_size=small), 2
    )
    out["grad_norm_per_s"] = round(small / seconds, 2)
    if args.whole_run:
        out.update(_run_costs(model, x, y, best_of))
    print(json.dumps(out, indent=1))
    atomic_write_json(Path(args.out), out)


def _run_costs(model, x, y, best_of) -> dict:
    """What the rest of a distill-and-evaluate run costs per image: a student's training step
    (ResNet-18 forward and backward, SGD) and decoding an ImageNet-sized JPEG (500x375,
    quality 90, ImageNet's mean size) resized and centre-cropped to 224 px."""
    import io

    import numpy as np
    from PIL import Image

    from infoutil.data.base import decode_image

    student = copy.deepcopy(model).train()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rng = np.random.RandomState(0)
    # smooth content, so the JPEG is about as large as a photograph's (not noise)
    small = rng.randint(0, 256, (47, 63, 3)).astype(np.uint8)
    photo = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    decodes = 50
    seconds = best_of(lambda: [decode_image(io.BytesIO(data), 3, 224) for _ in range(decodes)])
    return {
        "student_step_per_s": round(len(x) / best_of(step, 2), 2),
        "decode_224_per_s": round(decodes / seconds, 1),
        "jpeg_bytes": len(data),
    }


def forwards(args) -> None:
    """The teacher's masked-forward rate by engine, precision and batch, in one process:
    eager (today's) and ``torch.compile`` (``compiled_teacher``), fp32 and bf16. Rounds are
    interleaved so that a change in the other core's load hits every setting alike; the
    median round counts. The compile's own time is reported apart, from a fresh cache."""
    import os
    import tempfile

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_teacher(args.teacher).model.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, args.size, args.size, generator=g).to(device)
    out = {
        **machine_header(args.threads, device),
        "images_per_round": args.images,
        "rounds": args.rounds,
    }
    engines = {"eager": {}}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    for precision in args.precisions:
        t0 = time.perf_counter()
        engines.setdefault("compiled", {})[precision] = compiled_teacher(model, x[:2], precision)
        out[f"compile_seconds_{precision}"] = round(time.perf_counter() - t0, 2)
        engines["eager"][precision] = model

    def rate(net, precision, batch):
        def all_batches():
            for s in range(0, len(x), batch):
                net(x[s : s + batch])

        with torch.inference_mode(), precision_autocast(precision, device.type):
            net(x[:batch])  # a new shape compiles once, outside the clock
            return len(x) / timed(all_batches, device)

    settings = [(e, p, b) for e in engines for p in args.precisions for b in args.batches]
    rounds = {s: [] for s in settings}
    for _ in range(args.rounds):
        for e, p, b in settings:
            rounds[(e, p, b)].append(rate(engines[e][p], p, b))
    base = (
        sorted(rounds[("eager", "fp32", 512)])[args.rounds // 2]
        if ("eager", "fp32", 512) in rounds
        else None
    )
    rows = []
    for (e, p, b), rs in rounds.items():
        median = sorted(rs)[args.rounds // 2]
        rows.append(
            {
                "engine": e,
                "precision": p,
                "batch": b,
                "forwards_per_s": round(median, 1),
                "vs_eager_fp32_512": round(median / base, 2) if base else None,
            }
        )
        print(f"{e:9s} {p} batch {b:4d}: {median:7.1f}/s", flush=True)
    out["rows"] = rows
    atomic_write_json(Path(args.out), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("routes")
    r.add_argument("--teacher", required=True)
    r.add_argument("--dataset", default="cifar10")
    r.add_argument("--data-root", default=None)
    r.add_argument("--images", type=int, default=100)
    r.add_argument("--exact-images", type=int, default=20)
    r.add_argument("--z", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    r.add_argument("--first", type=int, nargs="+", default=[128], help="first stage budgets")
    r.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    r.add_argument("--early-only", action="store_true", help="today's stage and the early stops")
    r.add_argument(
        "--fastshap",
        nargs="*",
        default=[],
        metavar="PER_CLASS:COALITIONS:EPOCHS:PRECISION",
        help="amortised explainer routes, e.g. 50:64:10:bf16",
    )
    r.add_argument(
        "--plain",
        nargs="*",
        default=[],
        metavar="BUDGET:PRECISION",
        help="more per-image leverage-gp routes, e.g. 128:bf16",
    )
    r.add_argument("--fastshap-only", action="store_true", help="today's stage and FastSHAP")
    r.add_argument(
        "--compiled",
        nargs="*",
        default=[],
        metavar="PRECISION:BATCH",
        help="today's stage, then compiled forwards: plain 512 and each --z early stop",
    )
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--cache", default=".cache/informativeness-routes")
    r.add_argument("--out", required=True)
    a = sub.add_parser("agreement")
    a.add_argument("--run", required=True)
    a.add_argument("--reference", required=True)
    a.add_argument("--out")
    j = sub.add_parser("projection")
    j.add_argument("--threads", type=int, default=1)
    j.add_argument("--batch", type=int, default=32)
    j.add_argument(
        "--whole-run",
        action="store_true",
        help="also a student's training step and decoding a JPEG (the whole run's projection)",
    )
    j.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    j.add_argument("--out", required=True)
    f = sub.add_parser("forwards")
    f.add_argument("--teacher", required=True)
    f.add_argument("--size", type=int, default=32)
    f.add_argument("--images", type=int, default=2048)
    f.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    f.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--out", required=True)
    args = ap.parse_args()
    run = {"routes": routes, "agreement": compare, "projection": projection, "forwards": forwards}
    try:
        run[args.what](args)
    except UserError as err:  # a bad path or option: one line, as the CLI gives it
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
