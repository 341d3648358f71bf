"""InfoUtil (Wang et al., ICLR 2026, Algorithm 1).

1. Informativeness: an attribution map of each candidate's ``grid x grid`` patches under the
   teacher (the Shapley values; Grad-CAM or a random map as controls); ``num_crops`` crops at
   the argmax of the pooled map, all but the last with noise. (The ``rded`` control draws no
   map: its crops are RDED's random squares of the candidate.)
2. Utility: the teacher's hard-label gradient norm on each crop; a rule keeps ``k x IPC`` crops
   per class (the paper: the highest norms; ``selection.utility.UTILITY_RULES``).
The maps are computed and cached in ``methods.maps``; assembly and soft labels are common to
all methods (``methods.common``).
"""

from __future__ import annotations

import math

import torch

from infoutil.errors import UserError
from infoutil.io.checkpoint import load_teacher
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
from infoutil.methods.maps import attribution_maps, map_key, pool_key
from infoutil.runtime import generator
from infoutil.selection.crops import (
    crop_and_resize,
    informative_crops,
    noise_sigma,
    pool_map,
    rded_crops,
    unique_crops,
    window_kernel,
)
from infoutil.selection.diagnostics import ScoredPatches
from infoutil.selection.utility import (
    ClassCrops,
    crop_scores,
    keep_by_rule,
    last_layer_pieces,
)

REPORT_SAMPLES = 2  # candidates per class whose pixels are kept for the report


RULE_STAGE = "selection rule"  # the utility rule itself (the cluster rule's features)


