"""A small hand-written audit folder (no model run): summary.json, two certificates, counterexample PNGs, directions, reconstructions."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def png_bytes(value: int) -> bytes:
    """A distinct, real 4x4 grey PNG per `value`."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _sample(index: int, reason: str | None, image: str | None) -> dict[str, Any]:
    counterexample = None if image is None else {"t": [1.5], "predicted_class": 7, "margin": -0.25, "image": image}
    return {"id": f"mnist:test:{index}", "label": 1, "target": 1, "verdict": "verified" if reason is None else "falsified", "reason": reason, "counterexample": counterexample}


def _row(name: str, certificate: str | None, **figures: Any) -> dict[str, Any]:
    return {
        "name": name,
        "direction": "slant",
        "ranges": [{"low": -5.0, "high": 5.0, "units": "attribute", "direction_units": "degrees"}],
        "threshold": 0.9,
        "threshold_on": "estimate",
        "samples": 4,
        "certified_accuracy": 0.5,
        "certified_accuracy_lower_bound": 0.2,
        "falsified_fraction": 0.5,
        "unknown_fraction": 0.0,
        "clean_accuracy": 0.75,
        "seconds": 1.0,
        "verdict": "fail",
        "error": None,
        "certificate": certificate,
        "certificate_sha256": f"sha-of-{name}",
        **figures,
    }


@pytest.fixture
def audit_folder(tmp_path: Path) -> Path:
    """Unit tests 'slant' (3 counterexamples: one clean error at t = 0, two flips; counts given) and 'thick' (an older row without the counts)."""
    out = tmp_path / "audit"
    for index, name in enumerate(("slant_0.png", "slant_1.png", "slant_2.png", "thick_0.png")):
        folder = out / "counterexamples" / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(10 + index))
    slant = [
        _sample(0, "misclassified at t = 0", "counterexamples/slant/slant_0.png"),
        _sample(1, "flipped along the direction", "counterexamples/slant/slant_1.png"),
        _sample(2, "flipped along the direction", "counterexamples/slant/slant_2.png"),
        _sample(3, None, None),
    ]
    thick = [_sample(0, None, None), {**_sample(1, None, "counterexamples/thick/thick_0.png"), "verdict": "falsified", "reason": None}]
    for name, samples in (("slant", slant), ("thick", thick)):
        write_json(out / "certificates" / f"{name}.json", {"kind": "auditai.certificate", "samples": samples, "verdict": "fail", "content_sha256": f"content-of-{name}"})
    write_json(
        out / "summary.json",
        {
            "kind": "auditai.summary",
            "verdict": "fail",
            "created_at": "2024-01-01T00:00:00+00:00",
            "model": {"kind": "test"},
            "models": {"head": "abc"},
            "unit_tests": [_row("slant", "certificates/slant.json", misclassified_at_t0=1, flipped=2), _row("thick", "certificates/thick.json")],
        },
    )
    slant_direction = {"kind": "probe", "units": "degrees", "calibration": 2.0, "traversal_png": "slant.png"}
    write_json(out / "directions" / "directions.json", {"strip_steps": [-3.0, 3.0], "directions": {"slant": slant_direction}})
    (out / "directions" / "slant.png").write_bytes(png_bytes(200))
    (out / "latent").mkdir()
    (out / "latent" / "reconstructions.png").write_bytes(png_bytes(201))
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the audit folder with a secret (a real PNG, so only containment can refuse it) and a certificate."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.png").write_bytes(png_bytes(99) + b"TOP-SECRET")
    write_json(folder / "cert.json", {"samples": [], "verdict": "pass", "content_sha256": "content-of-outside"})
    return folder
