"""Selection diagnostics: what the judge teacher thought of the patches a method kept.

Every method scores patches with the teacher (a crop, a padded crop, a whole image); the
teacher's true-class probability and predicted class on each patch, exactly as it was scored,
explain a distilled set's accuracy before any student is trained. The same figures for the
whole candidate pool are the contrast: a method that keeps patches the teacher gets wrong
(the paper's highest-gradient-norm rule does at low resolution) shows it here.
"""

from __future__ import annotations

import torch

from infoutil.data.imagenet import display_name
from infoutil.selection.scored import ScoredPatches

# below this share of teacher-correct selected patches the distill warns
WARN_BELOW = 0.5


def _figures(p: ScoredPatches, class_names: tuple[str, ...], image_area: int, sparse: bool) -> dict:
    n = len(p.label)
    if n == 0:
        return {"patches": 0}
    area = (p.box[:, 2] * p.box[:, 3]).to(torch.float64) / image_area
    counts = torch.bincount(p.pred, minlength=len(class_names))
    out = {
        "patches": n,
        "teacher_top1": round(float((p.pred == p.label).double().mean()), 4),
        "mean_true_class_prob": round(float(p.prob.mean()), 4),
        # sparse per class (the classes predicted at all, by name): a full vector per class
        # is classes squared, 40 MB of JSON at ImageNet-1K's 1,000
        "predicted": (
            {class_names[k]: int(counts[k]) for k in torch.nonzero(counts).flatten().tolist()}
            if sparse
            else counts.tolist()
        ),
        "distinct_sources": int(torch.unique(p.source).numel()),
        "mean_area": round(float(area.mean()), 4),
    }
    if p.noise_free is not None:
        out["noise_free_share"] = round(float(p.noise_free.double().mean()), 4)
    return out


def summarize(p: ScoredPatches, class_names: tuple[str, ...], image_size: int) -> dict:
    """Overall figures (``predicted``: counts for every class, in class order) and the same per
    class, keyed by class name (``predicted``: the classes predicted at all, by name)."""
    area = image_size * image_size
    order = torch.argsort(p.label, stable=True)  # one pass over the patches, not one a class
    bounds = torch.searchsorted(p.label[order], torch.arange(len(class_names) + 1)).tolist()
    return {
        "overall": _figures(p, class_names, area, sparse=False),
        "per_class": {
            name: _figures(p.take(order[bounds[k] : bounds[k + 1]]), class_names, area, True)
            for k, name in enumerate(class_names)
        },
    }


def selection_diagnostics(
    selected: ScoredPatches,
    pool: ScoredPatches,
    class_names: tuple[str, ...],
    image_size: int,
    quarter_probe: dict | None = None,
) -> dict:
    """The record stored in the manifest and ``run_stats.json`` (with the quarter probe,
    ``selection.probe``, where the method ran it)."""
    return {
        "judge": "the scoring teacher, on each patch as it was scored",
        "class_names": list(class_names),
        "selected": summarize(selected, class_names, image_size),
        "pool": summarize(pool, class_names, image_size),
        **({"quarter_probe": quarter_probe} if quarter_probe is not None else {}),
    }


def most_predicted(d: dict) -> tuple[str, float]:
    """The class the teacher predicts most often for the selected patches, and its share."""
    s, names = d["selected"]["overall"], d["class_names"]
    top = max(range(len(names)), key=lambda k: s["predicted"][k])
    return names[top], s["predicted"][top] / max(s["patches"], 1)


def summary_line(d: dict) -> str:
    """One line: the selected patches against the pool."""
    s, p = d["selected"]["overall"], d["pool"]["overall"]
    top, share = most_predicted(d)
    line = (
        f"teacher on selected patches: top-1 {100 * s['teacher_top1']:.1f}% "
        f"(pool {100 * p['teacher_top1']:.1f}%), true-class prob {s['mean_true_class_prob']:.2f} "
        f"(pool {p['mean_true_class_prob']:.2f}), area {100 * s['mean_area']:.0f}% of the image, "
        f"{s['distinct_sources']} sources for {s['patches']} patches, "
        f"most predicted {display_name(top)!r} ({100 * share:.0f}%)"
    )
    if "noise_free_share" in s:
        line += f", noise-free {100 * s['noise_free_share']:.0f}%"
    q = d.get("quarter_probe")
    if q and q["images"]:
        line += (
            f"; it reads {100 * q['quarter_top1']:.1f}% of random quarters of {q['images']} "
            f"candidates (whole: {100 * q['whole_top1']:.1f}%)"
        )
    return line


def warning(d: dict, teacher_accuracy: float | None = None, rule: str | None = None) -> str | None:
    """A warning when the teacher gets most selected patches wrong, naming the likely cause
    from the diagnostics: a weak teacher (it reads the pool no better), crops smaller than
    the image, or a rule that keeps hard images; None when most are right."""
    s, p = d["selected"]["overall"], d["pool"]["overall"]
    if s.get("patches", 0) == 0 or s["teacher_top1"] >= WARN_BELOW:
        return None
    head = (
        f"the teacher classifies only {100 * s['teacher_top1']:.0f}% of the selected patches "
        f"correctly (pool: {100 * p['teacher_top1']:.0f}%)"
    )
    if p["teacher_top1"] < WARN_BELOW and s["teacher_top1"] >= p["teacher_top1"] - 0.1:
        test = (
            "" if teacher_accuracy is None else f" ({100 * teacher_accuracy:.1f}% on its test set)"
        )
        cause = (
            f"the teacher itself reads only {100 * p['teacher_top1']:.0f}% of the candidate "
            f"pool{test}, so the cause is the teacher, not the selection: a stronger teacher "
            "(more epochs, or a published one) is the fix"
        )
    elif s["mean_area"] < 0.99:
        cause = (
            f"the patches cover {100 * s['mean_area']:.0f}% of the image and the teacher reads "
            "them worse than the pool: the crop is likely too small for the resolution "
            "(--factor 1 keeps whole images)"
        )
    else:
        named = f"the {rule!r} rule" if rule else "the selection rule"
        cause = f"{named} keeps whole images the teacher finds hard"
    return f"{head}; {cause}; students trained on such a set tend to do badly"
