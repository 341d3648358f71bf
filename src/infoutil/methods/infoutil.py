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
from dataclasses import dataclass

import torch

from infoutil.errors import UserError
from infoutil.io.checkpoint import Teacher, load_teacher
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
from infoutil.selection.probe import quarter_probe
from infoutil.selection.scored import ScoredPatches
from infoutil.selection.utility import (
    ClassCrops,
    crop_scores,
    keep_by_rule,
    last_layer_pieces,
)

REPORT_SAMPLES = 2  # candidates per class whose pixels are kept for the report
RULE_STAGE = "selection rule"  # the utility rule itself (the cluster rule's features)


def select(mc: MethodContext) -> Selection:
    """Algorithm 1, one call a stage."""
    cfg, info = mc.cfg, mc.train.info
    plan = crop_plan(mc)
    candidates = candidate_pool(mc.train, cfg.candidates_per_class, cfg.seed)
    _check_candidates(mc, plan, candidates)  # refused before any scoring
    probe = read_quarters(mc, candidates)
    scorer = CropScorer.of(mc)
    keys = store_keys(mc, plan, scorer)
    candidates = shortlist(mc, plan, scorer, candidates, keys)
    maps = informativeness(mc, plan, candidates)
    crops = utility(mc, plan, scorer, candidates, maps, keys)
    pool, norms, flat = _distinct_crops(mc, plan, candidates, crops)
    ranked = [keep_for_class(mc, plan, scorer, pool, norms, c) for c in range(info.num_classes)]
    return _selection(mc, plan, candidates, maps, crops, pool, flat, ranked, probe)


def computes_maps(cfg, image_size: int) -> bool:
    """Whether a distil with ``cfg`` computes Shapley maps (where ``estimator`` and ``budget``
    act): InfoUtil with windows smaller than the image. The default recipe's whole images
    and the baselines compute none."""
    if cfg.method != "infoutil" or cfg.informativeness.attribution != "shapley":
        return False
    factor = cfg.factor if cfg.factor is not None else (1 if image_size <= 64 else 2)
    return window_kernel(cfg.informativeness, factor) < cfg.informativeness.grid


@dataclass(frozen=True)
class CropPlan:
    """Where the crops come from, decided once from the config and the factor.

    ``source``: ``whole`` (the window is the whole image, so no map can move it and none is
    computed), ``map`` (windows at the attribution map's argmax, with noise) or ``rded``
    (RDED's random squares, a control; named ``informativeness.attribution: rded`` in the
    config). ``kernel`` is the window's side in grid cells, ``k`` the crops per candidate,
    ``need`` the patches kept per class."""

    source: str
    kernel: int
    k: int
    need: int

    @property
    def maps(self) -> bool:
        return self.source == "map"


def crop_plan(mc: MethodContext) -> CropPlan:
    inf = mc.cfg.informativeness
    kernel = window_kernel(inf, mc.factor)
    if inf.attribution == "rded":
        source, k = "rded", mc.cfg.rded.num_crops
    else:
        source, k = ("whole" if kernel == inf.grid else "map"), inf.num_crops
    return CropPlan(source, kernel, k, mc.patches_per_image * mc.cfg.ipc)


def read_quarters(mc: MethodContext, candidates: torch.Tensor) -> dict:
    """How well the teacher reads a native quarter of a candidate, against the whole image
    (``selection.probe``): two forwards on each of about 500 candidates, before any map."""
    with mc.timer.stage("quarter probe"):
        probe = quarter_probe(
            mc.teacher.model, mc.images, candidates, mc.train.targets[candidates],
            num_classes=mc.train.info.num_classes, seed=mc.cfg.seed,
            crop_input=mc.cfg.utility.crop_input, fill=mc.teacher.model.mean.reshape(-1),
            batch_size=mc.crop_batch,
        )  # fmt: skip
    mc.timer.count("quarter probe", 2 * probe["images"])
    return probe


def _check_candidates(mc: MethodContext, plan: CropPlan, candidates: torch.Tensor) -> None:
    """Each class must offer enough crops (or images, at one crop per source)."""
    one_per_source = mc.cfg.utility.per_source == "best"
    per_class = torch.bincount(mc.train.targets[candidates], minlength=mc.train.info.num_classes)
    check_supply(
        (per_class * (1 if one_per_source else plan.k)).tolist(),
        plan.need,
        mc.train.info,
        "candidate images" if one_per_source else f"candidate crops ({plan.k} per image)",
        "lower ipc or raise candidates_per_class",
    )


