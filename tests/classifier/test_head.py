from pathlib import Path

import numpy as np
import pytest
import torch

from auditai_ops.classifier.head import accuracy, build_head, load_head, train_head
from auditai_ops.config import ClassifierConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.modelio import save_module


def _blobs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return (centres[labels] + rng.normal(scale=0.5, size=(count, 4))).astype(np.float32), labels


def test_head_learns_separable_latents() -> None:
    latents, labels = _blobs(600, 0)
    head = train_head(latents, labels, 3, ClassifierConfig(hidden=(16,), epochs=20, batch_size=64, learning_rate=1e-2))
    assert accuracy(head, *_blobs(300, 1)) > 0.97


def test_architecture_is_linear_relu_stack() -> None:
    head = build_head(16, (32, 8), 10)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert head(torch.zeros(2, 16)).shape == (2, 10)


def test_round_trip_and_kind_check(tmp_path: Path) -> None:
    head = build_head(4, (8,), 3)
    path = tmp_path / "head.safetensors"
    save_module(head, path, "mlp_head", {"latent_dim": 4, "hidden": [8], "num_classes": 3})
    loaded, _ = load_head(path)
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), head(x), rtol=0, atol=0)
    save_module(head, path, "vae", {})
    with pytest.raises(AuditInputError, match="expected a saved mlp_head"):
        load_head(path)
