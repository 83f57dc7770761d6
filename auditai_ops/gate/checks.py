"""The checks an audit must pass before a model version is certified or promoted, each with its reason.

`audit_checks` reads an audit folder (the gate's output folder, or a registered version's
package) as untrusted input: summary.json and every certificate it names (paths kept inside the
folder). Every unit test the config asks must have a certificate, and each certificate is
checked against the config and the models by `auditai_ops.verify.binding`. The evidence also
names the exact files the decision rests on (`digest`), so a decision recorded for one folder
never speaks for another. A check that cannot run fails: the gate fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditai_ops.audit_files import JSON_SUFFIX, SUMMARY_NAME, audit_digest, contained_path, read_summary
from auditai_ops.errors import AuditInputError
from auditai_ops.verify.audited_model import AuditedModel
from auditai_ops.verify.binding import VERDICT, Check, ExpectedSpec, certificate_checks, parse_certificate

__all__ = ["AuditEvidence", "Check", "audit_checks"]


@dataclass(frozen=True)
class AuditEvidence:
    """The checks of one audit folder, and the files they read."""

    checks: list[Check]
    digest: str | None = None
    """`audit_digest` of the summary and certificates read; None when the folder had no readable summary."""
    certificates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def genuine(self) -> bool:
        """Every check but the specs' own verdicts holds: a true audit of this config and model, passing or not."""
        return all(check.passed or check.kind == VERDICT for check in self.checks)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail" if self.genuine else "invalid"


def audit_checks(folder: Path, expected: dict[str, ExpectedSpec], audited: AuditedModel, require_signature: bool) -> AuditEvidence:
    """Every check of the audit in `folder` against the config's unit tests (`expected`) and the audited models."""
    folder = Path(folder)
    if not expected:
        return AuditEvidence([Check("config", False, "the config asks no unit tests: give the audit's config, whose unit tests the certificates must prove")])
    try:
        summary = read_summary(folder)
    except AuditInputError as error:
        return AuditEvidence([Check("summary", False, f"summary.json missing or unreadable: the audit did not finish ({error})")])
    rows: dict[str, tuple[int, dict[str, Any]]] = {}
    checks: list[Check] = []
    for index, row in enumerate(summary["unit_tests"]):  # type: ignore[arg-type]
        if row["name"] in rows:
            checks.append(Check("summary", False, f"unit test '{row['name']}' appears twice"))
        rows[row["name"]] = (index, row)
    extra = sorted(set(rows) - set(expected))
    if extra:
        checks.append(Check("summary", False, f"results for unit tests the config does not ask: {', '.join(extra)}"))
    files: dict[str, Path] = {}
    certificates: dict[str, dict[str, Any]] = {}
    for name in expected:
        if name not in rows:
            checks.append(Check(f"{name}", False, "the config asks this unit test, but the audit has no result for it"))
            continue
        index, row = rows[name]
        if row.get("certificate") is None:
            checks.append(Check(f"{name}", False, f"no certificate (unit test {row.get('verdict')}: {row.get('error')})"))
            continue
        try:
            path = contained_path(folder, row["certificate"], f"summary.json unit_tests[{index}].certificate", JSON_SUFFIX)
            certificate = parse_certificate(path.read_bytes(), f"certificate '{row['certificate']}'")
        except AuditInputError as error:
            checks.append(Check(f"{name}: certificate", False, str(error)))
            continue
        files[name], certificates[name] = path, certificate
        listed = row.get("certificate_sha256") == certificate["content_sha256"] and row.get("verdict") == certificate["verdict"]
        checks.append(Check(f"{name}: summary", listed, "summary.json lists this certificate" if listed else "summary.json names another certificate or verdict"))
        checks += [Check(f"{name}: {c.name}", c.passed, c.detail, c.kind) for c in certificate_checks(certificate, expected, audited, require_signature)]
    recorded = summary.get("verdict")
    passing = all(c.passed for c in checks)
    consistent = recorded in ("pass", "fail", "error") and (recorded == "pass") == passing
    checks.append(Check("summary verdict", consistent, f"recorded '{recorded}'" if consistent else f"recorded '{recorded}', but the certificates say otherwise"))
    return AuditEvidence(checks, audit_digest(contained_path(folder, SUMMARY_NAME, SUMMARY_NAME, JSON_SUFFIX), files), certificates)
