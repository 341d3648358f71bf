"""The informativeness stage as a method runs it: each candidate's attribution map (Shapley,
FastSHAP, Grad-CAM or a seeded random control), computed in chunks, cached under a key of
everything it depends on, and resumed after a kill. The games and estimators themselves live in
``infoutil.attribution``; this module drives them over a pool with a method's context.
"""

from __future__ import annotations

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
from infoutil.methods.common import MethodContext, check_finite, chunked_scores
from infoutil.runtime import derive_seed, generator
from infoutil.selection.crops import settled_crops


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
        per = _counted_forwards if inf.stops_early else inf.evaluations
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
        mc.store(name, seed=cfg.seed, **map_key(inf, kernel), **pool_key(candidates, inf)),
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
    key = dict(seed=cfg.seed, **map_key(inf, 0), **pool_key(candidates, inf))
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


def pool_key(candidates: torch.Tensor, inf) -> dict:
    """A shortlisted pool is its own store (its chunks hold other candidates)."""
    if inf.shortlist is None:
        return {}
    return {"pool": index_sha256(candidates)[:16]}


def _counted_forwards(tensors: dict[str, torch.Tensor]) -> int:
    """An early-stopped chunk's forwards: each map records its own."""
    return int(tensors["forwards"].sum())
