"""Networks in plain ``torch.nn``: ConvNet-D, ResNet-18/50/101, MobileNet-V2.

Every network exposes ``forward_features(x) -> [B, D]`` and a final linear layer ``fc``, so the
last-layer gradient norm and the coreset baselines can use the penultimate features, and
``spatial_features(x) -> [B, C, h, w]``, the last feature map before it is pooled or flattened
(what an amortised explainer reads, ``attribution.amortized``).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """The ConvNet of the dataset-distillation literature (DC, DM, MTT).

    ``depth`` blocks of conv 3x3 (``width`` channels) -> instance norm -> ReLU -> 2x2 average
    pooling, then a linear classifier. Instance norm is GroupNorm with one group per channel
    (affine), as in the DC code; ``norm="batch"`` is RDED's variant (its released ConvNet
    teachers use BatchNorm). Pooling stops once the feature map is 1 pixel, so any depth
    works at any input size.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instance",
    ):
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_ch, width, 3, padding=1),
                nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(width, width),
                nn.ReLU(inplace=True),
            ]
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def spatial_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 stride-1 conv, no max-pool) for inputs of 64 px and below,
    and the ImageNet stem (7x7 stride-2 conv, 3x3 max-pool) above."""

    def __init__(self, block, layers: list[int], channels: int, num_classes: int, image_size: int):
        super().__init__()
        if image_size <= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, 3, 1, 1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def spatial_features(self, x):
        return self.layers(self.stem(x))

    def forward_features(self, x):
        return self.pool(self.spatial_features(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.forward_features(x))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2 (width 1.0). For inputs of 64 px and below the stem and the first
    stride-2 stage use stride 1, the usual CIFAR adaptation, so small images keep their detail."""

    CONFIG = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, channels: int, num_classes: int, image_size: int):
        super().__init__()
        small = image_size <= 64
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 32, 3, 1 if small else 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(inplace=True),
        ]
        inp = 32
        for i, (t, c, n, s) in enumerate(self.CONFIG):
            for j in range(n):
                stride = s if j == 0 else 1
                if small and i == 1:
                    stride = 1
                layers.append(InvertedResidual(inp, c, stride, t))
                inp = c
        layers += [
            nn.Conv2d(inp, 1280, 1, bias=False),
            nn.BatchNorm2d(1280),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 1280
        self.fc = nn.Linear(1280, num_classes)

    def spatial_features(self, x):
        return self.features(x)

    def forward_features(self, x):
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.forward_features(x))
