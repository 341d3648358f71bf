"""RDED (Sun et al., CVPR 2024) selection, as in its code (anchors.md §1.3-1.4).

Each candidate gives ``num_crops`` random square crops (area scale in (min_scale, 1)); each crop,
scaled to the patch size ``size / factor`` and zero-padded back to the input size (resized to it
when factor is 1), is scored by the teacher's cross-entropy on the true class. A candidate keeps
its lowest-loss crop; a class keeps its ``factor^2 x IPC`` lowest-loss candidates, stitched as
RDED's ``mix_images`` does: slot j of image i from the j-th block of ``IPC`` ranks
(``stitch="blocks"``).

Details we could not pin down from RDED's code and chose: the crop box is drawn with our seeded
generator (RDED's synthesis is unseeded); the padding value is zero at the network input (the
dataset mean colour), as RDED pads normalised tensors; ties go to the lower index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infoutil.methods.common import (
    MethodContext,
    Patch,
    Selection,
    candidate_pool,
    check_finite,
    check_supply,
    chunked_scores,
    resize_to,
)
from infoutil.selection.crops import crop_and_resize, rded_crops
from infoutil.selection.scored import ScoredPatches, true_class_prob
from infoutil.selection.utility import top_k_per_class


def select(mc: MethodContext) -> Selection:
    cfg, info, model = mc.cfg, mc.train.info, mc.teacher.model
    train, size, f = mc.train, mc.train.info.image_size, mc.factor
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)
    k = cfg.rded.num_crops
    patch = max(1, size // f)
    fill = model.mean.reshape(-1)

    @torch.inference_mode()
    def score_chunk(sl: slice) -> dict[str, torch.Tensor]:
        idx = candidates[sl]
        boxes = rded_crops(idx.tolist(), size, k, cfg.rded.min_scale, cfg.seed)
        images = mc.images(idx).repeat_interleave(k, 0)
        crops = crop_and_resize(images, boxes.flatten(0, 1), (patch, patch), "resize")
        if f > 1:
            crops = crop_and_resize(
                crops, torch.tensor([[0, 0, patch, patch]] * len(crops)), (size, size), "pad", fill
            )
        else:
            crops = resize_to(crops, (size, size))
        y = train.targets[idx].repeat_interleave(k).to(crops.device)
        logits = torch.cat(
            [model(crops[s : s + mc.forward_batch]) for s in range(0, len(crops), mc.forward_batch)]
        ).float()
        losses = F.cross_entropy(logits, y, reduction="none").to(torch.float64)
        prob = true_class_prob(logits, y)
        shape = (len(idx), k)
        return {
            "boxes": boxes,
            "loss": losses.view(shape).cpu(),
            "prob": prob.view(shape).cpu(),
            "pred": logits.argmax(1).view(shape).cpu(),
        }

    need = f * f * cfg.ipc
    cand_class = train.targets[candidates]
    check_supply(  # before any scoring
        [int((cand_class == c).sum()) for c in range(info.num_classes)],
        need,
        info,
        "candidates",
        "lower ipc or raise candidates_per_class",
    )
    scored = chunked_scores(
        mc,
        mc.store("rded", seed=cfg.seed, num_crops=k, factor=f, min_scale=cfg.rded.min_scale),
        candidates,
        score_chunk,
        desc="rded scoring",
        forwards_per_item=k,
        fields=("boxes", "loss", "prob", "pred"),
    )
    boxes, losses = scored["boxes"], scored["loss"]
    check_finite(losses, "losses", mc.teacher)
    best = losses.argmin(1)  # the first minimum: deterministic
    best_loss = losses.gather(1, best[:, None])[:, 0]
    ranked = top_k_per_class(best_loss, cand_class, need, info.num_classes, descending=False)
    patches = [
        [
            Patch(
                int(candidates[i]),
                tuple(boxes[i, best[i]].tolist()),
                {"crop": int(best[i]), "loss": float(best_loss[i])},
            )
            for i in picked.tolist()
        ]
        for picked in ranked
    ]
    selected = torch.zeros(len(candidates), dtype=torch.bool)
    for picked in ranked:
        selected[picked] = True
    scores = {
        "candidates": candidates,
        "candidate_labels": cand_class,
        "boxes": boxes,
        "loss": losses,
        "teacher_prob": scored["prob"],
        "teacher_pred": scored["pred"],
        "selected": selected,
    }
    # every crop as the teacher scored it (scaled to the patch size, then padded or resized)
    pool = ScoredPatches(
        candidates.repeat_interleave(k),
        cand_class.repeat_interleave(k),
        boxes.flatten(0, 1),
        scored["prob"].flatten(),
        scored["pred"].flatten(),
    )
    chosen = torch.cat([i * k + best[i] for i in ranked])
    return Selection(
        patches,
        f,
        scores,
        stitch=cfg.stitch or "blocks",
        selected_scored=pool.take(chosen),
        pool_scored=pool,
    )
