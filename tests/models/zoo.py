"""Small classifiers shaped like the ones users bring: a LeNet-style CNN and a ResNet-style net.

Torch only, with random weights that depend only on `seed` (the global RNG is left as it was),
in eval mode. Tests export them to TorchScript and ONNX; examples may train them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet", "SmallResNet", "lenet", "small_resnet"]


class LeNet(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-MaxPool-Flatten-Linear-ReLU-Linear, laid out like third-party MNIST nets (`features`, `classifier`)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = (image_size // 2 - 4) // 2
        self.classifier = nn.Sequential(nn.Linear(16 * side * side, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class _Residual(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), the shortcut a strided 1x1 conv with BatchNorm when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(hidden)) + self.shortcut(x))


class _Inception(nn.Module):
    """Two branches read the same tensor and are concatenated along channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(channels, channels // 2, 1)
        self.wide = nn.Conv2d(channels, channels - channels // 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([self.narrow(x), self.wide(x)], dim=1))


class SmallResNet(nn.Module):
    """Stem conv + BatchNorm + ReLU, MaxPool, a residual block, a concat branch, a strided residual block, global average pooling, Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2))
        self.block1 = _Residual(width, width, 1)
        self.mix = _Inception(width)
        self.block2 = _Residual(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.block2(self.mix(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(hidden), 1))


def _randomise_batch_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial eval statistics and affine parameters, so that BatchNorm is not the identity."""
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                size = norm.num_features
                norm.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)  # type: ignore[union-attr]
                norm.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))  # type: ignore[union-attr]
                norm.weight.copy_(0.5 + torch.rand(size, generator=generator))
                norm.bias.copy_(0.2 * torch.randn(size, generator=generator))


def lenet(seed: int = 0, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> LeNet:
    """A LeNet-style CNN for (in_channels, image_size, image_size) images (image_size divisible by 4, >= 12), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet(in_channels, image_size, num_classes).eval()


def small_resnet(seed: int = 0, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> SmallResNet:
    """A ResNet-style classifier for (in_channels, H, W) images with even H and W, in eval mode with random BatchNorm statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallResNet(in_channels, num_classes, width)
        _randomise_batch_norms(net, torch.Generator().manual_seed(seed + 1))
    return net.eval()
