"""Informativeness crops (paper §2.2-2.3): where in a candidate the class information lies.

The Shapley map of a ``grid x grid`` patch game is average-pooled with a ``kernel x kernel``
window at stride 1; each pooled cell is a window of ``kernel`` patches per side (for a 4x4 grid
and kernel 2: a 3x3 map of half-height, half-width windows, each a quarter of the image).
A candidate yields ``num_crops`` crops at the argmax of the pooled map; all but the last add
Gaussian noise to the map first (sigma = alpha x std of the pooled map), the last is noise-free.
Ties go to the first cell in row-major order, so equal maps always give the same crop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infoutil.attribution.patch import patch_bounds
from infoutil.runtime import generator


def pool_map(shapley_maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """``[B, g, g]`` -> ``[B, g-k+1, g-k+1]``: mean over each ``k x k`` window, stride 1."""
    return F.avg_pool2d(shapley_maps.unsqueeze(1).to(torch.float64), kernel, stride=1).squeeze(1)


def noise_sigma(pooled: torch.Tensor, alpha: float, mode: str) -> torch.Tensor:
    """sigma per candidate: alpha x std of its own pooled map, or of all pooled maps."""
    flat = pooled.flatten(1)
    if mode == "per_image":
        std = flat.std(dim=1, unbiased=False)
    elif mode == "global":
        std = flat.std(unbiased=False).expand(flat.shape[0])
    else:
        raise ValueError(f"unknown noise_std {mode!r}; choose 'per_image' or 'global'")
    return alpha * std


def crop_cells(
    pooled: torch.Tensor, sigma: torch.Tensor, num_crops: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """Pooled cells ``[B, num_crops]`` (row-major index): noisy argmaxes, then the clean one."""
    return noisy_window_scores(pooled, sigma, num_crops, generators).argmax(2)  # the first maximum


def noisy_window_scores(
    pooled: torch.Tensor, sigma: torch.Tensor, num_crops: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """``[B, num_crops, cells]``: the pooled map each crop's argmax is taken over (noisy for
    all but the last; one seeded noise draw per candidate)."""
    flat = pooled.flatten(1).to(torch.float64)
    out = flat[:, None, :].repeat(1, num_crops, 1)
    for i in range(flat.shape[0]):
        noise = torch.randn(
            (num_crops - 1, flat.shape[1]), generator=generators[i], dtype=torch.float64
        )
        out[i, : num_crops - 1] += sigma[i] * noise
    return out


def window_matrix(grid: int, kernel: int) -> torch.Tensor:
    """``[cells, grid^2]``: each pooled cell as the mean of its window's patches."""
    maps = torch.eye(grid * grid, dtype=torch.float64).view(-1, grid, grid)
    return pool_map(maps, kernel).flatten(1).T.contiguous()


def settled_crops(
    maps: torch.Tensor,
    error_cov: torch.Tensor,
    *,
    kernel: int,
    num_crops: int,
    alpha: float,
    generators: list[torch.Generator],
    z: float,
) -> torch.Tensor:
    """``[B]`` bool: no crop of the candidate can move within ``z`` standard errors.

    ``maps`` ``[B, g, g]`` are estimates and ``error_cov`` ``[B, g^2, g^2]`` their error
    covariance. Each crop's winning cell must lead every other cell by more than ``z`` times
    the standard error of the two cells' difference. The noise scale is taken from the
    estimate (per-image noise only), so its own error is not part of the bound.
    """
    grid = maps.shape[-1]
    A = window_matrix(grid, kernel)  # [c, n]
    pooled = maps.flatten(1).to(torch.float64) @ A.T  # [B, c]
    cov = A @ error_cov.to(torch.float64) @ A.T  # [B, c, c]
    sigma = noise_sigma(pooled, alpha, "per_image")
    scores = noisy_window_scores(pooled, sigma, num_crops, generators)  # [B, K, c]
    winner = scores.argmax(2)  # [B, K]
    lead = scores.gather(2, winner[..., None]) - scores  # [B, K, c]
    var = cov.diagonal(dim1=1, dim2=2)  # [B, c]
    w_var = var.gather(1, winner)[..., None]  # [B, K, 1]
    w_cov = cov.gather(1, winner[..., None].expand(-1, -1, cov.shape[2]))  # [B, K, c]
    sd = (w_var + var[:, None, :] - 2 * w_cov).clamp_min(0).sqrt()
    others = torch.ones_like(lead, dtype=torch.bool).scatter_(2, winner[..., None], False)
    return ((lead > z * sd) | ~others).all(2).all(1)