@dataclass
class CropScorer:
    """Scores crops as the utility stage sees them: the gradient norm under the utility model
    (the judge, or an earlier checkpoint of its run) and the judge's view of each crop."""

    mc: MethodContext
    utility_model: Teacher

    @classmethod
    def of(cls, mc: MethodContext) -> CropScorer:
        epoch, judge = mc.cfg.utility.teacher_epoch, mc.teacher
        if epoch is None:
            return cls(mc, judge)
        model = load_teacher(f"{judge.path.parent}@{epoch}", expect=mc.train.info)
        model.model.to(mc.device)
        return cls(mc, model)

    def crops(self, idx: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The crops as the teacher scores them: ``boxes`` ``[B, K, 4]`` of images ``idx``."""
        size = (self.mc.train.info.image_size,) * 2
        images = self.mc.images(idx).repeat_interleave(boxes.shape[1], 0)
        fill = self.mc.teacher.model.mean.reshape(-1)
        return crop_and_resize(
            images, boxes.flatten(0, 1), size, self.mc.cfg.utility.crop_input, fill
        )

    def score(self, idx: torch.Tensor, boxes: torch.Tensor, keep: torch.Tensor) -> dict:
        """Gradient norm and the judge's view of the ``keep`` crops, each ``[B, K]`` with NaN
        (or -1) where a crop was not kept."""
        util = self.mc.cfg.utility
        crops = self.crops(idx, boxes)[keep.flatten().to(self.mc.device)]
        y = self.mc.train.targets[idx].repeat_interleave(boxes.shape[1])[keep.flatten()]
        values = crop_scores(
            self.utility_model.model, crops, y, judge=self.mc.teacher.model,
            mode=util.grad_norm, batch_size=util.batch_size,
        )  # fmt: skip
        return {name: _scattered(value, keep) for name, value in values.items()}

    def keep(self, c: int, rows: torch.Tensor, pool: ScoredPatches, norms, count: int):
        """The rows of class ``c`` that the utility rule keeps, in its order."""
        crops = ClassCrops(
            score=norms[rows],
            correct=pool.pred[rows] == c,
            source=pool.source[rows],
            generator=generator("utility-rule", self.mc.cfg.seed, c),
            embed=lambda: self._embedded(pool, rows),
        )
        with self.mc.timer.stage(RULE_STAGE):
            return rows[keep_by_rule(self.mc.cfg.utility, crops, count)]

    def _embedded(self, pool: ScoredPatches, rows: torch.Tensor):
        # the cluster rule's features cost a forward per crop: timed and counted as a stage
        self.mc.timer.count(RULE_STAGE, len(rows))
        return last_layer_pieces(
            self.utility_model.model, self.crops, pool, rows, self.mc.crop_batch
        )


def store_keys(mc: MethodContext, plan: CropPlan, scorer: CropScorer) -> dict[str, dict]:
    """What keys each cached score store (beside the maps', ``methods.maps.map_key``): every
    setting that changes a stored value, and none that does not."""
    inf, util = mc.cfg.informativeness, mc.cfg.utility
    base = dict(
        seed=mc.cfg.seed,
        grad_norm=util.grad_norm,
        crop_input=util.crop_input,
        utility_teacher=scorer.utility_model.weights_sha256,
    )
    utility = dict(
        # no map moves a whole-image crop, so the map's settings do not key its scores
        {} if plan.kernel == inf.grid else map_key(inf, plan.kernel),
        **({"rded_min_scale": mc.cfg.rded.min_scale} if plan.source == "rded" else {}),
        **base,
        pool_kernel=plan.kernel,
        num_crops=plan.k,
        alpha=inf.alpha,
        noise_std=inf.noise_std,
        dedupe=inf.dedupe,
    )
    return {"shortlist": base, "utility": utility}


def shortlist(mc, plan, scorer, candidates, keys) -> torch.Tensor:
    """Where configured, a cheap first pass: the same rule on whole images keeps the
    candidates worth a map (one forward and one gradient each)."""
    share = mc.cfg.informativeness.shortlist
    if share is None or not plan.maps:
        return candidates
    whole = torch.tensor([list(full_box(mc.train.info))])

    def chunk(sl: slice) -> dict:
        n = len(candidates[sl])
        return scorer.score(candidates[sl], whole.expand(n, 1, 4), torch.ones((n, 1), dtype=bool))

    first = chunked_scores(
        mc, mc.store("shortlist", **keys["shortlist"]), candidates, chunk, desc="shortlist",
        forwards_per_item=1, fields=("grad_norm", "prob", "pred"),
    )  # fmt: skip
    images = _scored_pool(candidates, mc.train.targets, whole.expand(len(candidates), 1, 4), first)
    count = math.ceil(share * plan.need)
    norms = first["grad_norm"].flatten()
    kept = [
        scorer.keep(c, torch.nonzero(images.label == c).flatten(), images, norms, count)
        for c in range(mc.train.info.num_classes)
    ]
    return candidates[torch.cat(kept).sort().values]


def informativeness(mc: MethodContext, plan: CropPlan, candidates: torch.Tensor) -> torch.Tensor:
    """Each candidate's ``grid x grid`` attribution map (zeros where no map is drawn)."""
    grid = mc.cfg.informativeness.grid
    if not plan.maps:
        return torch.zeros((len(candidates), grid, grid))
    return attribution_maps(mc, candidates, plan.kernel)


def window_boxes(mc, plan, idx, maps, sigma) -> torch.Tensor:
    """``k`` windows per candidate at its pooled map's argmax, all but the last with noise
    (the whole image, wherever the window is the image)."""
    size = mc.train.info.image_size
    return informative_crops(
        maps, sigma, kernel=plan.kernel, num_crops=plan.k,
        generators=[generator("crops", mc.cfg.seed, int(i)) for i in idx],
        height=size, width=size,
    )  # fmt: skip


def rded_boxes(mc, plan, idx, maps, sigma) -> torch.Tensor:
    """RDED's ``k`` random squares per candidate (its min scale), no map."""
    size = mc.train.info.image_size
    return rded_crops(idx.tolist(), size, plan.k, mc.cfg.rded.min_scale, mc.cfg.seed)


CROP_SOURCES = {"whole": window_boxes, "map": window_boxes, "rded": rded_boxes}


def utility(mc, plan, scorer, candidates, maps, keys) -> dict[str, torch.Tensor]:
    """Every candidate's crops from its source, each distinct one scored (cached in chunks)."""
    inf = mc.cfg.informativeness
    sigma = noise_sigma(pool_map(maps, plan.kernel), inf.alpha, inf.noise_std)
    boxes_of = CROP_SOURCES[plan.source]

    def chunk(sl: slice) -> dict[str, torch.Tensor]:
        idx = candidates[sl]
        boxes = boxes_of(mc, plan, idx, maps[sl], sigma[sl])
        keep = unique_crops(boxes) if inf.dedupe else torch.ones(boxes.shape[:2], dtype=bool)
        return {"boxes": boxes, **scorer.score(idx, boxes, keep)}

    store = mc.store("utility", **keys["utility"], **pool_key(candidates, inf))
    return chunked_scores(
        mc, store, candidates, chunk, desc="utility", forwards_per_item=_distinct_scored,
        fields=("boxes", "grad_norm", "prob", "pred"),
    )  # fmt: skip


def _distinct_scored(tensors: dict[str, torch.Tensor]) -> int:
    """Crops scored in a chunk: one forward (and backward) each distinct crop, NaN elsewhere
    (a whole-image window's five crops are one crop)."""
    return int((~torch.isnan(tensors["grad_norm"])).sum())


def _distinct_crops(mc, plan, candidates, crops):
    """(the pool of distinct scored crops, every crop's norm, the pool's rows in ``crops``)."""
    labels, info = mc.train.targets, mc.train.info
    norms = crops["grad_norm"]
    valid = ~torch.isnan(norms)
    check_finite(norms[valid], "gradient norms", mc.teacher)
    check_supply(
        [int((valid & (labels[candidates] == c)[:, None]).sum()) for c in range(info.num_classes)],
        plan.need,
        info,
        "distinct crops",
        "lower ipc or raise candidates_per_class",
    )
    flat = torch.nonzero(valid.flatten()).flatten()  # the distinct crops, one pool row each
    pool = _scored_pool(candidates, labels, crops["boxes"], crops).take(flat)
    return pool, norms.flatten()[flat], flat


def keep_for_class(mc, plan, scorer, pool, norms, c: int) -> torch.Tensor:
    """The utility rule's ``need`` crops of class ``c``, refused in one line if too few."""
    picked = scorer.keep(c, torch.nonzero(pool.label == c).flatten(), pool, norms, plan.need)
    if len(picked) < plan.need:
        raise UserError(
            f"class {mc.train.info.class_names[c]!r}: the {mc.cfg.utility.select!r} rule found "
            f"only {len(picked)} crops of distinct images but {plan.need} are needed; lower "
            "ipc or raise candidates_per_class"
        )
    return picked


def _selection(mc, plan, candidates, maps, crops, pool, flat, ranked, probe) -> Selection:
    """The kept patches with their provenance, and the scores a report reads."""
    inf, labels, info = mc.cfg.informativeness, mc.train.targets, mc.train.info
    norms = crops["grad_norm"]

    def patch(i: int) -> Patch:
        row = int(flat[i])
        provenance = {
            "crop": row % plan.k,
            "noise_free": bool(pool.noise_free[i]),
            "grad_norm": float(norms.flatten()[row]),
        }
        if plan.maps:
            provenance[f"{inf.attribution}_map"] = maps[row // plan.k].tolist()
        return Patch(source=int(pool.source[i]), box=tuple(pool.box[i].tolist()),
                     provenance=provenance)  # fmt: skip

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
    pooled = pool_map(maps, plan.kernel)
    scores = {
        "candidates": candidates,
        "candidate_labels": labels[candidates],
        **({inf.attribution: maps, "pooled": pooled.float()} if plan.maps else {}),
        "boxes": crops["boxes"],
        "grad_norm": norms,
        "teacher_prob": crops["prob"],
        "teacher_pred": crops["pred"],
        "selected": selected.view_as(norms),
        "sample": sample,
        "sample_images": mc.train.get_batch(candidates[sample]),
    }
    return Selection(
        [[patch(i) for i in picked.tolist()] for picked in ranked],
        mc.factor,
        scores,
        stitch=mc.cfg.stitch or "consecutive",
        selected_scored=pool.take(torch.cat(ranked)),
        pool_scored=pool,
        quarter_probe=probe,
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
