"""Train a small pixel-space MNIST CNN and save it the ways users bring models: TorchScript and ONNX.

This stands in for a team's own classifier. It is trained on the real MNIST images, knows
nothing about the generator, and is then audited in pixel mode through the decoder:
    python examples/mnist/train_pixel_cnn.py --out runs/pixel-cnn
    auditai run examples/mnist/audit-pixel-torchscript.yaml --out runs/mnist-pixel-ts
    auditai run examples/mnist/audit-pixel-onnx.yaml --out runs/mnist-pixel-onnx
`--architecture lenet` trains an ordinary third-party-style LeNet with max pooling instead
(files lenet.pt and lenet.onnx; audit-pixel-lenet-*.yaml).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

from auditai_ops.data.datasets import load_mnist


def build_cnn() -> nn.Sequential:
    """Conv(1->16, 4x4, stride 2) -> ReLU -> Conv(16->32, 4x4, stride 2) -> ReLU -> Linear(1568->100) -> ReLU -> Linear(100->10)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def build_lenet() -> nn.Sequential:
    """LeNet-5 style: Conv(1->6, 5x5, pad 2) -> ReLU -> MaxPool 2 -> Conv(6->16, 5x5) -> ReLU -> MaxPool 2 -> 400 -> 120 -> 84 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


ARCHITECTURES = {"cnn": build_cnn, "lenet": build_lenet}


def train(epochs: int, limit: int | None, seed: int, architecture: str = "cnn") -> tuple[nn.Sequential, float]:
    torch.manual_seed(seed)
    mnist = load_mnist()
    images = torch.from_numpy(mnist.train.images[:limit])
    labels = torch.from_numpy(mnist.train.labels[:limit])
    model = ARCHITECTURES[architecture]()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        test = torch.from_numpy(mnist.test.images)
        accuracy = float((model(test).argmax(dim=1).numpy() == mnist.test.labels).mean())
    return model, accuracy


def save(model: nn.Sequential, out: Path, name: str = "cnn") -> tuple[Path, Path]:
    """TorchScript (`<name>.pt`) and ONNX (`<name>.onnx`, opset 17) files of the same weights."""
    out.mkdir(parents=True, exist_ok=True)
    scripted, onnx_path = out / f"{name}.pt", out / f"{name}.onnx"
    torch.jit.save(torch.jit.script(model), str(scripted))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
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
    parser.add_argument("--out", type=Path, default=Path("runs/pixel-cnn"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="cnn")
    args = parser.parse_args()
    model, accuracy = train(args.epochs, args.limit, args.seed, args.architecture)
    scripted, onnx_path = save(model, args.out, args.architecture)
    print(f"test accuracy {accuracy:.4f}; saved {scripted} and {onnx_path}")


if __name__ == "__main__":
    main()
