"""Where each step's artifacts live in an audit folder, and where a step reads its inputs.

By default every step reads the outputs of earlier steps from the same folder (`--out`);
the config's `inputs` section can point any of them elsewhere (paths relative to the config
file), so a step can run on artifacts produced by another run or another system.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditai_ops.config import InputsConfig

LATENT_DIR = "latent"
VAE_FILE = "vae.safetensors"
LATENTS_FILE = "latents.npz"
RECONSTRUCTIONS_PNG = "reconstructions.png"
DIRECTIONS_DIR = "directions"
DIRECTIONS_JSON = "directions.json"
VECTORS_FILE = "directions.npz"
CLASSIFIER_DIR = "classifier"
HEAD_FILE = "head.safetensors"
CERTIFICATES_DIR = "certificates"
SUMMARY_FILE = "summary.json"
JUNIT_FILE = "junit.xml"
SHARDS_DIR = "shards"
COUNTEREXAMPLES_DIR = "counterexamples"
REPORT_FILE = "report.html"
TRACKING_FILE = "tracking.json"
GATE_FILE = "gate.json"


@dataclass(frozen=True)
class StepInputs:
    """Paths of the artifacts that later steps read."""

    vae: Path
    latents: Path
    directions: Path
    head: Path


def resolve_inputs(out_dir: Path, inputs: InputsConfig, base_dir: Path | None = None) -> StepInputs:
    """Each input from the config when given (relative to `base_dir`), else its place in `out_dir`."""
    out_dir = Path(out_dir)

    def pick(configured: str | None, default: Path) -> Path:
        if configured is None:
            return default
        path = Path(configured)
        return path if path.is_absolute() or base_dir is None else base_dir / path

    return StepInputs(
        vae=pick(inputs.vae, out_dir / LATENT_DIR / VAE_FILE),
        latents=pick(inputs.latents, out_dir / LATENT_DIR / LATENTS_FILE),
        directions=pick(inputs.directions, out_dir / DIRECTIONS_DIR),
        head=pick(inputs.head, out_dir / CLASSIFIER_DIR / HEAD_FILE),
    )
