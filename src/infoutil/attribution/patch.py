"""The image-patch game: players are the cells of a ``grid x grid`` partition of an image.

``v(S)`` is the teacher's score for the true class when the patches in ``S`` are kept and the
others are replaced by a baseline image. Masked images are built in bulk (one nearest-upsampled
mask per coalition) and go through the teacher in large batches under ``inference_mode``.

Baselines (what "absent" means):

``zero`` (default, the paper's)
    Zero *at the network input*: the paper masks ``x * s`` on the normalised input, as Captum
    does with its default baseline 0. In pixel space this is the dataset's mean colour.
``black``
    Pixel value 0.
``mean``
    The image's own per-channel mean.
``blur``
    A Gaussian blur of the image (sigma = half a patch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from infoutil.attribution.shapley import Design, check_budget, make_design
from infoutil.errors import UserError
from infoutil.runtime import precision_autocast, progress

BASELINES = ("zero", "black", "mean", "blur")
TARGETS = ("prob", "logit")


def patch_bounds(size: int, grid: int) -> list[int]:
    """Pixel boundaries of ``grid`` near-equal cells along one side."""
    return [round(i * size / grid) for i in range(grid + 1)]


def patch_index_map(height: int, width: int, grid: int) -> torch.Tensor:
    """``[H, W]`` long tensor: the player (row-major cell index) that owns each pixel."""
    ys, xs = patch_bounds(height, grid), patch_bounds(width, grid)
    row = torch.bucketize(torch.arange(height), torch.tensor(ys[1:-1]), right=True)
    col = torch.bucketize(torch.arange(width), torch.tensor(xs[1:-1]), right=True)
    return row[:, None] * grid + col[None, :]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_images(
    model: torch.nn.Module, images: torch.Tensor, baseline: str, grid: int
) -> torch.Tensor:
    """The image each absent patch is replaced with, ``[B, C, H, W]``."""
    if baseline == "zero":
        mean = getattr(model, "mean", None)
        if mean is None:
            return torch.zeros_like(images)
        return mean.to(images.dtype).expand_as(images).clone()
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if baseline == "blur":
        return gaussian_blur(images, sigma=images.shape[-1] / grid / 2)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")


def compiled_teacher(
    model: torch.nn.Module, example: torch.Tensor, precision: str = "fp32"
) -> torch.nn.Module:
    """``model`` through ``torch.compile`` (inductor, any batch size) for the masked forwards:
    about twice as fast on one CPU thread (BENCHMARKS.md). It is built here, on ``example``
    (two images are enough), so that a machine without a working compiler is refused before
    the long work starts rather than at its first forward."""
    fast = torch.compile(model, dynamic=True)
    try:
        with torch.inference_mode(), precision_autocast(precision, example.device.type):
            fast(example)
    except Exception as err:  # inductor raises many kinds; all mean "cannot compile here"
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise UserError(
            f"informativeness.compile: torch.compile cannot build the teacher here "
            f"({lines[0][:160]}); install a C++ compiler or set informativeness.compile: false"
        ) from err
    return fast


def patch_values(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    coalitions: torch.Tensor,
    **game,
) -> torch.Tensor:
    """``v`` of each image's coalitions: ``coalitions`` is bool ``[B, m, n]``; returns ``[B, m]``.

    Rows of all images are flattened and evaluated together (``game``: the options of
    :func:`coalition_values`).
    """
    b, m, n = coalitions.shape
    rows_of = torch.arange(b).repeat_interleave(m)
    values = coalition_values(model, images, labels, rows_of, coalitions.reshape(b * m, n), **game)
    return values.view(b, m)


@torch.inference_mode()
def coalition_values(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_of_row: torch.Tensor,
    coalitions: torch.Tensor,
    *,
    grid: int,
    baseline: str = "zero",
    target: str = "prob",
    batch_size: int = 512,
    precision: str = "fp32",
    progress_bar: bool = False,
) -> torch.Tensor:
    """``v`` of coalition rows ``[R, n]``, row ``r`` a coalition of image ``image_of_row[r]``,
    evaluated ``batch_size`` masked images at a time."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    total = coalitions.shape[0]
    device = images.device
    _, c, h, w = images.shape
    base = baseline_images(model, images, baseline, grid)
    delta = images - base
    owner = patch_index_map(h, w, grid).to(device).flatten()  # [H*W]
    values = torch.empty(total, dtype=torch.float32)
    flat = coalitions.to(device)
    img_of_row = image_of_row.to(device)
    labels = labels.to(device)
    bar = progress(total=total, desc="masked forwards", unit="img", enabled=progress_bar)
    for start in range(0, total, batch_size):
        rows = slice(start, min(start + batch_size, total))
        idx = img_of_row[rows]
        keep = flat[rows][:, owner].view(-1, 1, h, w).to(images.dtype)  # [R, 1, H, W]
        masked = torch.addcmul(base[idx], keep, delta[idx])
        with precision_autocast(precision, device.type):
            logits = model(masked).float()
        y = labels[idx]
        if target == "prob":
            score = torch.softmax(logits, 1).gather(1, y[:, None])[:, 0]
        else:
            score = logits.gather(1, y[:, None])[:, 0]
        values[rows] = score.float().cpu()
        bar.update(rows.stop - rows.start)
    bar.close()
    return values


