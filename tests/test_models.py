"""Every registered model runs forward and backward on every dataset shape we load."""

from __future__ import annotations

import pytest
import torch

from infoutil.data import DatasetInfo
from infoutil.models import create_model, list_models

SHAPES = {
    "fashion-mnist": (1, 28, 10),
    "cifar100": (3, 32, 100),
    "imagenet-like": (3, 96, 10),  # above 64 px: the ImageNet stem
}


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_forward_backward(arch, shape):
    channels, size, classes = SHAPES[shape]
    info = DatasetInfo(
        shape,
        tuple(f"c{i}" for i in range(classes)),
        size,
        channels,
        (0.5,) * channels,
        (0.25,) * channels,
    )
    torch.manual_seed(0)
    model = create_model(arch, info)
    x = torch.rand(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.features(x).shape == (2, model.fc.in_features)
    spatial = model.spatial_features(x)  # the map the features are pooled or flattened from
    assert spatial.dim() == 4 and spatial.shape[0] == 2
    if arch.startswith("convnet"):
        assert torch.equal(spatial.flatten(1), model.features(x))
    else:
        assert torch.allclose(spatial.mean((2, 3)), model.features(x), atol=1e-5)


def test_resnet_stems():
    small = DatasetInfo("s", ("a", "b"), 32, 3, (0.5,) * 3, (0.2,) * 3)
    large = DatasetInfo("l", ("a", "b"), 128, 3, (0.5,) * 3, (0.2,) * 3)
    s, lg = create_model("resnet18", small).net.stem, create_model("resnet18", large).net.stem
    assert s[0].kernel_size == (3, 3) and s[0].stride == (1, 1) and len(s) == 3
    assert lg[0].kernel_size == (7, 7) and isinstance(lg[-1], torch.nn.MaxPool2d)


def test_convnet_is_the_dd_convnet():
    info = DatasetInfo("c", tuple("abcdefghij"), 32, 3, (0.5,) * 3, (0.2,) * 3)
    net = create_model("convnet3", info).net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 3 and all(c.out_channels == 128 for c in convs)
    assert all(n.num_groups == n.num_channels == 128 for n in norms)  # instance norm
    assert net.fc.in_features == 128 * 4 * 4


def test_normalisation_is_inside_the_model():
    info = DatasetInfo("c", ("a", "b"), 8, 1, (0.25,), (0.5,))
    model = create_model("convnet3", info)
    assert torch.allclose(model.normalize(torch.full((1, 1, 8, 8), 0.25)), torch.zeros(1))
