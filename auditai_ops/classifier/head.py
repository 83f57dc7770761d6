"""The audited model of the paper's setting: model(x) = head(mu(x)), an MLP head on the encoder.

The `train-classifier` step fits the head on the training latents with cross-entropy and
writes `<out>/classifier/head.safetensors` + `head.json` (architecture, accuracies).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import ClassifierConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.layout import CLASSIFIER_DIR, HEAD_FILE
from auditai_ops.modelio import load_module, save_module
from auditai_ops.progress import progress


def build_head(latent_dim: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Linear -> ReLU -> ... -> Linear logits."""
    layers: list[nn.Module] = []
    width = latent_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class HeadArtifacts:
    head_path: Path
    metrics: dict[str, float]


@torch.no_grad()
def accuracy(head: nn.Module, latents: np.ndarray, labels: np.ndarray) -> float:
    predictions = head(torch.from_numpy(latents.astype(np.float32))).argmax(dim=1).numpy()
    return float(np.mean(predictions == labels))


def train_head(latents: np.ndarray, labels: np.ndarray, num_classes: int, settings: ClassifierConfig) -> nn.Sequential:
    """Minimise cross-entropy with AdamW over shuffled mini-batches."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    head = build_head(latents.shape[1], settings.hidden, num_classes)
    optimiser = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    inputs, targets = torch.from_numpy(latents.astype(np.float32)), torch.from_numpy(labels)
    head.train()
    for _ in progress(iterable=range(settings.epochs), desc="train classifier head", unit="epoch"):
        for index in torch.randperm(len(inputs), generator=generator).split(settings.batch_size):
            loss = nn.functional.cross_entropy(head(inputs[index]), targets[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
    head.eval()
    return head


def train_classifier(settings: ClassifierConfig, latents_path: Path, out_dir: Path) -> HeadArtifacts:
    """Train the head on `latents.npz` and save it with its architecture and accuracies."""
    try:
        with np.load(latents_path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except FileNotFoundError:
        raise AuditInputError(f"latents '{latents_path}': file not found (run `auditai map-latents` first)") from None
    num_classes = int(arrays["num_classes"])
    head = train_head(arrays["train_z"], arrays["train_labels"], num_classes, settings)
    metrics = {f"{split}_accuracy": accuracy(head, arrays[f"{split}_z"], arrays[f"{split}_labels"]) for split in ("train", "valid", "test")}
    architecture = {"latent_dim": int(arrays["train_z"].shape[1]), "hidden": list(settings.hidden), "num_classes": num_classes}
    path = Path(out_dir) / CLASSIFIER_DIR / HEAD_FILE
    save_module(head, path, "mlp_head", architecture, {"training": settings.model_dump(mode="json"), "metrics": metrics})
    return HeadArtifacts(path, metrics)


def load_head(path: Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the head from `head.json` and load its safetensors weights."""
    module, record = load_module(path, "mlp_head", lambda a: build_head(int(a["latent_dim"]), tuple(a["hidden"]), int(a["num_classes"])))
    assert isinstance(module, nn.Sequential)
    return module, record
