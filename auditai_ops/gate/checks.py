"""The checks a model version must pass to be certified or promoted, each with its reason.

They read only a package (auditai_ops.gate.package): the audit summary, every certificate
(content hash, signature when a key is set, verdict recomputed from its per-sample
verdicts), that every certificate covers the same weights, and that those weights are the
package's own, recomputed from its files. A check that cannot run fails: the gate fails closed.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from auditai_ops.gate.package import certificates_digest, package_hashes, read_manifest
from auditai_ops.layout import SUMMARY_FILE
from auditai_ops.verify.certificate import content_hash, signature, signing_key
from auditai_ops.verify.check import Check
from auditai_ops.verify.stats import clopper_pearson_lower

NOT_WEIGHTS = ("sample_ids_sha256",)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        return {"_unreadable": str(error)}


def _certificate_checks(name: str, certificate: Any, row: dict[str, Any] | None) -> list[Check]:
    where = f"certificate {name}"
    if not isinstance(certificate, dict) or "_unreadable" in certificate or certificate.get("kind") != "auditai.certificate":
        return [Check(where, False, "missing or unreadable")]
    checks = []
    recomputed = content_hash(certificate)
    intact = recomputed == certificate.get("content_sha256") and (row is None or row.get("certificate_sha256") == recomputed)
    checks.append(Check(f"{where}: content hash", intact, "matches its content and summary.json" if intact else "does not match (tampered, or not the summary's certificate)"))
    key = signing_key()
    if key is not None:
        stored = certificate.get("signature") or {}
        valid = hmac.compare_digest(str(stored.get("value", "")), signature(recomputed, key)["value"])
        checks.append(Check(f"{where}: signature", valid, "valid HMAC-SHA256 with AUDITAI_SIGNING_KEY" if valid else "missing or invalid for AUDITAI_SIGNING_KEY"))
    samples = certificate.get("samples", [])
    spec = certificate.get("unit_test", {})
    verified = sum(s.get("verdict") == "verified" for s in samples)
    measured = verified / len(samples) if samples else 0.0
    if spec.get("threshold_on") == "lower_confidence_bound":
        measured = clopper_pearson_lower(verified, len(samples), certificate.get("aggregates", {}).get("confidence", 0.95)) if samples else 0.0
    threshold = float(certificate.get("threshold", 1.0))
    passed = bool(samples) and measured >= threshold and certificate.get("verdict") == "pass"
    checks.append(
        Check(
            f"{where}: verdict",
            passed,
            f"{verified}/{len(samples)} samples verified, measured {measured:.4f} vs threshold {threshold:g}, recorded verdict {certificate.get('verdict')}",
        )
    )
    return checks


def package_checks(package: Path, expected_tests: tuple[str, ...] = ()) -> tuple[list[Check], dict[str, str]]:
    """Every check of a package, and the certificates' weight hashes (empty when they disagree or are missing)."""
    package = Path(package)
    manifest = read_manifest(package)
    summary = _load(package / SUMMARY_FILE)
    if not isinstance(summary, dict) or "unit_tests" not in summary:
        return [Check("summary", False, "summary.json missing: the audit did not finish")], {}
    rows = {row["name"]: row for row in summary["unit_tests"]}
    failing = [f"{n} ({r['verdict']}{': ' + r['error'] if r.get('error') else ''})" for n, r in rows.items() if r["verdict"] != "pass"]
    checks = [
        Check(
            "summary",
            summary.get("verdict") == "pass" and not failing and bool(rows),
            f"audit verdict {summary.get('verdict')}, {len(rows) - len(failing)}/{len(rows)} unit tests pass" + (f"; not passing: {', '.join(failing)}" if failing else ""),
        )
    ]
    missing_tests = [name for name in expected_tests if name not in rows]
    if missing_tests:
        checks.append(Check("coverage", False, f"configured unit tests without a result: {', '.join(missing_tests)}"))
    certificates = {}
    for name, row in rows.items():
        relative = manifest.get("certificates", {}).get(name)
        certificate = _load(package / relative) if relative else None
        checks += _certificate_checks(name, certificate, row)
        if isinstance(certificate, dict):
            certificates[name] = certificate
    hashes = [{k: v for k, v in c.get("hashes", {}).items() if k not in NOT_WEIGHTS} for c in certificates.values()]
    claimed = hashes[0] if hashes and all(h == hashes[0] for h in hashes) and len(hashes) == len(rows) else {}
    checks.append(
        Check(
            "certificates cover one model",
            bool(claimed),
            f"every certificate names the weights {sorted(claimed)}" if claimed else "certificates are missing or name different weights",
        )
    )
    if claimed:
        try:
            actual = package_hashes(package)
        except Exception as error:  # a version whose weights cannot be loaded is not certified
            checks.append(Check("weights match certificates", False, f"cannot load the version's weights ({type(error).__name__}: {error})"))
        else:
            differing = sorted(k for k in set(claimed) | set(actual) if claimed.get(k) != actual.get(k))
            detail = "recomputed from the version's files: " + ("all match" if not differing else f"differ for {', '.join(differing)}")
            checks.append(Check("weights match certificates", not differing, detail))
    return checks, claimed


def package_certificates_digest(package: Path) -> str:
    """The digest of the package's certificates as listed in its summary (content hashes as recorded)."""
    summary = _load(Path(package) / SUMMARY_FILE)
    rows = summary.get("unit_tests", []) if isinstance(summary, dict) else []
    return certificates_digest({row["name"]: row.get("certificate_sha256") or "" for row in rows})
