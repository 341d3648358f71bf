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


__all__ = ["Classifier", "create_model", "list_models", "register_model"]
