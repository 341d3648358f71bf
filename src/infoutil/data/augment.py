"""Batched image augmentations on float tensors [B, C, H, W], driven by an explicit generator.

Every random choice comes from the ``torch.Generator`` passed in, so a run is reproducible from
its seed, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def random_crop_flip(x: torch.Tensor, pad: int, g: torch.Generator, flip: bool = True):
    """Zero-pad by ``pad`` and crop back at a random offset per image; random horizontal flip."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        rows = oy[:, None] + torch.arange(h)[None, :]  # [B, H]
        cols = ox[:, None] + torch.arange(w)[None, :]  # [B, W]
        bidx = torch.arange(b)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        x = horizontal_flip(x, g)
    return x.contiguous()


def horizontal_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=g) < p
    if mask.any():
        x = x.clone()
        x[mask] = x[mask].flip(-1)
    return x


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision-style RandomResizedCrop to the input size, one box per image."""
    b, _, h, w = x.shape
    if scale[0] >= 1.0:
        return x  # scale (1, 1) is the whole image, as in torchvision
    out = torch.empty_like(x)
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for i in range(b):
        box = None
        for _ in range(10):
            target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g)))
            ar = math.exp(log_r[0] + (log_r[1] - log_r[0]) * float(torch.rand((), generator=g)))
            cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=g))
                left = int(torch.randint(0, w - cw + 1, (), generator=g))
                box = (top, left, ch, cw)
                break
        if box is None:  # fall back to the whole image
            box = (0, 0, h, w)
        top, left, ch, cw = box
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = F.interpolate(
            crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return out


def shuffle_patches(x: torch.Tensor, factor: int, g: torch.Generator) -> torch.Tensor:
    """Permute the ``factor x factor`` patches of each image (RDED's ShufflePatches).

    RDED permutes patch columns, then rows; we draw a full 2-D permutation of the patches,
    which also covers odd sizes (the remainder pixels stay with the last patch).
    """
    if factor <= 1:
        return x
    b, c, h, w = x.shape
    ys = [round(i * h / factor) for i in range(factor + 1)]
    xs = [round(j * w / factor) for j in range(factor + 1)]
    if (
        len({ys[i + 1] - ys[i] for i in range(factor)}) > 1
        or len({xs[j + 1] - xs[j] for j in range(factor)}) > 1
    ):
        return x  # unequal patches cannot be swapped in place
    ph, pw = ys[1], xs[1]
    patches = x.reshape(b, c, factor, ph, factor, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, factor * factor, c, ph, pw)
    perm = torch.stack([torch.randperm(factor * factor, generator=g) for _ in range(b)])
    patches = patches[torch.arange(b)[:, None], perm]
    patches = patches.reshape(b, factor, factor, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, h, w).contiguous()


def cutmix(
    x: torch.Tensor, g: torch.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix as RDED applies it: one lambda, one box and one permutation per batch.

    Returns the mixed batch, the permutation, and the area fraction kept from the original.
    """
    b, _, h, w = x.shape
    lam = _beta(alpha, g)
    perm = torch.randperm(b, generator=g)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (), generator=g))
    cx = int(torch.randint(0, w, (), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, perm, kept


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) drawn from the torch generator (Beta(1, 1) is uniform)."""
    if alpha == 1.0:
        return float(torch.rand((), generator=g))
    seed = int(torch.randint(0, 2**62, (), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
