"""Informativeness crops (paper §2.2-2.3): where in a candidate the class information lies.

The Shapley map of a ``grid x grid`` patch game is average-pooled with a ``kernel x kernel``
window at stride 1; each pooled cell is a window of ``kernel`` patches per side (for a 4x4 grid
and kernel 2: a 3x3 map of half-height, half-width windows, each a quarter of the image).
A candidate yields ``num_crops`` crops at the argmax of the pooled map; all but the last add
Gaussian noise to the map first (sigma = alpha x std of the pooled map), the last is noise-free.
Ties go to the first cell in row-major order, so equal maps always give the same crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infoutil.attribution.patch import patch_bounds


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
    b = pooled.shape[0]
    flat = pooled.flatten(1)
    cells = torch.empty((b, num_crops), dtype=torch.int64)
    for i in range(b):
        noise = torch.randn(
            (num_crops - 1, flat.shape[1]), generator=generators[i], dtype=torch.float64
        )
        noisy = flat[i][None, :] + sigma[i] * noise
        cells[i, : num_crops - 1] = noisy.argmax(1)  # argmax returns the first maximum
        cells[i, num_crops - 1] = flat[i].argmax()
    return cells


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
