"""Shapley estimators against exact Shapley values on a real teacher.

For N real training images and a 4x4 patch grid: exact Shapley (65,536 evaluations per image,
cached), then each estimator at each budget: relative squared error, top-4 patch recall, and
agreement of the pooled-argmax crop (the decision InfoUtil takes). The distill default
estimator is measured over 3 seeds at 256, 512 and 1024 evaluations, and plain Leverage SHAP
at 1024 beside it. Captum's KernelShap is included when captum is installed
(`pip install captum scikit-learn`), at growing budgets until it matches the best of those
crop agreements; the summary gives the ratio for each seeded budget.
Also measured in the same run: the engine's masked forwards per second against the teacher's
plain batched forward, and the per-sample gradient norms (torch.func against an autograd loop;
last layer against full).

    python benchmarks/shapley_estimators.py --teacher T --dataset fashion-mnist --images 100 \
        --out benchmarks/results/shapley_estimators_fashion-mnist.json
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import time
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from infoutil.atomic import atomic_save_tensors, atomic_write_json
from infoutil.attribution.patch import baseline_images, patch_shapley
from infoutil.config import InformativenessConfig
from infoutil.data import load_dataset, per_class_sample
from infoutil.data.augment import to_float
from infoutil.io.checkpoint import load_teacher
from infoutil.selection.crops import pool_map
from infoutil.selection.utility import grad_norms, grad_norms_loop

BUDGETS = (32, 64, 128, 256, 512)
ESTIMATORS = ("leverage-gp", "leverage", "kernel", "permutation")
LARGER = {"leverage-gp": (2048,)}  # past the seeded budgets
CAPTUM_BUDGETS = (*BUDGETS, 1024, 2048, 4096, 8192)
SEEDS = 3
SEEDED_BUDGETS = (256, 512, 1024)  # the distill default estimator, over SEEDS seeds


def metrics(est: torch.Tensor, exact: torch.Tensor) -> dict:
    e, x = est.flatten(1).double(), exact.flatten(1).double()
    rel = ((e - x) ** 2).sum(1) / (x**2).sum(1).clamp_min(1e-30)
    top_e, top_x = e.topk(4, 1).indices, x.topk(4, 1).indices
    recall = torch.tensor(
        [len(set(a.tolist()) & set(b.tolist())) / 4 for a, b in zip(top_e, top_x, strict=True)]
    )
    crop = pool_map(est, 2).flatten(1).argmax(1) == pool_map(exact, 2).flatten(1).argmax(1)
    return {
        "relative_error": float(rel.mean()),
        "relative_error_median": float(rel.median()),
        "top4_recall": float(recall.mean()),
        "crop_agreement": float(crop.double().mean()),
    }


def captum_maps(model, x, y, budget: int, seed: int) -> torch.Tensor:
    from captum.attr import KernelShap

    torch.manual_seed(seed)
    owner = torch.arange(16).view(4, 4).repeat_interleave(x.shape[-1] // 4, 0)
    owner = owner.repeat_interleave(x.shape[-1] // 4, 1)[None, None]
    ks = KernelShap(lambda inp: torch.softmax(model(inp), 1))
    base = baseline_images(model, x, "zero", 4)
    out = []
    for i in range(len(x)):
        attr = ks.attribute(
            x[i : i + 1],
            baselines=base[i : i + 1],
            target=int(y[i]),
            feature_mask=owner.expand(1, x.shape[1], -1, -1),
            n_samples=budget,
            perturbations_per_eval=budget,
        )
        # the attribution is constant over each patch: read one pixel per patch
        out.append(torch.stack([attr[0, 0][owner[0, 0] == p][0] for p in range(16)]).view(4, 4))
    return torch.stack(out)


def measure(rows: list, report: dict, out: str, estimator: str, budget, compute, exact, **extra):
    """One row: the maps from ``compute()`` against exact, timed; the report is rewritten after
    every row, so that a slow or failed row loses nothing measured before it."""
    t0 = time.perf_counter()
    maps = compute()
    rows.append(
        {
            "estimator": estimator,
            "budget": budget,
            **metrics(maps, exact),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
    )
    print(rows[-1], flush=True)
    atomic_write_json(out, {**report, "estimators": rows})


def versus_captum(rows: list, ours: dict, images: int) -> dict:
    """The evaluations captum's KernelShap needs to match a seeded row's crop agreement.

    Two readings: the first budget at which captum reaches the row's mean agreement over
    seeds, and the first at which it comes within one image of it (the resolution of a single
    run). The ratio is taken at the second, the reading less favourable to us. Also given: the
    first budget at which captum's relative error is as small as the row's.
    """
    captum = [r for r in rows if r["estimator"] == "captum-kernelshap"]
    target = ours["crop_agreement"]

    def first(level):
        hits = [r["budget"] for r in captum if r["crop_agreement"] >= level - 1e-9]
        return hits[0] if hits else None

    mean_match, near_match = first(target), first(target - 1.0 / images)
    largest = max((r["budget"] for r in captum), default=None)
    used = near_match if near_match is not None else largest
    return {
        "estimator": ours["estimator"],
        "budget": ours["budget"],
        "crop_agreement": target,
        "captum_budget_reaching_the_mean": mean_match,
        "captum_budget_within_one_image": near_match,
        "captum_largest_budget_tried": largest,
        "captum_budget_reaching_the_relative_error": next(
            (r["budget"] for r in captum if r["relative_error"] <= ours["relative_error"]), None
        ),
        "ratio": used / ours["budget"] if used else None,
        "ratio_is_lower_bound": near_match is None,  # captum never came within one image
    }


def sample_key(teacher, idx: torch.Tensor) -> str:
    """Names the cached games of this teacher on these images (both Shapley benchmarks)."""
    return hashlib.sha256(f"{teacher.weights_sha256}:{idx.tolist()}".encode()).hexdigest()[:16]


def arguments(images: int) -> argparse.ArgumentParser:
    """The options every Shapley benchmark takes (this one and `shapley_prior.py`)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--images", type=int, default=images)
    ap.add_argument("--out", required=True)
    return ap