def select(mc: MethodContext) -> Selection:
    cfg, inf, util = mc.cfg, mc.cfg.informativeness, mc.cfg.utility
    train, judge, info = mc.train, mc.teacher, mc.train.info
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)
    labels = train.targets
    # RDED's crops (the crop-position control): its random squares, scored by our rule
    rded_boxes = inf.attribution == "rded"
    k = cfg.rded.num_crops if rded_boxes else inf.num_crops
    need = mc.patches_per_image * cfg.ipc
    one_per_source = util.per_source == "best"
    # refused before any scoring: each class must offer enough crops (or images)
    per_class = torch.bincount(labels[candidates], minlength=info.num_classes)
    check_supply(
        (per_class * (1 if one_per_source else k)).tolist(),
        need,
        info,
        "candidate images" if one_per_source else f"candidate crops ({k} per image)",
        "lower --ipc or raise --candidates-per-class",
    )
    utility_model = judge
    if util.teacher_epoch is not None:
        utility_model = load_teacher(f"{judge.path.parent}@{util.teacher_epoch}", expect=info)
        utility_model.model.to(mc.device)
    fill = judge.model.mean.reshape(-1)
    size = (info.image_size, info.image_size)

    def crops_of(idx: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The crops as the teacher scores them: ``boxes`` ``[B, K, 4]`` of images ``idx``."""
        images = mc.images(idx).repeat_interleave(boxes.shape[1], 0)
        return crop_and_resize(images, boxes.flatten(0, 1), size, util.crop_input, fill)

    def scored(idx: torch.Tensor, boxes: torch.Tensor, keep: torch.Tensor) -> dict:
        """Gradient norm (utility model) and the judge's view of the ``keep`` crops, each
        ``[B, K]`` with NaN (or -1) where a crop was not kept."""
        crops = crops_of(idx, boxes)[keep.flatten().to(mc.device)]
        y = labels[idx].repeat_interleave(boxes.shape[1])[keep.flatten()]
        values = crop_scores(
            utility_model.model,
            crops,
            y,
            judge=judge.model,
            mode=util.grad_norm,
            batch_size=util.batch_size,
        )
        return {name: _scattered(value, keep) for name, value in values.items()}

    def embedded(pool: ScoredPatches, rows: torch.Tensor):
        # the cluster rule's features cost a forward per crop: timed and counted as a stage
        mc.timer.count(RULE_STAGE, len(rows))
        return last_layer_pieces(utility_model.model, crops_of, pool, rows)

    def class_keeps(c: int, rows: torch.Tensor, pool: ScoredPatches, norms, count: int):
        crops = ClassCrops(
            score=norms[rows],
            correct=pool.pred[rows] == c,
            source=pool.source[rows],
            generator=generator("utility-rule", cfg.seed, c),
            embed=lambda: embedded(pool, rows),
        )
        return rows[keep_by_rule(util, crops, count)]

    base_key = dict(
        seed=cfg.seed,
        grad_norm=util.grad_norm,
        crop_input=util.crop_input,
        utility_teacher=utility_model.weights_sha256,
    )
    # a window as large as the grid is the whole image wherever the map points: no map can
    # move it, so none is computed (and none is recorded), and no shortlist is needed
    kernel = window_kernel(inf, mc.factor)
    whole_image = kernel == inf.grid
    no_map = whole_image or rded_boxes
    if inf.shortlist is not None and not no_map:
        # a cheap first pass: the same rule on whole images keeps the candidates worth a map
        whole = torch.tensor([list(full_box(info))])
        first = chunked_scores(
            mc,
            mc.store("shortlist", **base_key),
            candidates,
            lambda sl: scored(
                candidates[sl],
                whole.expand(len(candidates[sl]), 1, 4),
                torch.ones((len(candidates[sl]), 1), dtype=torch.bool),
            ),
            desc="shortlist",
            forwards_per_item=1,
            fields=("grad_norm", "prob", "pred"),
        )
        images = _scored_pool(candidates, labels, whole.expand(len(candidates), 1, 4), first)
        count = math.ceil(inf.shortlist * need)
        with mc.timer.stage(RULE_STAGE):
            shortlisted = [
                class_keeps(
                    c,
                    torch.nonzero(images.label == c).flatten(),
                    images,
                    first["grad_norm"].flatten(),
                    count,
                )
                for c in range(info.num_classes)
            ]
        candidates = candidates[torch.cat(shortlisted).sort().values]

    if no_map:
        maps = torch.zeros((len(candidates), inf.grid, inf.grid))
    else:
        maps = attribution_maps(mc, candidates, kernel)
    pooled = pool_map(maps, kernel)
    sigma = noise_sigma(pooled, inf.alpha, inf.noise_std)

    def utility_chunk(sl: slice) -> dict[str, torch.Tensor]:
        idx = candidates[sl]
        if rded_boxes:
            boxes = rded_crops(idx.tolist(), size[0], k, cfg.rded.min_scale, cfg.seed)
        else:
            boxes = informative_crops(
                maps[sl],
                sigma[sl],
                kernel=kernel,
                num_crops=k,
                generators=[generator("crops", cfg.seed, int(i)) for i in idx],
                height=size[0],
                width=size[1],
            )
        keep = unique_crops(boxes) if inf.dedupe else torch.ones(boxes.shape[:2], dtype=bool)
        return {"boxes": boxes, **scored(idx, boxes, keep)}

    utility_key = dict(
        # no map moves a whole-image crop, so the map's settings do not key its scores
        {} if whole_image else map_key(inf, kernel),
        **({"rded_min_scale": cfg.rded.min_scale} if rded_boxes else {}),
        **base_key,
        pool_kernel=kernel,
        num_crops=k,
        alpha=inf.alpha,
        noise_std=inf.noise_std,
        dedupe=inf.dedupe,
        **pool_key(candidates, inf),
    )
    crops = chunked_scores(
        mc,
        mc.store("utility", **utility_key),
        candidates,
        utility_chunk,
        desc="utility",
        forwards_per_item=k,
        fields=("boxes", "grad_norm", "prob", "pred"),
    )
    boxes, norms = crops["boxes"], crops["grad_norm"]
    valid = ~torch.isnan(norms)
    check_finite(norms[valid], "gradient norms", mc.teacher)
    check_supply(
        [int((valid & (labels[candidates] == c)[:, None]).sum()) for c in range(info.num_classes)],
        need,
        info,
        "distinct crops",
        "lower --ipc or raise --candidates-per-class",
    )
    flat = torch.nonzero(valid.flatten()).flatten()  # the distinct crops, one pool row each
    pool = _scored_pool(candidates, labels, boxes, crops).take(flat)
    ranked = []
    for c in range(info.num_classes):
        with mc.timer.stage(RULE_STAGE):
            picked = class_keeps(
                c, torch.nonzero(pool.label == c).flatten(), pool, norms.flatten()[flat], need
            )
        if len(picked) < need:
            raise UserError(
                f"class {info.class_names[c]!r}: the {util.select!r} rule found only "
                f"{len(picked)} crops of distinct images but {need} are needed; lower --ipc "
                "or raise --candidates-per-class"
            )
        ranked.append(picked)
    patches = [
        [
            Patch(
                source=int(pool.source[i]),
                box=tuple(pool.box[i].tolist()),
                provenance={
                    "crop": int(flat[i]) % k,
                    "noise_free": bool(pool.noise_free[i]),
                    "grad_norm": float(norms.flatten()[flat[i]]),
                    **(
                        {}
                        if no_map
                        else {f"{inf.attribution}_map": maps[int(flat[i]) // k].tolist()}
                    ),
                },
            )
            for i in picked.tolist()
        ]
        for picked in ranked
    ]
    selected = torch.zeros(norms.numel(), dtype=torch.bool)
    for picked in ranked:
        selected[flat[picked]] = True
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
        **({} if no_map else {inf.attribution: maps, "pooled": pooled.float()}),
        "boxes": boxes,
        "grad_norm": norms,
        "teacher_prob": crops["prob"],
        "teacher_pred": crops["pred"],
        "selected": selected.view_as(norms),
        "sample": sample,
        "sample_images": train.get_batch(candidates[sample]),
    }
    return Selection(
        patches,
        mc.factor,
        scores,
        stitch=cfg.stitch or "consecutive",
        selected_scored=pool.take(torch.cat(ranked)),
        pool_scored=pool,
    )


def _scattered(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` of the ``keep`` crops laid out as ``keep`` (``[B, K]``), NaN or -1 elsewhere."""
    empty = -1 if values.dtype == torch.int64 else float("nan")
    full = torch.full((keep.numel(),), empty, dtype=values.dtype)
    full[keep.flatten()] = values
    return full.view(keep.shape)


def _scored_pool(candidates, labels, boxes, scored) -> ScoredPatches:
    """Every crop ``[N, K]`` of the candidates as the judge scored it. A crop whose box is the
    noise-free (last) crop's is noise-free, even where it was drawn with noise."""
    k = boxes.shape[1]
    return ScoredPatches(
        candidates.repeat_interleave(k),
        labels[candidates].repeat_interleave(k),
        boxes.flatten(0, 1),
        scored["prob"].flatten().double(),
        scored["pred"].flatten().long(),
        (boxes == boxes[:, -1:]).all(-1).flatten(),
    )
