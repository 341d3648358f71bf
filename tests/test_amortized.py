"""The amortised explainer (FastSHAP): its coalitions, its efficiency and what it learns."""

from __future__ import annotations

import torch

from infoutil.attribution.amortized import efficient, explain, fit_explainer, kernel_coalitions
from infoutil.models import Classifier
from infoutil.models.nets import ConvNet


def test_coalitions_are_paired_and_follow_the_shapley_kernel():
    n = 8
    z = kernel_coalitions(n, 40_000, torch.Generator().manual_seed(0))
    assert torch.equal(z[1::2], ~z[0::2])  # each followed by its complement
    sizes = z.sum(1)
    assert sizes.min() >= 1 and sizes.max() <= n - 1  # the ends are evaluated apart
    s = torch.arange(1, n).double()
    mass = 1 / (s * (n - s))
    share = torch.bincount(sizes[0::2], minlength=n)[1:].double() / (len(z) // 2)
    assert (share - mass / mass.sum()).abs().max() < 0.01


def test_efficient_maps_sum_to_the_game_total():
    phi = torch.randn(5, 16)
    total = torch.randn(5)
    assert torch.allclose(efficient(phi, total).sum(1), total, atol=1e-5)


def test_the_explainer_learns_an_additive_game_on_unseen_images():
    # images whose 2x2 cells have their own brightness; v(S) = sum of the kept cells' brightness
    # (an additive game: its Shapley values are the cells' brightness), one class
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(320, 2, 2, generator=g)
    images = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None]
    images = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    truth = cells.flatten(1)
    labels = torch.zeros(len(images), dtype=torch.long)
    teacher = Classifier(ConvNet(1, 1, 16, depth=3, width=16), (0.5,), (0.25,))
    z = torch.stack([kernel_coalitions(4, 8, g) for _ in range(256)])
    values = torch.einsum("bmn,bn->bm", z.double(), truth[:256].double())
    empty, full = torch.zeros(256), truth[:256].sum(1)
    explainer = fit_explainer(
        teacher, images[:256], labels[:256], z, values, empty, full,
        num_classes=1, grid=2, epochs=40, seed=0, lr=3e-3,
    )  # fmt: skip
    held = slice(256, None)
    maps = explain(explainer, images[held], labels[held], torch.zeros(64), truth[held].sum(1))
    assert torch.allclose(maps.flatten(1).sum(1), truth[held].sum(1), atol=1e-4)
    uniform = efficient(torch.zeros(64, 4), truth[held].sum(1))
    err = (maps.flatten(1) - truth[held]).square().sum()
    assert err < 0.2 * (uniform - truth[held]).square().sum()  # far better than no map


def test_a_loader_trains_the_same_explainer_as_a_tensor():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(20, 1, 16, 16, generator=g)
    labels = torch.randint(0, 2, (20,), generator=g)
    z = torch.stack([kernel_coalitions(4, 4, g) for _ in range(20)])
    values, empty, full = torch.rand(20, 4, generator=g), torch.zeros(20), torch.ones(20)
    teacher = Classifier(ConvNet(1, 2, 16, depth=3, width=8), (0.5,), (0.25,))
    fit = dict(num_classes=2, grid=2, epochs=2, seed=3, batch_size=8)
    a = fit_explainer(teacher, images, labels, z, values, empty, full, **fit)
    b = fit_explainer(teacher, lambda rows: images[rows], labels, z, values, empty, full, **fit)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
