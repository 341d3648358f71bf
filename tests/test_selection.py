"""Crop geometry, noise, tie-breaking, top-k per class, and gradient norms."""

from __future__ import annotations

import pytest
import torch

from infoutil.data import DatasetInfo
from infoutil.models import create_model
from infoutil.selection.crops import (
    cell_boxes,
    crop_and_resize,
    crop_cells,
    informative_crops,
    noise_sigma,
    pool_map,
)
from infoutil.selection.utility import grad_norms, grad_norms_loop, top_k_per_class


def test_pooling_a_4x4_map_gives_3x3_quarter_windows():
    maps = torch.arange(16.0).view(1, 4, 4)
    pooled = pool_map(maps, 2)
    assert pooled.shape == (1, 3, 3)
    assert float(pooled[0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)
    boxes = cell_boxes(torch.arange(9), grid=4, kernel=2, height=32, width=32)
    assert boxes.tolist()[0] == [0, 0, 16, 16] and boxes.tolist()[-1] == [16, 16, 16, 16]
    assert boxes.tolist()[4] == [8, 8, 16, 16]  # each window a quarter of the area


def test_five_crops_last_is_the_noise_free_argmax():
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 5.0  # the bottom-right window holds the information
    gens = [torch.Generator().manual_seed(0)]
    pooled = pool_map(maps, 2)
    boxes = informative_crops(
        maps,
        noise_sigma(pooled, 2.0, "per_image"),
        kernel=2,
        num_crops=5,
        generators=gens,
        height=28,
        width=28,
    )
    assert boxes.shape == (1, 5, 4)
    assert boxes[0, -1].tolist() == [14, 14, 14, 14]
    no_noise = informative_crops(
        maps,
        torch.zeros(1),
        kernel=2,
        num_crops=5,
        generators=[torch.Generator().manual_seed(0)],
        height=28,
        width=28,
    )
    assert (no_noise[0] == no_noise[0, -1]).all()  # alpha = 0: five identical crops


def test_noise_spreads_crops_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(50, 4, 4, generator=g)
    pooled = pool_map(maps, 2)
    sigma = noise_sigma(pooled, 2.0, "per_image")
    a = crop_cells(pooled, sigma, 5, [torch.Generator().manual_seed(i) for i in range(50)])
    b = crop_cells(pooled, sigma, 5, [torch.Generator().manual_seed(i) for i in range(50)])
    assert torch.equal(a, b)
    assert (a[:, :4] != a[:, 4:]).any()  # noisy crops move away from the argmax
    assert torch.equal(a[:, 4], pooled.flatten(1).argmax(1))
    assert noise_sigma(pooled, 2.0, "global").unique().numel() == 1


def test_ties_go_to_the_first_cell():
    flat = torch.ones(1, 3, 3, dtype=torch.float64)
    cells = crop_cells(flat, torch.zeros(1), 2, [torch.Generator()])
    assert cells.tolist() == [[0, 0]]


def test_crop_inputs_resize_and_pad():
    img = torch.rand(1, 3, 32, 32)
    box = torch.tensor([[8, 8, 16, 16]])
    resized = crop_and_resize(img, box, (32, 32), "resize")
    padded = crop_and_resize(img, box, (32, 32), "pad", fill=torch.tensor([0.1, 0.2, 0.3]))
    assert resized.shape == padded.shape == (1, 3, 32, 32)
    assert torch.equal(padded[0, :, 8:24, 8:24], img[0, :, 8:24, 8:24])
    assert float(padded[0, 1, 0, 0]) == pytest.approx(0.2)


def test_top_k_per_class_ranks_and_breaks_ties_by_index():
    scores = torch.tensor([0.5, 2.0, 2.0, 1.0, 9.0, 3.0])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    top = top_k_per_class(scores, classes, 2, 2)
    assert [t.tolist() for t in top] == [[1, 2], [4, 5]]
    low = top_k_per_class(scores, classes, 1, 2, descending=False)
    assert [t.tolist() for t in low] == [[0], [3]]


@pytest.mark.parametrize("arch", ["convnet3", "resnet18"])
def test_vectorised_grad_norms_equal_the_autograd_loop(arch):
    info = DatasetInfo("x", tuple("abcdefghij"), 32, 3, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = create_model(arch, info)
    with torch.no_grad():  # give batch norm non-trivial running statistics
        model.train()
        model(torch.rand(16, 3, 32, 32))
    x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 10, (5,))
    fast = grad_norms(model, x, y, batch_size=2)
    slow = grad_norms_loop(model, x, y)
    assert torch.allclose(fast, slow, rtol=1e-3)
    last = grad_norms(model, x, y, mode="last_layer")
    assert torch.allclose(
        last, grad_norms_loop(model, x, y, list(model.fc.parameters())), rtol=1e-4
    )
    assert (last < fast).all()  # a part of the gradient is smaller than the whole