def main() -> None:
    ap = arguments(images=100)
    ap.add_argument("--exact-cache", default=".cache/exact-shapley", help="directory")
    ap.add_argument(
        "--compile-reference",
        action="store_true",
        help="torch.compile the teacher for the exact reference only (about 1.5x on CPU)",
    )
    args = ap.parse_args()

    teacher = load_teacher(args.teacher)
    model = teacher.model
    train = load_dataset(args.dataset, "train", args.data_root)
    idx = per_class_sample(
        train.targets, train.info.num_classes, args.images // train.info.num_classes, seed=123
    )
    x, y = to_float(train.get_batch(idx)), train.targets[idx]
    report: dict = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "teacher": teacher.describe(),
        "dataset": args.dataset,
        "images": len(idx),
        "grid": 4,
        "baseline": "zero",
        "target": "prob",
    }

    # exact maps are cached per block of 10 images, so a killed run keeps what it computed
    cache = Path(args.exact_cache)
    cache.mkdir(parents=True, exist_ok=True)
    key = sample_key(teacher, idx)
    reference = torch.compile(model) if args.compile_reference else model
    blocks, seconds = [], 0.0
    for i in tqdm(range(0, len(x), 10), desc="exact Shapley (blocks of 10 images)"):
        block = cache / f"exact-{key}-{i:05d}.safetensors"
        if block.is_file():
            stored = load_file(str(block))
            blocks.append(stored["exact"])
            seconds += float(stored["seconds"])
            continue
        t0 = time.perf_counter()
        maps = patch_shapley(
            reference, x[i : i + 10], y[i : i + 10], estimator="exact", batch_size=4096
        )
        took = time.perf_counter() - t0
        atomic_save_tensors(block, {"exact": maps, "seconds": torch.tensor(took)})
        blocks.append(maps)
        seconds += took
    exact = torch.cat(blocks)
    report["exact_seconds"] = seconds
    report["exact_reference"] = "torch.compile" if args.compile_reference else "eager"
    report["exact_forwards_per_second"] = len(x) * 65536 / report["exact_seconds"]

    # engine overhead: masked forwards per second (the default estimator, its designs built
    # per image included) vs the plain batched forward; the two alternate three times and the
    # best of each is kept, so a neighbour taking the CPU for a while does not bias the ratio
    n, cfg = 64, InformativenessConfig()
    batch = x[:n].repeat(8, 1, 1, 1)[:512]
    engine_rates, plain_rates = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        patch_shapley(
            model,
            x[:n],
            y[:n],
            estimator=cfg.estimator,
            budget=cfg.budget,
            seed=torch.arange(n),
            batch_size=512,
        )
        engine_rates.append(n * cfg.budget / (time.perf_counter() - t0))
        with torch.inference_mode():
            model(batch)
            t0 = time.perf_counter()
            reps = 32
            for _ in range(reps):
                model(batch)
            plain_rates.append(reps * len(batch) / (time.perf_counter() - t0))
    report["engine"] = {
        "estimator": cfg.estimator,
        "budget": cfg.budget,
        "masked_forwards_per_second": max(engine_rates),
        "plain_forwards_per_second": max(plain_rates),
        "ratio": max(engine_rates) / max(plain_rates),
    }
    print(report["engine"], flush=True)

    # per-sample gradient norms: vectorised vs loop, and last layer vs full (Spearman)
    samples = x[:256]
    grad_norms(model, samples[:8], y[:8])  # warm up torch.func
    t0 = time.perf_counter()
    fast = grad_norms(model, samples, y[:256], batch_size=64)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = grad_norms_loop(model, samples[:64], y[:64])
    t_slow = (time.perf_counter() - t0) * 4
    last = grad_norms(model, samples, y[:256], mode="last_layer")

    def ranks(v):
        return v.argsort().argsort().double()

    rho = float(torch.corrcoef(torch.stack([ranks(fast), ranks(last)]))[0, 1])
    report["grad_norms"] = {
        "samples": 256,
        "vmap_per_second": 256 / t_fast,
        "loop_per_second": 256 / t_slow,
        "max_relative_difference_vs_loop": float(((fast[:64] - slow) / slow).abs().max()),
        "spearman_last_layer_vs_full": rho,
    }
    print(report["grad_norms"], flush=True)
    rows: list = []

    def estimate(est, b, seed_offset=1000):
        return patch_shapley(
            model,
            x,
            y,
            estimator=est,
            budget=b,
            seed=torch.arange(len(x)) + seed_offset,
            batch_size=2048,
        )

    # the distill default estimator at several budgets, and plain leverage, over several seeds
    report["default"] = {"estimator": cfg.estimator, "budget": cfg.budget}
    seeded = [(cfg.estimator, b) for b in SEEDED_BUDGETS] + [("leverage", 1024)]
    report["seeded"] = []
    for est, b in seeded:
        agreements, errors = [], []
        for s in range(SEEDS):
            measure(
                rows,
                report,
                args.out,
                f"{est} (seeded)",
                b,
                lambda est=est, b=b, s=s: estimate(est, b, 1000 + 100 * s),
                exact,
                seed=s,
            )
            agreements.append(rows[-1]["crop_agreement"])
            errors.append(rows[-1]["relative_error"])
        report["seeded"].append(
            {
                "estimator": est,
                "budget": b,
                "crop_agreement_per_seed": agreements,
                "crop_agreement": sum(agreements) / len(agreements),
                "relative_error": sum(errors) / len(errors),
            }
        )
    for est in ESTIMATORS:
        for b in (*BUDGETS, *LARGER.get(est, ())):
            measure(
                rows,
                report,
                args.out,
                est,
                b,
                lambda est=est, b=b: estimate(est, b),
                exact,
            )
    # check the optional packages first: an ImportError inside captum must not read as "absent"
    try:
        import captum  # noqa: F401
        import sklearn  # noqa: F401  (captum's KernelShap fits its regression with it)
    except ImportError:
        report["captum"] = "not installed (pip install captum scikit-learn)"
    else:
        target = max(r["crop_agreement"] for r in report["seeded"])
        for b in CAPTUM_BUDGETS:
            measure(
                rows,
                report,
                args.out,
                "captum-kernelshap",
                b,
                lambda b=b: captum_maps(model, x, y, b, seed=b),
                exact,
            )
            if rows[-1]["crop_agreement"] >= target:
                break  # captum has matched every seeded row; larger budgets only cost time
        report["versus_captum"] = [versus_captum(rows, r, len(x)) for r in report["seeded"]]
        for line in report["versus_captum"]:
            print(line, flush=True)
    atomic_write_json(args.out, {**report, "estimators": rows})


if __name__ == "__main__":
    main()
