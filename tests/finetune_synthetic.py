"""A tiny synthetic audit that standard training fails and certified fine-tuning can repair.

Latents are 2-D. The class is the sign of x2, with a gap: |x2| >= 0.3, so a classifier that
ignores x1 is exact. But x1 = +-2 (by class) is a stronger cue, so a head trained on clean
data leans on it, and moving x1 by up to 3 latent units (the spec `x1_within_3`) flips it.
The generator is a small random VAE on 8x8 images: latent mode never decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from auditai_ops.classifier.head import train_classifier
from auditai_ops.config import AuditConfig, ClassifierConfig, FinetuneConfig, GeneratorConfig, InputsConfig, RangeConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.fileio import write_json, write_npz
from auditai_ops.latent.generator import Generator
from auditai_ops.latent.vae import VAE, VAEArchitecture
from auditai_ops.layout import DIRECTIONS_DIR, DIRECTIONS_JSON, LATENT_DIR, LATENTS_FILE, VAE_FILE, StepInputs, resolve_inputs
from auditai_ops.modelio import save_module
from auditai_ops.models.generator import load_generator

SPEC = UnitTestConfig(name="x1_within_3", direction=("x1",), range=(RangeConfig(low=-3.0, high=3.0, units="latent"),), threshold=0.9)
SAMPLES = {"train": 2000, "valid": 500, "test": 300}


def synthetic_split(name: str, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = rng.integers(0, 2, count)
    sign = 2.0 * labels - 1.0
    x1 = 2.0 * sign + rng.normal(0.0, 0.3, count)
    x2 = sign * (0.3 + np.abs(rng.normal(0.0, 0.5, count)))
    ids = np.array([f"synthetic:{name}:{i}" for i in range(count)])
    return {f"{name}_z": np.stack([x1, x2], axis=1).astype(np.float32), f"{name}_labels": labels.astype(np.int64), f"{name}_ids": ids}


def write_synthetic_audit(out: Path) -> None:
    """latents.npz, the two axis directions, a random 8x8 VAE and a clean-trained head under `out`."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {"num_classes": np.array(2)}
    for name, count in SAMPLES.items():
        arrays.update(synthetic_split(name, count, rng))
    write_npz(out / LATENT_DIR / LATENTS_FILE, arrays)
    torch.manual_seed(0)
    arch = VAEArchitecture(8, 8, 2, (2, 2))
    save_module(VAE(arch).eval(), out / LATENT_DIR / VAE_FILE, "vae", arch.as_dict(), {"dataset": "synthetic", "num_classes": 2})
    directions = {name: Direction(name, "pca", np.eye(2, dtype=np.float32)[i], "latent", None) for i, name in enumerate(("x1", "x2"))}
    write_npz(out / DIRECTIONS_DIR / "directions.npz", {name: d.vector for name, d in directions.items()})
    records = {name: {"kind": d.kind, "units": d.units, "calibration": None, "vector_sha256": d.sha256} for name, d in directions.items()}
    write_json(out / DIRECTIONS_DIR / DIRECTIONS_JSON, {"schema_version": 1, "latent_dim": 2, "directions": records})
    train_classifier(ClassifierConfig(hidden=(16,), epochs=20, batch_size=128, learning_rate=1e-2, seed=0), out / LATENT_DIR / LATENTS_FILE, out)


def synthetic_config(**finetune: object) -> AuditConfig:
    """The synthetic audit's config: the spec, a quick verifier, and fast fine-tuning settings (overridable)."""
    settings = {
        "epochs": 12,
        "warmup_epochs": 1,
        "ramp_epochs": 2,
        "pieces": 4,
        "batch_size": 256,
        "samples_per_epoch": None,
        "learning_rate": 2e-2,
        "kappa_end": 0.5,
        "validation_samples": 200,
        **finetune,
    }
    return AuditConfig(
        finetune=FinetuneConfig.model_validate(settings), verify=VerifyConfig(samples=300, batch_size=512, max_pieces=16), unit_tests=(SPEC,)
    )


def generator_and_inputs(out: Path) -> tuple[Generator, StepInputs]:
    inputs = resolve_inputs(out, InputsConfig())
    return load_generator(GeneratorConfig(), inputs.vae), inputs
