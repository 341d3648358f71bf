"""Why `leverage-gp`'s prior: the Fourier spectrum of real image-patch games, and its decay.

For N training images (class by class in turn, from the same seeded sample of 10 per class as
`shapley_estimators.py`), every one of the 65,536 coalitions of the 4x4 patch game is evaluated
once and cached. From each full table, by lookup alone:
- the share of the Shapley values' weight held by each interaction order (a Fourier coefficient
  c_T of odd order |T| adds (2/|T|) c_T to each of its |T| players; even orders add nothing);
- the per-coefficient variance ratio between consecutive odd orders (the prior's `decay`);
- the relative squared error of `leverage` and of `leverage-gp` at several decays and budgets,
  over 10 seeds;
- the time to build one image's design (coalitions and solve) for both, one thread.

    python benchmarks/shapley_prior.py --teacher T --dataset cifar10 --images 8 \
        --out benchmarks/results/shapley_prior_cifar10.json
"""

from __future__ import annotations

import platform
import time
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import load_file
from shapley_estimators import (  # the sibling script; its folder is on sys.path
    arguments,
    metrics,
    sample_key,
)
from tqdm import tqdm

from infoutil.atomic import atomic_save_tensors, atomic_write_json
from infoutil.attribution.patch import patch_values
from infoutil.attribution.shapley import exact_design, make_design, odd_gp_design
from infoutil.data import load_dataset, per_class_sample
from infoutil.data.augment import to_float
from infoutil.io.checkpoint import load_teacher

N = 16  # a 4x4 grid
DECAYS = (0.03, 0.1, 0.3)
BUDGETS = (256, 512, 1024)
SEEDS = 10


def fourier(values: torch.Tensor) -> torch.Tensor:
    """Coefficients c_T of v(x) = sum_T c_T prod_{i in T} x_i, x = +1 present / -1 absent;
    ``values[..., k]`` is v of the coalition with bitmask k, and so is the result's index T."""
    a, h = values.clone(), 1
    while h < a.shape[-1]:  # Walsh-Hadamard butterflies
        a = a.view(*a.shape[:-1], -1, 2, h)
        a = torch.stack([a[..., 0, :] + a[..., 1, :], a[..., 0, :] - a[..., 1, :]], -2)
        a = a.reshape(*a.shape[:-3], -1)
        h *= 2
    order = popcount(torch.arange(values.shape[-1]))
    return a / values.shape[-1] * (-1.0) ** order  # the transform's sign is +1 for absent


def popcount(k: torch.Tensor) -> torch.Tensor:
    return ((k[:, None] >> torch.arange(N)) & 1).sum(1)


def lookup(design, tables: torch.Tensor) -> torch.Tensor:
    """The design's estimate for every table: ``[images, n]``."""
    keys = (design.coalitions.long() * (1 << torch.arange(N))).sum(1)
    return tables[:, keys] @ design.weights.T


def relative_error(est: torch.Tensor, exact: torch.Tensor) -> float:
    """The estimator benchmark's mean relative squared error, on flat ``[images, n]`` maps."""
    return metrics(est.view(-1, 4, 4), exact.view(-1, 4, 4))["relative_error"]


def main() -> None:
    ap = arguments(images=8)
    ap.add_argument("--tables", default=".cache/game-tables", help="directory")
    args = ap.parse_args()

    teacher = load_teacher(args.teacher)
    train = load_dataset(args.dataset, "train", args.data_root)
    k = train.info.num_classes
    idx = per_class_sample(train.targets, k, 10, seed=123)
    positions = [c * 10 + r for r in range(10) for c in range(k)][: args.images]
    key = sample_key(teacher, idx)
    cache = Path(args.tables)
    cache.mkdir(parents=True, exist_ok=True)
    model = torch.compile(teacher.model)
    tables = []
    for pos in tqdm(positions, desc="full game tables (65,536 coalitions each)"):
        path = cache / f"table-{key}-{pos:03d}.safetensors"
        if not path.is_file():
            i = idx[pos : pos + 1]
            x, y = to_float(train.get_batch(i)), train.targets[i]
            coalitions = exact_design(N).coalitions[None]
            values = patch_values(model, x, y, coalitions, grid=4, batch_size=4096)[0]
            atomic_save_tensors(path, {"values": values})
        tables.append(load_file(str(path))["values"].double())
    V = torch.stack(tables)
    exact = V @ exact_design(N).weights.T

    coef = fourier(V)
    order = popcount(torch.arange(2**N))
    weight = torch.where(order % 2 == 1, 4.0 / order.clamp(min=1), torch.zeros(()))
    total = (coef**2 * weight).sum(1)
    spectrum = {}
    for d in range(1, 10, 2):
        share = (coef[:, order == d] ** 2 * weight[order == d]).sum(1) / total
        spectrum[d] = {
            "mean": float(share.mean()),
            "min": float(share.min()),
            "max": float(share.max()),
        }
    variance = {d: (coef[:, order == d] ** 2).mean(1) for d in range(1, 10, 2)}
    ratios = {}
    for d in (3, 5, 7):
        r = variance[d] / variance[d - 2]
        ratios[f"{d}/{d - 2}"] = {
            "median": float(r.median()),
            "min": float(r.min()),
            "max": float(r.max()),
        }

    errors = []
    for b in BUDGETS:
        row = {"budget": b}
        designs = [
            make_design(N, "leverage", b, torch.Generator().manual_seed(s)) for s in range(SEEDS)
        ]
        row["leverage"] = sum(relative_error(lookup(d, V), exact) for d in designs) / SEEDS
        for decay in DECAYS:
            err = 0.0
            for s in range(SEEDS):
                d = odd_gp_design(N, b, torch.Generator().manual_seed(s), decay)
                err += relative_error(lookup(d, V), exact) / SEEDS
            row[f"leverage-gp decay {decay}"] = err
        print(row, flush=True)
        errors.append(row)

    # the solve's own cost: one image's design, median of 5 builds, one thread
    torch.set_num_threads(1)
    build_seconds = []
    for b in (256, 512, 1024, 2048, 4096):
        row = {"budget": b}
        for est in ("leverage", "leverage-gp"):
            times = []
            for s in range(5):
                t0 = time.perf_counter()
                make_design(N, est, b, torch.Generator().manual_seed(100 + s))
                times.append(time.perf_counter() - t0)
            row[est] = sorted(times)[2]
        print(row, flush=True)
        build_seconds.append(row)

    report = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "teacher": teacher.describe(),
        "dataset": args.dataset,
        "images": len(positions),
        "grid": 4,
        "baseline": "zero",
        "target": "prob",
        "share_of_shapley_weight_by_order": spectrum,
        "per_coefficient_variance_ratio": ratios,
        "relative_error_over_seeds": errors,
        "seeds": SEEDS,
        "design_build_seconds": build_seconds,
    }
    print(spectrum, ratios, sep="\n")
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
