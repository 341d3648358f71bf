"""The quarter probe: how well a teacher reads a native quarter of a real image.

At factor 2 every kept patch is a quarter of a source image (half its height and width), and
the patch can only carry what the teacher reads in it. On ImageWoof at 128 px our ConvNet-5
teacher read whole images of the pool 58% of the time and random quarters 21%, and no placement
of a quarter (the Shapley map's included) came near whole images (docs/method.md, *At high
resolution*). The probe measures that gap before any map is computed: the teacher's top-1 on
one random native quarter of each of a sample of candidates, beside its top-1 on the same
images whole. Each quarter is fitted to the input as the utility stage fits a crop
(``utility.crop_input``), so the probe sees what the rule would score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from infoutil.runtime import generator
from infoutil.selection.crops import crop_and_resize

PROBE_IMAGES = 500  # candidates the probe reads: a top-1 to about +-2 points


def quarter_boxes(indices: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """One native quarter window ``[N, 4]`` (top, left, side, side) per image, uniformly placed
    and drawn from the seed and the image's own index (the same image, the same window)."""
    side = size // 2
    boxes = []
    for i in indices.tolist():
        top, left = torch.randint(0, size - side + 1, (2,), generator=generator("quarter", seed, i))
        boxes.append((int(top), int(left), side, side))
    return torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)


def probe_sample(labels: torch.Tensor, num_classes: int, total: int) -> torch.Tensor:
    """Positions into ``labels`` (a candidate pool, already a random draw): the first
    ``ceil(total / num_classes)`` of each class, so every class counts alike."""
    per_class = -(-total // num_classes)
    return (
        torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])
        .sort()
        .values
    )


@torch.no_grad()
def quarter_probe(
    model: torch.nn.Module,
    images: Callable[[torch.Tensor], torch.Tensor],
    candidates: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    total: int = PROBE_IMAGES,
    crop_input: str = "resize",
    fill: torch.Tensor | None = None,
    batch_size: int = 256,
) -> dict:
    """The teacher's top-1 on one random quarter of each of about ``total`` of the
    ``candidates`` (labelled ``labels``; ``probe_sample``) and on the same images whole;
    ``images(idx)`` gives floats ``[B, C, S, S]`` on the model's device."""
    picked = probe_sample(labels, num_classes, total)
    indices, labels = candidates[picked], labels[picked]
    quarter_right = whole_right = 0
    for start in range(0, len(indices), batch_size):
        idx, y = indices[start : start + batch_size], labels[start : start + batch_size]
        x = images(idx)
        y = y.to(x.device)
        size = x.shape[-1]
        quarters = crop_and_resize(
            x, quarter_boxes(idx, size, seed), (size, size), crop_input, fill
        )
        whole_right += int((model(x).argmax(1) == y).sum())
        quarter_right += int((model(quarters).argmax(1) == y).sum())
    n = len(indices)
    return {
        "images": n,
        "quarter_top1": round(quarter_right / n, 4) if n else None,
        "whole_top1": round(whole_right / n, 4) if n else None,
        "judge": "the scoring teacher, on one random native quarter of each sampled candidate",
    }
