"""Certificates: one self-describing, content-hashed JSON record per unit test.

A certificate states the spec as written and the latent box actually verified, the
verification settings and methods, every sample's verdict, margin lower bound, number of
branch-and-bound pieces and counterexample, the aggregates (with a Clopper-Pearson lower
confidence bound) and verdict, the sha256 of every model's weights, of the direction vectors
and of the sample-id list, the software versions, and `content_sha256` = sha256 of the
canonical JSON of all other fields. With a signing key, `signature` is an HMAC of that hash.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from auditai_ops.config import VerifyConfig
from auditai_ops.fileio import canonical_json, sha256_bytes, write_json
from auditai_ops.layout import CERTIFICATES_DIR
from auditai_ops.verify.audited_model import AuditedModel
from auditai_ops.verify.lirpa_compat import applied_patches
from auditai_ops.verify.unit_tests import UnitTestResult

SCHEMA_VERSION = 1


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def software_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "auto_LiRPA": package_version("auto_LiRPA"),
        "auditai-ops": package_version("auditai-ops"),
    }


def _number(value: float) -> float | None:
    """JSON has no NaN: missing numbers are null."""
    return None if math.isnan(value) else float(value)


def certificate_payload(result: UnitTestResult, audited: AuditedModel, settings: VerifyConfig, images: dict[str, str]) -> dict[str, Any]:
    """The certificate of one unit test, including its content hash."""
    test, outcomes = result.test, result.outcomes
    samples = []
    for i, sample_id in enumerate(result.samples.ids.tolist()):
        counterexample = None
        if outcomes.counterexample_class[i] >= 0:
            counterexample = {
                "t": [float(v) for v in outcomes.counterexample_t[i]],
                "predicted_class": int(outcomes.counterexample_class[i]),
                "margin": float(outcomes.counterexample_margin[i]),
                "image": images.get(sample_id),
            }
        samples.append(
            {
                "id": sample_id,
                "label": int(result.samples.labels[i]),
                "target": int(result.targets[i]),
                "verdict": str(outcomes.verdicts[i]),
                "decided_by": str(outcomes.decided_by[i]) or None,
                "margin_lower_bound": _number(outcomes.margin_lower_bounds[i]),
                "pieces": int(outcomes.pieces[i]),
                "counterexample": counterexample,
            }
        )
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "auditai.certificate",
        "unit_test": test.spec.model_dump(mode="json"),
        "directions": [{"name": d.name, "kind": d.kind, "units": d.units, "calibration": d.calibration, "sha256": d.sha256} for d in test.directions],
        "latent_box": {"low": test.t_low.tolist(), "high": test.t_high.tolist()},
        "settings": settings.model_dump(mode="json"),
        "methods": sorted(set(outcomes.decided_by.tolist()) - {""}),
        "auto_lirpa_patches": list(applied_patches()),
        "samples": samples,
        "aggregates": {
            "samples": len(samples),
            "certified_accuracy": result.certified_accuracy,
            "certified_accuracy_lower_bound": result.certified_accuracy_lower_bound,
            "confidence": result.confidence,
            "falsified_fraction": result.falsified_fraction,
            "unknown_fraction": result.unknown_fraction,
            "clean_accuracy": result.clean_accuracy,
            "seconds": result.seconds,
        },
        "threshold": test.spec.threshold,
        "verdict": result.verdict,
        "model": audited.description,
        "hashes": {**audited.hashes, "sample_ids_sha256": sha256_bytes(canonical_json(result.samples.ids.tolist()))},
        "versions": software_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    payload["content_sha256"] = content_hash(payload)
    key = signing_key()
    if key is not None:
        payload["signature"] = signature(payload["content_sha256"], key)
    return payload


UNHASHED_FIELDS = ("content_sha256", "signature")
SIGNING_KEY_ENV = "AUDITAI_SIGNING_KEY"


def content_hash(payload: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of every field except `content_sha256` and `signature`."""
    return sha256_bytes(canonical_json({k: v for k, v in payload.items() if k not in UNHASHED_FIELDS}))


def signing_key() -> bytes | None:
    """The HMAC key from the environment (never logged), or None when unset."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def signature(content_sha256: str, key: bytes) -> dict[str, str]:
    """HMAC-SHA256 of the content hash: whoever holds the key can tell the certificate was issued with it."""
    return {"algorithm": "hmac-sha256", "value": hmac.new(key, content_sha256.encode(), hashlib.sha256).hexdigest()}


def write_certificate(result: UnitTestResult, audited: AuditedModel, settings: VerifyConfig, images: dict[str, str], out_dir: Path) -> tuple[Path, dict[str, Any]]:
    payload = certificate_payload(result, audited, settings, images)
    path = Path(out_dir) / CERTIFICATES_DIR / f"{result.test.spec.name}.json"
    write_json(path, payload)
    return path, payload
