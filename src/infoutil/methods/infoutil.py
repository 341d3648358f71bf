"""InfoUtil (Wang et al., ICLR 2026, Algorithm 1).

1. Informativeness: an attribution map of each candidate's ``grid x grid`` patches under the
   teacher (the Shapley values; Grad-CAM or a random map as controls); ``num_crops`` crops at
   the argmax of the pooled map, all but the last with noise. (The ``rded`` control draws no
   map: its crops are RDED's random squares of the candidate.)
2. Utility: the teacher's hard-label gradient norm on each crop; a rule keeps ``k x IPC`` crops
   per class (the paper: the highest norms; ``selection.utility.UTILITY_RULES``).
Assembly and soft labels are common to all methods (``methods.common``).
"""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from infoutil.attribution.amortized import (
    PatchExplainer,
    explained_maps,
    fit_explainer,
    kernel_coalitions,
    training_values,
)
from infoutil.attribution.gradcam import gradcam_maps
from infoutil.attribution.patch import compiled_teacher, patch_shapley, patch_shapley_early_stop
from infoutil.data.base import index_sha256
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
from infoutil.runtime import derive_seed, generator
from infoutil.selection.crops import (
    crop_and_resize,
    informative_crops,
    noise_sigma,
    pool_map,
    rded_crops,
    settled_crops,
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


def map_key(inf, kernel: int) -> dict:
    """Everything an attribution map depends on besides the pool, the seed and the teacher
    (``kernel``: the crop window, which decides where an early-stopped map stops)."""
    if inf.attribution == "fastshap":
        return dict(
            attribution="fastshap", **_game(inf), **_engine(inf), **inf.fastshap.model_dump()
        )
    if inf.attribution != "shapley":
        return {"attribution": inf.attribution, "grid": inf.grid}
    key = dict(**_game(inf), **_engine(inf), estimator=inf.estimator, budget=inf.evaluations)
    if inf.stops_early:  # where a map stops depends on how the crops are drawn too
        key.update(
            early_stop_z=inf.early_stop_z,
            early_stop_from=inf.early_stop_from,
            stop_kernel=kernel,
            num_crops=inf.num_crops,
            alpha=inf.alpha,
        )
    return key


def _game(inf) -> dict:
    """The patch game's options (``attribution.patch.coalition_values``)."""
    return dict(grid=inf.grid, baseline=inf.baseline, target=inf.target, precision=inf.precision)


def _engine(inf) -> dict:
    """How the masked forwards run, where it changes their bits: named only when compiled,
    so that eager maps keep their cache keys."""
    return {"compile": True} if inf.compile else {}


def masked_teacher(mc: MethodContext, candidates: torch.Tensor):
    """A function giving the teacher the masked forwards go through: compiled where the config
    asks, on two candidates at the first call, so that a run whose maps are cached compiles
    nothing."""
    inf, built = mc.cfg.informativeness, []

    def teacher() -> torch.nn.Module:
        if not built:
            model = mc.teacher.model
            if inf.compile:
                model = compiled_teacher(model, mc.images(candidates[:2]), inf.precision)
            built.append(model)
        return built[0]

    return teacher


def attribution_maps(mc: MethodContext, candidates: torch.Tensor, kernel: int) -> torch.Tensor:
    """``[N, grid, grid]``: where each candidate's class evidence lies, by the chosen method
    (``kernel``: the crop window, which an early-stopped map needs to know)."""
    cfg, inf, model, labels = mc.cfg, mc.cfg.informativeness, mc.teacher.model, mc.train.targets
    if inf.attribution == "fastshap":
        return amortized_maps(mc, candidates)
    if inf.attribution == "random":  # the control: a seeded random position per candidate
        return torch.stack(
            [
                torch.rand(inf.grid, inf.grid, generator=generator("random-map", cfg.seed, int(i)))
                for i in candidates.tolist()
            ]
        )
    if inf.attribution == "gradcam":
        per = 1

        def compute(idx):
            return {"gradcam": gradcam_maps(model, mc.images(idx), labels[idx], inf.grid)}
    else:
        per = "forwards" if inf.stops_early else inf.evaluations
        game = dict(**_game(inf), batch_size=mc.forward_batch)
        masked = masked_teacher(mc, candidates)

        def compute(idx):
            seeds = torch.tensor([derive_seed("shapley", cfg.seed, int(i)) for i in idx])
            images, targets = mc.images(idx), labels[idx]
            if not inf.stops_early:
                maps = patch_shapley(
                    masked(),
                    images,
                    targets,
                    estimator=inf.estimator,
                    budget=inf.evaluations,
                    seed=seeds,
                    **game,
                )
                return {"shapley": maps}

            def settled(rows, maps, error_cov):
                return settled_crops(
                    maps,
                    error_cov,
                    kernel=kernel,
                    num_crops=inf.num_crops,
                    alpha=inf.alpha,
                    generators=[generator("crops", cfg.seed, int(idx[r])) for r in rows],
                    z=inf.early_stop_z,
                )

            maps, forwards = patch_shapley_early_stop(
                masked(),
                images,
                targets,
                seeds,
                settled,
                budget=inf.budget,
                first_budget=inf.early_stop_from,
                **game,
            )
            return {"shapley": maps, "forwards": forwards}

    name = inf.attribution
    maps = chunked_scores(
        mc,
        mc.store(name, seed=cfg.seed, **map_key(inf, kernel), **_pool_key(candidates, inf)),
        candidates,
        lambda sl: compute(candidates[sl]),
        desc=name,
        forwards_per_item=per,
    )[name]
    check_finite(maps, f"{name} maps", mc.teacher)
    return maps


def amortized_maps(mc: MethodContext, candidates: torch.Tensor) -> torch.Tensor:
    """``[N, grid, grid]`` FastSHAP maps: an explainer trained on the masked evaluations of a
    seeded sample of each class's candidates, then three forwards per candidate (``v`` of
    the full and the empty coalition, and the explainer's)."""
    cfg, inf, labels = mc.cfg, mc.cfg.informativeness, mc.train.targets
    am, n = inf.fastshap, inf.grid**2
    game = dict(**_game(inf), batch_size=mc.forward_batch)
    masked = masked_teacher(mc, candidates)
    key = dict(seed=cfg.seed, **map_key(inf, 0), **_pool_key(candidates, inf))
    fit_ids = []
    for c in range(mc.train.info.num_classes):
        rows = candidates[labels[candidates] == c]
        order = torch.randperm(len(rows), generator=generator("fastshap-fit", cfg.seed, c))
        fit_ids.append(rows[order[: am.images_per_class]])
    fit_ids = torch.cat(fit_ids).sort().values

    def evaluate(idx):
        drawn = [
            kernel_coalitions(n, am.coalitions, generator("fastshap", cfg.seed, int(i)))
            for i in idx
        ]
        rows, values = training_values(masked(), mc.images(idx), labels[idx], drawn, **game)
        return {"coalitions": rows, "values": values}

    fitted = chunked_scores(
        mc,
        mc.store("fastshap-evaluations", **key),
        fit_ids,
        lambda sl: evaluate(fit_ids[sl]),
        desc="fastshap evaluations",
        forwards_per_item=am.coalitions + 2,
    )
    explainer = _trained_explainer(mc, mc.store("fastshap-explainer", **key), fit_ids, fitted)

    def compute(idx):
        maps = explained_maps(explainer, masked(), mc.images(idx), labels[idx], **game)
        return {"fastshap": maps}

    maps = chunked_scores(
        mc,
        mc.store("fastshap", **key),
        candidates,
        lambda sl: compute(candidates[sl]),
        desc="fastshap",
        forwards_per_item=3,
    )["fastshap"]
    check_finite(maps, "fastshap maps", mc.teacher)
    return maps


def _trained_explainer(mc: MethodContext, store, fit_ids, fitted) -> PatchExplainer:
    """The run's explainer: loaded where a previous run saved it, else trained and saved."""
    inf, info = mc.cfg.informativeness, mc.train.info
    path = store.dir / "explainer.safetensors"
    shape = (info.channels, info.image_size, info.image_size)
    if path.is_file():
        explainer = PatchExplainer(mc.teacher.model, info.num_classes, inf.grid, shape)
        explainer.load_state_dict(load_file(str(path), device=str(mc.device)))
        return explainer.eval()
    values = fitted["values"].double()
    with mc.timer.stage("fastshap explainer"):
        explainer = fit_explainer(
            mc.teacher.model,
            lambda rows: mc.images(fit_ids[rows]),  # a batch at a time: any pool size fits
            mc.train.targets[fit_ids],
            fitted["coalitions"][:, 2:],
            values[:, 2:],
            values[:, 0],
            values[:, 1],
            num_classes=info.num_classes,
            grid=inf.grid,
            epochs=inf.fastshap.epochs,
            lr=inf.fastshap.lr,
            seed=derive_seed("fastshap-explainer", mc.cfg.seed),
            progress_bar=mc.progress,
        )
    store.save_tensors(path.name, explainer.state_dict())
    return explainer


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
        **_pool_key(candidates, inf),
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


def _pool_key(candidates: torch.Tensor, inf) -> dict:
    """A shortlisted pool is its own store (its chunks hold other candidates)."""
    if inf.shortlist is None:
        return {}
    return {"pool": index_sha256(candidates)[:16]}
