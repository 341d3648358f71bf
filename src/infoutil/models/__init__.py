"""Models by name: ``create_model("convnet3", info)`` returns a :class:`Classifier`.

A :class:`Classifier` takes images in [0, 1] and normalises them itself with the dataset's mean
and std, so a checkpoint is self-contained: nobody can feed it un-normalised pixels by mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from infoutil.data.base import DatasetInfo
from infoutil.errors import UserError
from infoutil.models.nets import BasicBlock, Bottleneck, ConvNet, MobileNetV2, ResNet

_REGISTRY: dict[str, Callable[[int, int, int], nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


for _depth in (3, 4, 5, 6):
    register_model(f"convnet{_depth}")(lambda c, k, s, d=_depth: ConvNet(c, k, s, depth=d))
    # RDED's released ConvNet teachers: the same net with BatchNorm
    register_model(f"convnet{_depth}-bn")(
        lambda c, k, s, d=_depth: ConvNet(c, k, s, depth=d, norm="batch")
    )
register_model("resnet18")(lambda c, k, s: ResNet(BasicBlock, [2, 2, 2, 2], c, k, s))
register_model("resnet50")(lambda c, k, s: ResNet(Bottleneck, [3, 4, 6, 3], c, k, s))
register_model("resnet101")(lambda c, k, s: ResNet(Bottleneck, [3, 4, 23, 3], c, k, s))
register_model("mobilenetv2")(lambda c, k, s: MobileNetV2(c, k, s))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class Classifier(nn.Module):
    """A network plus its input normalisation. Input: float images in [0, 1], [B, C, H, W]."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, D] (the input to the final linear layer ``net.fc``)."""
        return self.net.forward_features(self.normalize(x))

    def spatial_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [B, C, h, w], before pooling or flattening."""
        return self.net.spatial_features(self.normalize(x))

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc


def create_model(arch: str, info: DatasetInfo) -> Classifier:
    """Build ``arch`` for the dataset's channels, classes and image size (random weights)."""
    if arch not in _REGISTRY:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(list_models())}")
    net = _REGISTRY[arch](info.channels, info.num_classes, info.image_size)
    return Classifier(net, info.mean, info.std)


@torch.no_grad()
def activation_bytes(model: torch.nn.Module, info: DatasetInfo) -> tuple[int, int]:
    """(every layer's output summed, the largest one) for one fp32 image, in bytes: measured
    with forward hooks on one blank image of the dataset's shape. A training step keeps about
    the sum per image (for the backward pass); an inference forward about two of the largest."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4))
        for m in model.modules()
        if not list(m.children())
    ]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, info.channels, info.image_size, info.image_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sum(sizes), max(sizes, default=0)


def inference_batch(model: torch.nn.Module, info: DatasetInfo, ceiling: int = 500) -> int:
    """Images per no-grad forward (a test pass): ``ceiling`` at 32 px and as many pixels above
    (at least 16), and no more than two of the largest activation per image fit in a tenth of
    the memory available."""
    from infoutil.runtime import available_memory

    by_pixels = max(16, min(ceiling, ceiling * 32 * 32 // info.image_size**2))
    free = available_memory()
    if free is None:
        return by_pixels
    _, largest = activation_bytes(model, info)
    return max(1, min(by_pixels, int(0.1 * free) // max(1, 2 * largest)))


__all__ = [
    "Classifier",
    "activation_bytes",
    "create_model",
    "inference_batch",
    "list_models",
    "register_model",
]
