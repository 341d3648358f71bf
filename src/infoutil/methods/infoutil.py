"""InfoUtil (Wang et al., ICLR 2026, Algorithm 1).

1. Informativeness: the Shapley map of each candidate's ``grid x grid`` patches under the
   teacher; ``num_crops`` crops at the argmax of the pooled map, all but the last with noise.
2. Utility: the teacher's hard-label gradient norm on each crop; the top ``k x IPC`` per class.
Assembly and soft labels are common to all methods (``methods.common``).
"""

from __future__ import annotations

import torch

from infoutil.attribution.patch import patch_shapley
from infoutil.errors import UserError
from infoutil.methods.common import (
    MethodContext,
    Patch,
    Selection,
    candidate_pool,
    check_finite,
    check_supply,
    chunked_scores,
)
from infoutil.runtime import derive_seed, generator
from infoutil.selection.crops import (
    crop_and_resize,
    informative_crops,
    noise_sigma,
    pool_map,
)
from infoutil.selection.utility import grad_norms, top_k_per_class

REPORT_SAMPLES = 2  # candidates per class whose pixels are kept for the report


def unique_crops(boxes: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: the first of each identical box within a candidate."""
    keep = torch.ones(boxes.shape[:2], dtype=torch.bool)
    for i in range(boxes.shape[0]):
        seen = set()
        for j, box in enumerate(map(tuple, boxes[i].tolist())):
            keep[i, j] = box not in seen
            seen.add(box)
    return keep


def select(mc: MethodContext) -> Selection:
    cfg, inf, util = mc.cfg, mc.cfg.informativeness, mc.cfg.utility
    train, model, info = mc.train, mc.teacher.model, mc.train.info
    if inf.pool_kernel > inf.grid:
        raise UserError(f"pool_kernel {inf.pool_kernel} is larger than the grid {inf.grid}")
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)
    labels = train.targets
    budget = inf.evaluations
    shapley_key = dict(
        seed=cfg.seed,
        grid=inf.grid,
        estimator=inf.estimator,
        budget=budget,
        baseline=inf.baseline,
        target=inf.target,
        precision=inf.precision,
    )

    def shapley_chunk(sl: slice) -> dict[str, torch.Tensor]:
        idx = candidates[sl]
        seeds = torch.tensor([derive_seed("shapley", cfg.seed, int(i)) for i in idx])
        maps = patch_shapley(
            model,
            mc.images(idx),
            labels[idx],
            grid=inf.grid,
            baseline=inf.baseline,
            target=inf.target,
            estimator=inf.estimator,
            budget=budget,
            seed=seeds,
            batch_size=cfg.forward_batch_size,
            precision=inf.precision,
        )
        return {"shapley": maps}

    maps = chunked_scores(
        mc,
        mc.store("shapley", **shapley_key),
        candidates,
        shapley_chunk,
        desc="shapley",
        forwards_per_item=budget,
    )["shapley"]
    check_finite(maps, "Shapley values", mc.teacher)

    pooled = pool_map(maps, inf.pool_kernel)
    sigma = noise_sigma(pooled, inf.alpha, inf.noise_std)
    fill = model.mean.reshape(-1)
    size = (info.image_size, info.image_size)
    k = inf.num_crops

    def utility_chunk(sl: slice) -> dict[str, torch.Tensor]:
        idx = candidates[sl]
        gens = [generator("crops", cfg.seed, int(i)) for i in idx]
        boxes = informative_crops(
            maps[sl],
            sigma[sl],
            kernel=inf.pool_kernel,
            num_crops=k,
            generators=gens,
            height=size[0],
            width=size[1],
        )
        keep = unique_crops(boxes) if inf.dedupe else torch.ones(boxes.shape[:2], dtype=bool)
        images = mc.images(idx).repeat_interleave(k, 0)
        crops = crop_and_resize(images, boxes.flatten(0, 1), size, util.crop_input, fill)
        flat_keep = keep.flatten()
        norms = torch.full((len(crops),), float("nan"), dtype=torch.float64)
        norms[flat_keep] = grad_norms(
            model,
            crops[flat_keep.to(crops.device)],
            labels[idx].repeat_interleave(k)[flat_keep].to(crops.device),
            mode=util.grad_norm,
            batch_size=util.batch_size,
        )
        return {"boxes": boxes, "grad_norm": norms.view(len(idx), k)}

    utility_key = dict(
        shapley_key,
        pool_kernel=inf.pool_kernel,
        num_crops=k,
        alpha=inf.alpha,
        noise_std=inf.noise_std,
        dedupe=inf.dedupe,
        grad_norm=util.grad_norm,
        crop_input=util.crop_input,
    )
    scored = chunked_scores(
        mc,
        mc.store("utility", **utility_key),
        candidates,
        utility_chunk,
        desc="utility",
        forwards_per_item=k,
    )
    boxes, norms = scored["boxes"], scored["grad_norm"]
    check_finite(norms[~torch.isnan(norms)], "gradient norms", mc.teacher)

    need = mc.patches_per_image * cfg.ipc
    crop_class = labels[candidates].repeat_interleave(k)
    flat = norms.flatten()
    valid = ~torch.isnan(flat)
    check_supply(
        [int((valid & (crop_class == c)).sum()) for c in range(info.num_classes)],
        need,
        info,
        "distinct crops",
        "lower --ipc or raise --candidates-per-class",
    )
    highest = util.select == "highest"
    missing = -torch.inf if highest else torch.inf  # duplicates are never picked
    ranked = top_k_per_class(
        torch.where(valid, flat, missing), crop_class, need, info.num_classes, descending=highest
    )
    patches = []
    for picked in ranked:
        row = []
        for flat_i in picked.tolist():
            cand, j = divmod(flat_i, k)
            row.append(
                Patch(
                    source=int(candidates[cand]),
                    box=tuple(boxes[cand, j].tolist()),
                    provenance={
                        "crop": j,
                        "noise_free": j == k - 1,
                        "grad_norm": float(norms[cand, j]),
                        "shapley_map": maps[cand].tolist(),
                    },
                )
            )
        patches.append(row)
    selected = torch.zeros_like(norms, dtype=torch.bool)
    for picked in ranked:
        selected.view(-1)[picked] = True
    # a few candidates per class with their pixels, so a report can show maps and crops
    sample = torch.cat(
        [
            torch.nonzero(labels[candidates] == c).flatten()[:REPORT_SAMPLES]
            for c in range(info.num_classes)
        ]
    )
    scores = {
        "candidates": candidates,
        "candidate_labels": labels[candidates],
        "shapley": maps,
        "pooled": pooled.float(),
        "boxes": boxes,
        "grad_norm": norms,
        "selected": selected,
        "sample": sample,
        "sample_images": train.get_batch(candidates[sample]),
    }
    return Selection(patches, mc.factor, scores)