def cell_boxes(cells: torch.Tensor, grid: int, kernel: int, height: int, width: int):
    """Pixel boxes ``[..., 4]`` as (top, left, height, width) for pooled cells."""
    ys, xs = patch_bounds(height, grid), patch_bounds(width, grid)
    side = grid - kernel + 1
    r, c = cells // side, cells % side
    ys_t, xs_t = torch.tensor(ys), torch.tensor(xs)
    top, bottom = ys_t[r], ys_t[r + kernel]
    left, right = xs_t[c], xs_t[c + kernel]
    return torch.stack([top, left, bottom - top, right - left], dim=-1)


def informative_crops(
    shapley_maps: torch.Tensor,
    sigma: torch.Tensor,
    *,
    kernel: int,
    num_crops: int,
    generators: list[torch.Generator],
    height: int,
    width: int,
) -> torch.Tensor:
    """Crop boxes ``[B, num_crops, 4]`` for candidates with the given Shapley maps.

    ``sigma`` is the noise scale per candidate (see :func:`noise_sigma`).
    """
    grid = shapley_maps.shape[-1]
    cells = crop_cells(pool_map(shapley_maps, kernel), sigma, num_crops, generators)
    return cell_boxes(cells, grid, kernel, height, width)


def crop_and_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    mode: str = "resize",
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut ``boxes`` ``[B, 4]`` out of ``images`` ``[B, C, H, W]`` and fit them to ``size``.

    ``resize``: bilinear (antialiased) to the full size. ``pad``: the crop unscaled, centred on
    a canvas of ``fill`` (RDED feeds its crops to the teacher zero-padded; zero at the network
    input is the dataset mean colour, which callers pass as ``fill``).
    """
    out = []
    h, w = size
    for img, (top, left, bh, bw) in zip(images, boxes.tolist(), strict=True):
        crop = img[:, top : top + bh, left : left + bw]
        if mode == "resize":
            if (bh, bw) != (h, w):
                crop = F.interpolate(
                    crop[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
                )[0]
            out.append(crop)
        elif mode == "pad":
            canvas = (
                fill.reshape(-1, 1, 1).expand(img.shape[0], h, w).clone().to(img.device)
                if fill is not None
                else torch.zeros((img.shape[0], h, w), dtype=img.dtype, device=img.device)
            )
            y0, x0 = (h - bh) // 2, (w - bw) // 2
            canvas[:, y0 : y0 + bh, x0 : x0 + bw] = crop
            out.append(canvas)
        else:
            raise ValueError(f"unknown crop input mode {mode!r}; choose 'resize' or 'pad'")
    return torch.stack(out)


def random_window_box(size: int, side: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """A square window of ``side`` at a uniformly random position in a ``size`` image."""
    top = int(torch.randint(0, size - side + 1, (), generator=g))
    left = int(torch.randint(0, size - side + 1, (), generator=g))
    return (top, left, side, side)


def random_square_box(size: int, min_scale: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """A square box covering a uniform fraction in (min_scale, 1) of the image area."""
    scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=g))
    side = max(1, min(size, round(math.sqrt(scale) * size)))
    return random_window_box(size, side, g)


def rded_crops(
    candidates: list[int], size: int, num_crops: int, min_scale: float, seed: int
) -> torch.Tensor:
    """RDED's crop boxes ``[B, num_crops, 4]``: random squares of the candidates, drawn from
    the same generators as the ``rded`` method's, so both see the same crops of a pool."""
    return torch.tensor(
        [
            [
                random_square_box(size, min_scale, generator("rded", seed, i, j))
                for j in range(num_crops)
            ]
            for i in candidates
        ]
    )


def unique_crops(boxes: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: the first of each identical box within a candidate."""
    keep = torch.ones(boxes.shape[:2], dtype=torch.bool)
    for i in range(boxes.shape[0]):
        seen = set()
        for j, box in enumerate(map(tuple, boxes[i].tolist())):
            keep[i, j] = box not in seen
            seen.add(box)
    return keep


def window_kernel(inf, factor: int) -> int:
    """The crop window in grid cells per side: the configured one, or the patch's own share
    of the image (grid / factor: the whole image at factor 1, a quarter at factor 2)."""
    if inf.pool_kernel is not None:
        return inf.pool_kernel
    return max(1, inf.grid // factor)