def patch_designs(
    n: int,
    estimator: str,
    budget: int | None,
    seed: int | torch.Tensor,
    count: int,
    error: bool = False,
) -> list[Design]:
    """One design shared by all images (an int seed) or one per image (a tensor of seeds)."""
    if isinstance(seed, torch.Tensor):
        return [
            make_design(n, estimator, budget, torch.Generator().manual_seed(int(s)), error)
            for s in seed.tolist()
        ]
    shared = make_design(n, estimator, budget, torch.Generator().manual_seed(int(seed)), error)
    return [shared] * count


def patch_shapley(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    grid: int = 4,
    baseline: str = "zero",
    target: str = "prob",
    estimator: str = "leverage-gp",
    budget: int | None = None,
    seed: int | torch.Tensor = 0,
    *,
    batch_size: int = 512,
    precision: str = "fp32",
    progress_bar: bool = False,
) -> torch.Tensor:
    """Shapley values of the ``grid x grid`` patches of each image: ``[B, grid, grid]``.

    ``images`` are floats in [0, 1], ``[B, C, H, W]``; ``labels`` the true classes ``[B]``.
    ``seed`` is an int (one design for every image: a batch gives the same maps as one image
    at a time) or a tensor of per-image seeds (what distillation uses: seeds derived from
    candidate ids, so results do not depend on how candidates are batched or sharded).
    Each image costs ``budget`` teacher forwards (``2^(grid^2)`` for ``exact``).
    """
    n = grid * grid
    check_budget(n, estimator, budget)
    designs = patch_designs(n, estimator, budget, seed, len(images))
    coalitions = torch.stack([d.coalitions for d in designs])  # equal sizes: same estimator
    values = patch_values(
        model,
        images,
        labels,
        coalitions,
        grid=grid,
        baseline=baseline,
        target=target,
        batch_size=batch_size,
        precision=precision,
        progress_bar=progress_bar,
    ).to(torch.float64)
    if isinstance(seed, torch.Tensor):
        weights = torch.stack([d.weights for d in designs])  # [B, n, m]
        phi = torch.einsum("bnm,bm->bn", weights, values)
    else:
        phi = values @ designs[0].weights.T
    return phi.to(torch.float32).view(-1, grid, grid)


def stage_budgets(first: int, budget: int) -> list[int]:
    """The budgets of an early-stopped map: ``first``, doubling, and ``budget`` last."""
    stages = [first]
    while stages[-1] * 2 < budget:
        stages.append(stages[-1] * 2)
    return [b for b in stages if b < budget] + [budget]


