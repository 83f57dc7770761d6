"""Certificates: one self-describing, content-hashed JSON record per unit test.

A certificate states the spec it proves as `spec` (the resolved unit test: name, directions
with their vector hashes and calibrations, the ranges as written, the latent box, property,
threshold, `threshold_on` and the expected sample ids) with `spec_sha256` over its canonical
JSON; every check re-derives that record from the config, the directions and the latents and
refuses a certificate whose `spec` differs. It also holds the spec as written, the latent box actually verified, the
verification settings and methods, every sample's verdict, why it is not verified
(`reason`), margin lower bound, number of branch-and-bound pieces and counterexample, the aggregates (with a Clopper-Pearson lower
confidence bound, and `budget_exhausted`: "time" when the opt-in wall-clock budget stopped
samples, so that a faster machine could decide more of them; "pieces" when the deterministic
total split budget did; null otherwise) and verdict, the sha256 of every model's weights, of the direction vectors
and of the sample-id list, the artifacts reused from other runs (by sha256), the software versions, and `content_sha256` = sha256 of the
canonical JSON of all other fields. With a signing key, `signature` is an HMAC of that hash.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from auditai_ops.audit_files import file_sha256
from auditai_ops.config import VerifyConfig
from auditai_ops.fileio import canonical_json, sha256_bytes, write_json
from auditai_ops.layout import CERTIFICATES_DIR
from auditai_ops.verify.audited_model import AuditedModel
from auditai_ops.verify.lirpa_compat import applied_patches, auto_lirpa_version
from auditai_ops.verify.unit_tests import ResolvedUnitTest, UnitTestResult

SCHEMA_VERSION = 2
MISCLASSIFIED_AT_T0 = "misclassified at t = 0"
FLIPPED = "flipped along the direction"
UNDECIDED = "undecided"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def software_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "auto_LiRPA": auto_lirpa_version(),  # the module loaded, which a source checkout may make another than the installed one
        "auditai-ops": package_version("auditai-ops"),
    }


def _number(value: float) -> float | None:
    """JSON has no NaN: missing numbers are null."""
    return None if math.isnan(value) else float(value)


def sample_ids_sha256(ids: list[str]) -> str:
    """sha256 of the ordered sample-id list: names exactly which samples a unit test ran on."""
    return sha256_bytes(canonical_json(ids))


def spec_record(test: ResolvedUnitTest, sample_ids: list[str], confidence: float) -> dict[str, Any]:
    """The canonical resolved unit test: what a certificate of it must prove, derived from the config, the directions and the latents alone."""
    spec = test.spec
    return {
        "name": spec.name,
        "directions": [{"name": d.name, "vector_sha256": d.sha256, "calibration": d.calibration, "units": d.units} for d in test.directions],
        "ranges": [span.model_dump(mode="json") for span in spec.range],
        "latent_box": {"low": test.t_low.tolist(), "high": test.t_high.tolist()},
        "property": spec.property,
        "threshold": spec.threshold,
        "threshold_on": spec.threshold_on,
        "confidence": confidence,
        "samples": len(sample_ids),
        "sample_ids_sha256": sample_ids_sha256(sample_ids),
    }


def sample_reason(verdict: str, target: int, clean_prediction: int) -> str | None:
    """Why a sample is not verified: wrong before any move (a clean error), a counterexample along the direction, or no decision."""
    if verdict == "verified":
        return None
    if clean_prediction != target:
        return MISCLASSIFIED_AT_T0
    return FLIPPED if verdict == "falsified" else UNDECIDED


def artifact_sha256(path: Path) -> str:
    """sha256 of a file (a safetensors file together with its json record), or of a folder's files (relative names and bytes, sorted)."""
    path = Path(path)
    record = path.with_suffix(".json")
    if path.suffix == ".safetensors" and record.is_file():
        return sha256_bytes(canonical_json({path.name: file_sha256(path), record.name: file_sha256(record)}))
    if path.is_file():
        return file_sha256(path)
    return sha256_bytes(canonical_json({str(f.relative_to(path)): file_sha256(f) for f in sorted(path.rglob("*")) if f.is_file()}))


def certificate_payload(
    result: UnitTestResult, audited: AuditedModel, settings: VerifyConfig, images: dict[str, str], reused: Mapping[str, Path] | None = None
) -> dict[str, Any]:
    """The certificate of one unit test, including its spec hash and content hash.

    reused: artifacts of other runs the audit read (input name -> file or folder), recorded by sha256.
    """
    test, outcomes = result.test, result.outcomes
    ids = result.samples.ids.tolist()
    spec = spec_record(test, ids, settings.confidence)
    reasons = [sample_reason(str(v), int(t), int(p)) for v, t, p in zip(outcomes.verdicts, result.targets, result.predictions, strict=True)]
    samples = []
    for i, sample_id in enumerate(ids):
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
                "reason": reasons[i],
                "decided_by": str(outcomes.decided_by[i]) or None,
                "margin_lower_bound": _number(outcomes.margin_lower_bounds[i]),
                "pieces": int(outcomes.pieces[i]),
                "counterexample": counterexample,
            }
        )
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "auditai.certificate",
        "spec": spec,
        "spec_sha256": sha256_bytes(canonical_json(spec)),
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
            "misclassified_at_t0": reasons.count(MISCLASSIFIED_AT_T0),
            "flipped": reasons.count(FLIPPED),
            "seconds": result.seconds,
            "budget_exhausted": result.budget_exhausted,
            "stopped_by_budget": result.stopped_by_budget,
        },
        "threshold": test.spec.threshold,
        "verdict": result.verdict,
        "model": audited.description,
        "hashes": {**audited.hashes, "sample_ids_sha256": spec["sample_ids_sha256"]},
        "reused_artifacts": {name: artifact_sha256(path) for name, path in sorted((reused or {}).items())},
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


def write_certificate(
    result: UnitTestResult, audited: AuditedModel, settings: VerifyConfig, images: dict[str, str], out_dir: Path, reused: Mapping[str, Path] | None = None
) -> tuple[Path, dict[str, Any]]:
    payload = certificate_payload(result, audited, settings, images, reused)
    path = Path(out_dir) / CERTIFICATES_DIR / f"{result.test.spec.name}.json"
    write_json(path, payload)
    return path, payload
