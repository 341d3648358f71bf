"""An amortised Shapley explainer for the patch game (FastSHAP, Jethani et al., ICLR 2022).

Instead of spending a budget of teacher forwards on every image, a network learns to predict
an image's Shapley values in one forward. It is trained on the teacher's masked evaluations of
part of the pool (``coalitions`` per image, drawn from the Shapley kernel and paired with their
complements) with FastSHAP's objective: for coalitions ``S`` drawn with the kernel's mass,

    E_S [ (v(S) - v(empty) - sum_{i in S} phi_i)^2 ],

where ``phi`` is the network's output made efficient (``sum phi = v(full) - v(empty)``) by an
additive correction. Its minimiser, for one image and all coalitions, is the Shapley value; the
network shares what it learns across images, so a few dozen coalitions per training image are
enough to fit it, and every other image costs three forwards: ``v(full)``, ``v(empty)`` and the
explainer's.

The explainer (ours; the paper's images use a network shaped like the classifier) is a copy of
the teacher's convolutional features, which already know where each class's evidence lies,
and a 1x1 convolution to one map per class, averaged onto the ``grid x grid`` cells.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from infoutil.attribution.patch import patch_values
from infoutil.attribution.shapley import with_ends
from infoutil.runtime import progress


def kernel_coalitions(n: int, count: int, g: torch.Generator) -> torch.Tensor:
    """``count`` (even) coalitions ``[count, n]``: sizes with the Shapley kernel's mass
    ``(n-1) / (s (n-s))``, members uniform, each followed by its complement (paired sampling)."""
    if n < 2 or count < 2 or count % 2:
        raise ValueError(f"need at least 2 players and an even count, not n={n}, count={count}")
    sizes = torch.arange(1, n)
    mass = 1.0 / (sizes * (n - sizes)).double()
    s = sizes[torch.multinomial(mass, count // 2, replacement=True, generator=g)]
    ranks = torch.rand(count // 2, n, generator=g).argsort(1).argsort(1)  # a random order each
    first = ranks < s[:, None]
    return torch.stack([first, ~first], 1).reshape(count, n)


class PatchExplainer(nn.Module):
    """``phi(x, y)`` ``[B, grid^2]``: the teacher's features (a copy), a 1x1 convolution to one
    map per class, and an average onto the grid's cells (row-major, as the game's players)."""

    def __init__(self, teacher: nn.Module, num_classes: int, grid: int, image_shape):
        super().__init__()
        self.body = copy.deepcopy(teacher).float().requires_grad_(True)
        self.grid = grid
        with torch.no_grad():
            width = self.body.spatial_features(torch.zeros(1, *image_shape)).shape[1]
        self.head = nn.Conv2d(width, num_classes, 1)
        # zero at the start: every map begins as the efficient uniform split, not as noise
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = self.head(self.body.spatial_features(x))
        maps = F.adaptive_avg_pool2d(maps, self.grid)  # [B, classes, grid, grid]
        return maps[torch.arange(len(y)), y].flatten(1)


def efficient(phi: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``phi`` ``[B, n]`` shifted equally so each row sums to ``total`` ``[B]``."""
    return phi + ((total - phi.sum(1)) / phi.shape[1])[:, None]


def fit_explainer(
    teacher: nn.Module,
    images: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    coalitions: torch.Tensor,
    values: torch.Tensor,
    empty: torch.Tensor,
    full: torch.Tensor,
    *,
    num_classes: int,
    grid: int,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    progress_bar: bool = False,
) -> PatchExplainer:
    """Train an explainer on ``values`` ``[N, M]`` of ``coalitions`` ``[N, M, n]`` of ``images``
    ``[N, C, H, W]`` (``empty``, ``full``: ``v`` of the empty and the full coalition ``[N]``).
    ``images`` may instead load the rows it is given, so a large training set is never held
    in memory whole.

    Adam with a cosine schedule, ``epochs`` passes in a seeded order, the last epoch's weights.
    """
    load = images if callable(images) else images.__getitem__
    first = load(torch.zeros(1, dtype=torch.long))
    with torch.random.fork_rng(devices=[]):  # the head's initial weights come from the seed
        torch.manual_seed(seed)
        explainer = PatchExplainer(teacher, num_classes, grid, first.shape[1:])
    explainer.train()
    opt = torch.optim.Adam(explainer.parameters(), lr=lr)
    count = len(labels)
    steps = epochs * -(-count // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    device = first.device
    z = coalitions.float().to(device)
    gain = (values - empty[:, None]).float().to(device)
    total = (full - empty).float().to(device)
    bar = progress(total=steps, desc="explainer", unit="step", enabled=progress_bar)
    for _ in range(epochs):
        for rows in torch.randperm(count, generator=g).split(batch_size):
            phi = efficient(explainer(load(rows), labels[rows].to(device)), total[rows])
            loss = (gain[rows] - torch.einsum("bmn,bn->bm", z[rows], phi)).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            bar.update(1)
    bar.close()
    return explainer.eval()


@torch.inference_mode()
def explain(
    explainer: PatchExplainer,
    images: torch.Tensor,
    labels: torch.Tensor,
    empty: torch.Tensor,
    full: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """The explainer's efficient Shapley maps ``[B, grid, grid]``."""
    out = []
    for rows in torch.arange(len(images)).split(batch_size):
        phi = explainer(images[rows], labels[rows].to(images.device)).float().cpu()
        out.append(efficient(phi, (full[rows] - empty[rows]).float()))
    g = explainer.grid
    return torch.cat(out).view(-1, g, g)


def training_values(model, images, labels, drawn: torch.Tensor, **game):
    """The coalitions an explainer learns from, ``[B, 2 + M, n]``: the empty and the full one,
    then each image's ``drawn`` ``[B, M, n]``; and their values ``[B, 2 + M]`` under the teacher
    (``game``: the options of ``patch.coalition_values``)."""
    rows = torch.stack([with_ends(z) for z in drawn])
    return rows, patch_values(model, images, labels, rows, **game)


def explained_maps(explainer: PatchExplainer, model, images, labels, **game) -> torch.Tensor:
    """The explainer's maps ``[B, grid, grid]``, made efficient with ``v(full)`` and
    ``v(empty)`` from the teacher: three forwards an image."""
    n = explainer.grid**2
    ends = with_ends(torch.zeros((0, n), dtype=torch.bool))
    v = patch_values(model, images, labels, ends.expand(len(images), 2, n), **game)
    return explain(explainer, images, labels, v[:, 0], v[:, 1])