def _bitmask(coalitions: torch.Tensor) -> torch.Tensor:
    return (coalitions.long() << torch.arange(coalitions.shape[1])).sum(1)


def patch_shapley_early_stop(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    settled: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    budget: int = 512,
    first_budget: int = 128,
    grid: int = 4,
    group: int = 16,
    **game,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``leverage-gp`` maps ``[B, grid, grid]`` that stop early where the decision is settled.

    Each image's design is the one ``patch_shapley`` draws from its seed, at budgets
    ``first_budget``, twice that, ... up to ``budget``; the designs nest, so each stage
    evaluates only the coalitions the image has not had yet. After each stage
    ``settled(indices, maps, error_cov)`` says, from the estimate and its posterior error
    covariance (``[b, n, n]``, the GP's per-unit covariance times the scale its residual
    estimates), which images may stop. An image that never settles ends with the full
    budget's design: its map is ``patch_shapley``'s. Returns the maps and the teacher
    forwards each image cost. ``game``: the options of :func:`coalition_values`.

    Images go through in groups of ``group``: a design with its error terms is 1 MB at 512
    evaluations, so a group bounds the memory while its forwards still fill large batches.
    """
    maps, forwards = [], []
    for start in range(0, len(images), group):
        part = slice(start, start + group)

        def settled_here(rows, estimate, error_cov, start=start):
            return settled(rows + start, estimate, error_cov)

        m, f = _early_stop_group(
            model,
            images[part],
            labels[part],
            seeds[part],
            settled_here,
            budget=budget,
            first_budget=first_budget,
            grid=grid,
            **game,
        )
        maps.append(m)
        forwards.append(f)
    if not maps:
        return torch.zeros((0, grid, grid)), torch.zeros(0, dtype=torch.int64)
    return torch.cat(maps), torch.cat(forwards)


def _early_stop_group(model, images, labels, seeds, settled, *, budget, first_budget, grid, **game):
    n = grid * grid
    count = len(images)
    known: list[dict[int, float]] = [{} for _ in range(count)]
    maps = torch.zeros((count, n), dtype=torch.float64)
    active = torch.arange(count)
    stages = stage_budgets(first_budget, budget)
    for stage, b in enumerate(stages):
        designs = patch_designs(n, "leverage-gp", b, seeds[active], len(active), error=True)
        keys = [_bitmask(d.coalitions).tolist() for d in designs]
        rows = []  # the coalitions no earlier stage evaluated, once each
        for j, (i, ks) in enumerate(zip(active.tolist(), keys, strict=True)):
            for p, k in enumerate(ks):
                if k not in known[i]:
                    known[i][k] = float("nan")
                    rows.append((j, p, i, k))
        if rows:
            values = coalition_values(
                model,
                images,
                labels,
                torch.tensor([i for _, _, i, _ in rows]),
                torch.stack([designs[j].coalitions[p] for j, p, _, _ in rows]),
                grid=grid,
                **game,
            )
            for (_, _, i, k), value in zip(rows, values.tolist(), strict=True):
                known[i][k] = value
        phi, cov = [], []
        for d, i, ks in zip(designs, active.tolist(), keys, strict=True):
            v = torch.tensor([known[i][k] for k in ks], dtype=torch.float64)
            phi.append(d.weights @ v)
            cov.append(d.error_cov * (d.residual @ v).square().sum())
        phi_t = torch.stack(phi)
        maps[active] = phi_t
        if stage == len(stages) - 1:
            break
        done = settled(active, phi_t.view(-1, grid, grid), torch.stack(cov))
        active = active[~done]
        if len(active) == 0:
            break
    forwards = torch.tensor([len(k) for k in known], dtype=torch.int64)
    return maps.to(torch.float32).view(-1, grid, grid), forwards
