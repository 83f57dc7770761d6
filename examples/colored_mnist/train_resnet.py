"""Train a small ResNet-style pixel classifier on Colored MNIST and save it as TorchScript and ONNX.

This stands in for a team's own classifier with the layers real models have: residual
blocks with BatchNorm, a MaxPool, global average pooling and a Linear head. It is trained on
the Colored MNIST images (make_dataset.py), knows nothing about the generator, and is then
audited in pixel mode through the VAE decoder of the latent audit:
    python examples/colored_mnist/make_dataset.py --out runs/colored-mnist/colored_mnist.npz
    auditai run examples/colored_mnist/audit.yaml --out runs/colored-mnist-audit
    python examples/colored_mnist/train_resnet.py --out runs/colored-resnet
    auditai run examples/colored_mnist/audit-resnet-torchscript.yaml --out runs/colored-resnet-ts
    auditai run examples/colored_mnist/audit-resnet-onnx.yaml --out runs/colored-resnet-onnx
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

from auditai_ops.data.datasets import Dataset, load_dataset


class ResidualBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a strided 1x1 conv with BatchNorm when the shape changes."""

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


class ResNet(nn.Module):
    """Conv(3->w, 3x3) + BN + ReLU, MaxPool(2), ResidualBlock(w->w), ResidualBlock(w->2w, stride 2), global average pool, Linear(2w->10)."""

    def __init__(self, width: int = 8, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2))
        self.block1 = ResidualBlock(width, width, 1)
        self.block2 = ResidualBlock(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(hidden), 1))


def train(data: Dataset, epochs: int, limit: int | None, width: int, seed: int) -> tuple[ResNet, float]:
    """Adam on cross-entropy over the training split; returns the eval-mode model and its test accuracy."""
    torch.manual_seed(seed)
    images = torch.from_numpy(data.train.images[:limit])
    labels = torch.from_numpy(data.train.labels[:limit])
    model = ResNet(width, in_channels=images.shape[1], num_classes=data.num_classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        test = torch.from_numpy(data.test.images)
        predictions = torch.cat([model(batch).argmax(dim=1) for batch in test.split(1024)]).numpy()
    return model, float((predictions == data.test.labels).mean())


def save(model: ResNet, out: Path, image_shape: tuple[int, ...]) -> tuple[Path, Path]:
    """TorchScript (`resnet.pt`) and ONNX (`resnet.onnx`, opset 17) files of the same weights."""
    out.mkdir(parents=True, exist_ok=True)
    scripted, onnx_path = out / "resnet.pt", out / "resnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(scripted))
        torch.onnx.export(
            model,
            (torch.zeros(1, *image_shape),),
            str(onnx_path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return scripted, onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/colored-resnet"))
    parser.add_argument("--dataset", default="runs/colored-mnist/colored_mnist.npz", help="the Colored MNIST .npz of make_dataset.py")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--width", type=int, default=8, help="channels of the first stage (the second has twice as many)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    model, accuracy = train(data, args.epochs, args.limit, args.width, args.seed)
    scripted, onnx_path = save(model, args.out, data.train.images.shape[1:])
    print(f"test accuracy {accuracy:.4f}; saved {scripted} and {onnx_path}")


if __name__ == "__main__":
    main()
