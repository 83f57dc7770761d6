"""The offline examples: Colored MNIST builds deterministically with its colour shortcut, the ResNet loads as the verifier loads it, every config validates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from auditai_ops.config import load_config
from auditai_ops.data.attributes import measure_attributes
from auditai_ops.data.datasets import load_dataset, load_mnist
from auditai_ops.models.loading import load_model_detailed
from auditai_ops.models.source import parse_model_reference

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SLICE = 400


def _example(name: str) -> ModuleType:
    """An example script imported as a module (examples/ is not a package)."""
    path = EXAMPLES / "colored_mnist" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_colored_mnist_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_dataset() -> ModuleType:
    return _example("make_dataset")


@pytest.fixture(scope="module")
def colored(make_dataset: ModuleType) -> dict[str, np.ndarray]:
    return make_dataset.build(limit=SLICE, seed=0)


def test_colored_mnist_is_deterministic(make_dataset: ModuleType, colored: dict[str, np.ndarray]) -> None:
    again = make_dataset.build(limit=SLICE, seed=0)
    assert sorted(again) == sorted(colored) == sorted(f"{s}_{k}" for s in ("train", "valid", "test") for k in ("images", "labels"))
    for key, array in colored.items():
        np.testing.assert_array_equal(again[key], array, err_msg=key)
    other = make_dataset.build(limit=SLICE, seed=1)
    assert not np.array_equal(other["train_images"], colored["train_images"])
    np.testing.assert_array_equal(other["train_labels"], colored["train_labels"])


def test_colored_mnist_keeps_mnist_digits_and_labels(colored: dict[str, np.ndarray]) -> None:
    mnist = load_mnist()
    for split in ("train", "valid", "test"):
        images, labels = colored[f"{split}_images"], colored[f"{split}_labels"]
        assert images.shape == (SLICE, 28, 28, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(labels, mnist.split(split).labels[:SLICE])
        # The stroke is where MNIST's ink is: it differs most from the border's background colour.
        ink = mnist.split(split).images[:SLICE, 0] > 0.5
        difference = np.abs(images.astype(np.float64) - np.median(images[:, 0, :, :].astype(np.float64), axis=1)[:, None, None, :]).max(axis=3)
        assert (difference[ink].mean() - difference[~ink].mean()) > 100


def test_colored_mnist_loads_as_rgb_npz(colored: dict[str, np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "colored.npz"
    np.savez_compressed(path, **colored)
    data = load_dataset(str(path))
    assert data.num_classes == 10
    for split in ("train", "valid", "test"):
        images = data.split(split).images
        assert images.shape == (SLICE, 3, 28, 28) and images.dtype == np.float32
        np.testing.assert_allclose(images, np.moveaxis(colored[f"{split}_images"], 3, 1) / 255.0, atol=1e-6)


def test_hsv_colours(make_dataset: ModuleType) -> None:
    hue = np.array([0.0, 60.0, 120.0, -120.0, 180.0, -60.0])
    rgb = make_dataset.hsv_to_rgb(hue, np.ones(6), np.ones(6))
    np.testing.assert_allclose(rgb, [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1]], atol=1e-12)
    grey = make_dataset.hsv_to_rgb(np.array([37.0]), np.zeros(1), np.array([0.4]))
    np.testing.assert_allclose(grey, [[0.4, 0.4, 0.4]])


def test_stroke_hue_carries_the_label(make_dataset: ModuleType, colored: dict[str, np.ndarray]) -> None:
    """Measured by the tool's own hue attribute: about 90 % of the digits of every split sit at their label's hue, as make_dataset documents."""
    for split in ("train", "valid", "test"):
        images = np.moveaxis(colored[f"{split}_images"], 3, 1).astype(np.float32) / 255.0
        labels = colored[f"{split}_labels"]
        hue = measure_attributes(images, ("hue",))["hue"]
        assert np.isfinite(hue).all()
        error = np.abs((hue - make_dataset.label_hue(labels) + 180.0) % 360.0 - 180.0)
        aligned = float((error < 15.0).mean())
        assert 0.85 <= aligned <= 0.97, (split, aligned)
        # The nearest label hue predicts the label as well as the correlation allows.
        centres = make_dataset.label_hue(np.arange(10))
        nearest = np.abs((hue[:, None] - centres[None, :] + 180.0) % 360.0 - 180.0).argmin(axis=1)
        assert (nearest == labels).mean() >= 0.85
        assert make_dataset.HUE_RANDOM[0] - 15.0 <= hue.min() and hue.max() <= make_dataset.HUE_RANDOM[1] + 15.0  # clear of the wrap at cyan


def test_resnet_example_loads_as_torchscript_and_onnx(tmp_path: Path) -> None:
    """The example's ResNet (residual blocks, BatchNorm, MaxPool, global average pooling) loads through both routes, computing the same logits."""
    module = _example("train_resnet")
    torch.manual_seed(0)
    net = module.ResNet(width=4).eval()
    scripted, onnx_path = module.save(net, tmp_path, (3, 28, 28))
    images = torch.rand(5, 3, 28, 28)
    with torch.no_grad():
        expected = net(images)
        for path in (scripted, onnx_path):
            loaded = load_model_detailed(parse_model_reference(str(path)), input_shape=(3, 28, 28))
            torch.testing.assert_close(loaded.module(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_config_validates(config: Path) -> None:
    loaded = load_config(config)
    assert loaded.unit_tests, "an example audits at least one unit test"


def test_colored_mnist_audits_the_hue_shortcut() -> None:
    """The colour spec of the latent audit asks for an unchanged prediction over +-30 deg of stroke hue; the repair config repairs it."""
    for name in ("audit.yaml", "audit-repair.yaml"):
        config = load_config(EXAMPLES / "colored_mnist" / name)
        hue = next(t for t in config.unit_tests if t.direction == ("hue",))
        assert hue.property == "clean_prediction" and (hue.range[0].low, hue.range[0].high) == (-30.0, 30.0)
        assert "hue" in config.directions.attributes and config.model.mode == "latent"
    assert load_config(EXAMPLES / "colored_mnist" / "audit-repair.yaml").finetune.repair
    for name in ("audit-resnet-torchscript.yaml", "audit-resnet-onnx.yaml"):
        config = load_config(EXAMPLES / "colored_mnist" / name)
        assert config.model.mode == "pixel" and len(config.unit_tests) == 4
    fashion = load_config(EXAMPLES / "fashion_mnist" / "audit.yaml")
    assert fashion.data.dataset == "fashion-mnist" and set(fashion.directions.attributes) == {"size", "brightness", "orientation"}
