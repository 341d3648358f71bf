"""Baselines that keep whole real images: ``random``, and ``herding`` / ``kcenter`` coresets
on the teacher's penultimate features of the candidate pool.

At a factor above 1 the images stay whole (not stitched); the set records the factor, so the
evaluation protocol augments and labels them as it does every other method's images.
"""

from __future__ import annotations

import torch

from infoutil.methods.common import (
    MethodContext,
    Patch,
    Selection,
    candidate_pool,
    check_finite,
    check_supply,
    chunked_scores,
    full_box,
)
from infoutil.runtime import generator
from infoutil.selection.crops import crop_and_resize, random_window_box
from infoutil.selection.scored import ScoredPatches


def select_random(mc: MethodContext) -> Selection:
    """IPC real images per class, drawn with the seed from the whole class.

    ``random.patches: whole`` keeps them whole at any factor: DD-Ranking's "random"
    reference. The set still records the factor, so the protocol augments and labels its
    images as it does every method's. ``windows`` draws factor^2 x IPC images per class and
    cuts each to a native window of side size/factor at a random position: random real crops,
    stitched like every method's patches.
    """
    info, f = mc.train.info, mc.factor
    windows = mc.cfg.random.patches == "windows" and f > 1
    per_class = mc.cfg.ipc * (f * f if windows else 1)
    side = max(1, info.image_size // f)  # a window's side, native pixels
    counts = [int((mc.train.targets == c).sum()) for c in range(info.num_classes)]
    check_supply(counts, per_class, info, "images", "lower ipc")
    patches = []
    for c in range(info.num_classes):
        idx = mc.train.class_indices(c)
        pick = torch.randperm(len(idx), generator=generator("random", mc.cfg.seed, c))
        sources = idx[pick[:per_class]].tolist()
        boxes = [
            random_window_box(info.image_size, side, generator("random-window", mc.cfg.seed, i))
            if windows else full_box(info)
            for i in sources
        ]  # fmt: skip
        patches.append([Patch(i, b) for i, b in zip(sources, boxes, strict=True)])
    chosen = torch.tensor([p.source for row in patches for p in row])
    boxes = torch.tensor([p.box for row in patches for p in row])
    size = (info.image_size, info.image_size)
    batch = mc.crop_batch
    with torch.inference_mode():
        logits = torch.cat(
            [
                mc.teacher.model(crop_and_resize(mc.images(part), part_boxes, size)).cpu()
                for part, part_boxes in zip(chosen.split(batch), boxes.split(batch), strict=True)
            ]
        )
    selected = ScoredPatches.from_logits(chosen, mc.train.targets[chosen], boxes, logits)
    # the contrast: the seeded candidate pool, a uniform sample of each class
    _, pool = _pool_features(mc)
    return Selection(
        patches,
        f,
        layout="patches" if windows else "whole images",
        selected_scored=selected,
        pool_scored=pool,
    )


def _pool_features(mc: MethodContext) -> tuple[torch.Tensor, ScoredPatches]:
    """The candidate pool's penultimate features and what the teacher thinks of each image."""
    cfg, train, model = mc.cfg, mc.train, mc.teacher.model
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)

    @torch.inference_mode()
    def feature_chunk(sl: slice) -> dict[str, torch.Tensor]:
        h = model.features(mc.images(candidates[sl]))
        return {"features": h.cpu(), "logits": model.fc(h).float().cpu()}

    scored = chunked_scores(
        mc,
        mc.store("features", seed=cfg.seed),
        candidates,
        feature_chunk,
        desc="features",
        forwards_per_item=1,
        fields=("features", "logits"),
    )
    feats = scored["features"].to(torch.float64)
    check_finite(feats, "features", mc.teacher)
    box = torch.tensor([full_box(train.info)] * len(candidates))
    return feats, ScoredPatches.from_logits(
        candidates, train.targets[candidates], box, scored["logits"]
    )


def herding(features: torch.Tensor, k: int) -> list[int]:
    """Greedy herding (Welling 2009): each pick brings the running mean closest to the mean."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    chosen: list[int] = []
    available = torch.ones(len(features), dtype=torch.bool)
    for t in range(min(k, len(features))):
        dist = ((mu[None] - (total[None] + features) / (t + 1)) ** 2).sum(1)
        dist[~available] = torch.inf
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return chosen


def kcenter(features: torch.Tensor, k: int) -> list[int]:
    """Greedy k-center: start nearest the mean, then always the farthest from those chosen."""
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = ((features - features[first]) ** 2).sum(1)
    for _ in range(min(k, len(features)) - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, ((features - features[i]) ** 2).sum(1))
    return chosen


def _coreset(mc: MethodContext, pick) -> Selection:
    cfg, train, info = mc.cfg, mc.train, mc.train.info
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)
    cand_class = train.targets[candidates]
    check_supply(  # before any scoring
        [int((cand_class == c).sum()) for c in range(info.num_classes)],
        cfg.ipc,
        info,
        "candidates",
        "lower ipc or raise candidates_per_class",
    )
    feats, pool = _pool_features(mc)
    box, patches = full_box(info), []
    selected = torch.zeros(len(candidates), dtype=torch.bool)
    order_all = []
    for c in range(info.num_classes):
        members = torch.nonzero(cand_class == c).flatten()
        order = pick(feats[members], cfg.ipc)
        selected[members[order]] = True
        order_all.append(members[order])
        patches.append(
            [Patch(int(candidates[members[i]]), box, {"rank": r}) for r, i in enumerate(order)]
        )
    return Selection(
        patches,
        mc.factor,
        {"candidates": candidates, "candidate_labels": cand_class, "selected": selected},
        layout="whole images",
        selected_scored=pool.take(torch.cat(order_all)),
        pool_scored=pool,
    )


def select_herding(mc: MethodContext) -> Selection:
    return _coreset(mc, herding)


def select_kcenter(mc: MethodContext) -> Selection:
    return _coreset(mc, kcenter)
