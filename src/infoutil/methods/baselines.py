"""Baselines that keep whole real images: ``random``, and ``herding`` / ``kcenter`` coresets
on the teacher's penultimate features of the candidate pool."""

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


def select_random(mc: MethodContext) -> Selection:
    """IPC real images per class, drawn with the seed from the whole class."""
    info, box = mc.train.info, full_box(mc.train.info)
    counts = [int((mc.train.targets == c).sum()) for c in range(info.num_classes)]
    check_supply(counts, mc.cfg.ipc, info, "images", "lower --ipc")
    patches = []
    for c in range(info.num_classes):
        idx = mc.train.class_indices(c)
        pick = torch.randperm(len(idx), generator=generator("random", mc.cfg.seed, c))
        patches.append([Patch(int(i), box) for i in idx[pick[: mc.cfg.ipc]].tolist()])
    return Selection(patches, 1)


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
    model = mc.teacher.model

    @torch.inference_mode()
    def feature_chunk(sl: slice) -> dict[str, torch.Tensor]:
        return {"features": model.features(mc.images(candidates[sl])).cpu()}

    feats = chunked_scores(
        mc,
        mc.store("features", seed=cfg.seed),
        candidates,
        feature_chunk,
        desc="features",
        forwards_per_item=1,
    )["features"].to(torch.float64)
    check_finite(feats, "features", mc.teacher)
    cand_class = train.targets[candidates]
    check_supply(
        [int((cand_class == c).sum()) for c in range(info.num_classes)],
        cfg.ipc,
        info,
        "candidates",
        "lower --ipc or raise --candidates-per-class",
    )
    box, patches = full_box(info), []
    selected = torch.zeros(len(candidates), dtype=torch.bool)
    for c in range(info.num_classes):
        members = torch.nonzero(cand_class == c).flatten()
        order = pick(feats[members], cfg.ipc)
        selected[members[order]] = True
        patches.append(
            [Patch(int(candidates[members[i]]), box, {"rank": r}) for r, i in enumerate(order)]
        )
    return Selection(
        patches, 1, {"candidates": candidates, "candidate_labels": cand_class, "selected": selected}
    )


def select_herding(mc: MethodContext) -> Selection:
    return _coreset(mc, herding)


def select_kcenter(mc: MethodContext) -> Selection:
    return _coreset(mc, kcenter)
