"""Spec binding: a certificate is accepted only as a proof of the unit test the config asks.

Everything a decision rests on is re-derived from the config, the directions and the latents,
never read from the certificate: the resolved unit test (`certificate.spec_record`: ranges,
latent box, property, threshold, confidence, sample ids), the targets, the clean predictions
and the verdict. The certificate contributes only per-sample evidence, and every piece of it is
re-checked against the models:

- integrity: the content hash (and the HMAC signature, with a key or when required);
- spec: the certificate's `spec` equals the re-derived record, field by field;
- weights: the recorded weight hashes equal those of the models in front of the checker;
- samples: exactly the expected samples, in order, with the latents' labels as targets;
- evidence: every 'verified' sample is proved again (no time budget), every counterexample
  misclassifies in a plain forward pass, no 'unknown' sample misclassifies on the falsifier's
  deterministic grid, and every `reason` agrees with the clean prediction;
- verdict: certified accuracy recomputed from the checked verdicts against the config's threshold.

Without a key, anyone can recompute a content hash, so integrity alone proves nothing; the
spec and evidence checks are what refuse a forged certificate. A signature additionally
proves who issued it.
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auditai_ops.config import UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import canonical_json, sha256_bytes
from auditai_ops.verify.audited_model import AuditedModel
from auditai_ops.verify.certificate import FLIPPED, MISCLASSIFIED_AT_T0, SIGNING_KEY_ENV, content_hash, sample_ids_sha256, sample_reason, signature, signing_key, spec_record
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier, margins
from auditai_ops.verify.prove_first import verify_prove_first
from auditai_ops.verify.stats import clopper_pearson_lower
from auditai_ops.verify.unit_tests import AuditSamples, ResolvedUnitTest, resolve_unit_tests, unit_test_samples

EVIDENCE, BINDING, VERDICT = "evidence", "binding", "verdict"
MAX_CERTIFICATE_BYTES = 256 * 2**20
"""A certificate of a million samples is about 300 MB; anything larger is refused before parsing."""


@dataclass(frozen=True)
class Check:
    """One named check with its reason.

    `kind`: 'binding' ties a certificate to the config's spec, the models and the samples; 'evidence'
    is the rest of what makes it trustworthy (integrity, signature, proofs); 'verdict' is the spec's pass/fail itself.
    """

    name: str
    passed: bool
    detail: str
    kind: str = EVIDENCE


_Index = Annotated[int, Field(ge=0, lt=2**31)]
_Count = Annotated[int, Field(ge=0, le=2**40)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class _Counterexample(_Strict):
    t: list[float]
    predicted_class: _Index
    margin: float
    image: str | None = None


class _Sample(_Strict):
    id: str
    label: _Index
    target: _Index
    verdict: Literal["verified", "falsified", "unknown"]
    reason: str | None
    decided_by: str | None = None
    margin_lower_bound: float | None = None
    pieces: _Count
    counterexample: _Counterexample | None = None


class _Signature(_Strict):
    algorithm: str
    value: str


class _SpecDirection(_Strict):
    name: str
    vector_sha256: str
    calibration: float | None
    units: str


class _SpecRange(_Strict):
    low: float
    high: float
    units: str


class _Box(_Strict):
    low: list[float]
    high: list[float]


class _Spec(_Strict):
    name: str
    directions: list[_SpecDirection]
    ranges: list[_SpecRange]
    latent_box: _Box
    property: str
    threshold: float
    threshold_on: str
    confidence: float
    samples: _Count
    sample_ids_sha256: str


class _Direction(_Strict):
    name: str


class _Aggregates(_Strict):
    samples: _Count
    certified_accuracy: float
    certified_accuracy_lower_bound: float
    confidence: float
    falsified_fraction: float
    unknown_fraction: float
    clean_accuracy: float
    misclassified_at_t0: _Count
    flipped: _Count
    seconds: float


class _Certificate(_Strict):
    """The structure of a certificate, every field typed; what is not listed is kept but never read."""

    kind: Literal["auditai.certificate"]
    content_sha256: str
    spec: _Spec
    spec_sha256: str
    unit_test: dict[str, Any]
    directions: list[_Direction]
    latent_box: _Box
    settings: dict[str, Any]
    samples: list[_Sample] = Field(max_length=10_000_000)
    aggregates: _Aggregates
    threshold: float
    verdict: str
    hashes: dict[str, str]
    model: dict[str, Any]
    signature: _Signature | None = None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def parse_certificate(data: bytes, where: str) -> dict[str, Any]:
    """A certificate from its bytes, with the structure every check needs; anything else is bad input naming `where` and the field."""
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise AuditInputError(f"{where}: {len(data)} bytes, more than the {MAX_CERTIFICATE_BYTES} a certificate may have")
    try:
        payload = json.loads(data, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise AuditInputError(f"{where}: not valid JSON ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict):
        raise AuditInputError(f"{where}: expected a JSON object (an auditai certificate), got {type(payload).__name__}")
    if "spec" not in payload and payload.get("kind") == "auditai.certificate":
        raise AuditInputError(f"{where}: has no 'spec': issued by an older auditai (schema {payload.get('schema_version')}); run `auditai verify` again")
    try:
        _Certificate.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise AuditInputError(f"{where}: field '{field}': {first['msg']}{more}") from None
    return payload


def read_certificate(path: Path) -> dict[str, Any]:
    """The certificate in `path` (see `parse_certificate`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise AuditInputError(f"certificate '{path}': file not found") from None
    except OSError as error:
        raise AuditInputError(f"certificate '{path}': cannot be read ({error.strerror})") from None
    return parse_certificate(data, f"certificate '{path}'")


@dataclass(frozen=True)
class ExpectedSpec:
    """A configured unit test resolved against the directions, with the samples the config selects and its canonical record."""

    test: ResolvedUnitTest
    samples: AuditSamples
    record: dict[str, Any]

    @property
    def sha256(self) -> str:
        return sha256_bytes(canonical_json(self.record))


def expected_specs(tests: tuple[UnitTestConfig, ...], settings: VerifyConfig, directions: dict[str, Direction], samples: AuditSamples) -> dict[str, ExpectedSpec]:
    """What a certificate of each configured unit test must prove, by unit test name."""
    expected = {}
    for test in resolve_unit_tests(tests, directions):
        chosen = unit_test_samples(test, samples, settings)
        expected[test.spec.name] = ExpectedSpec(test, chosen, spec_record(test, chosen.ids.tolist(), settings.confidence))
    return expected


def integrity_checks(certificate: dict[str, Any], require_signature: bool) -> list[Check]:
    """The content hash, and the signature: checked with a key, required with `require_signature`."""
    intact = content_hash(certificate) == certificate["content_sha256"]
    checks = [Check("integrity", intact, "content hash matches" if intact else "content hash mismatch: the certificate was modified after it was issued")]
    key, recorded = signing_key(), certificate.get("signature")
    if key is None:
        if require_signature:
            checks.append(Check("signature", False, f"gate.require_signature is on but {SIGNING_KEY_ENV} is not set: no certificate can be trusted"))
        elif recorded is not None:
            checks.append(Check("signature", False, f"the certificate is signed; set {SIGNING_KEY_ENV} to check the signature"))
    elif recorded is None:
        checks.append(Check("signature", False, f"{SIGNING_KEY_ENV} is set but the certificate is not signed"))
    else:
        good = hmac.compare_digest(signature(certificate["content_sha256"], key)["value"], str(recorded["value"]))
        checks.append(Check("signature", good, "HMAC signature matches" if good else f"HMAC signature does not match {SIGNING_KEY_ENV} (signed with another key, or altered)"))
    return checks


def _ranges_text(record: dict[str, Any]) -> str:
    parts = []
    for span, direction in zip(record.get("ranges", []), record.get("directions", []), strict=False):
        units = direction.get("units") if span.get("units") == "attribute" else "latent units"
        parts.append(f"{direction.get('name')} [{span.get('low'):g}, {span.get('high'):g}] {units}")
    return " x ".join(parts) or "no range"


def _spec_differences(name: str, recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Each field in which the certificate's spec differs from the config's, said in the spec's own terms."""
    differences = []
    if recorded.get("name") != expected["name"]:
        differences.append(f"the certificate is for unit test '{recorded.get('name')}'")
    if [d.get("name") for d in recorded.get("directions", [])] != [d["name"] for d in expected["directions"]]:
        differences.append(f"the certificate varies {[d.get('name') for d in recorded.get('directions', [])]}, the config asks {[d['name'] for d in expected['directions']]}")
    elif recorded.get("directions") != expected["directions"]:
        differences.append("the certificate's direction vectors or calibrations differ from the directions in front of the checker")
    if recorded.get("ranges") != expected["ranges"]:
        differences.append(f"the certificate covers {_ranges_text(recorded)}, the config asks {_ranges_text(expected)}")
    elif recorded.get("latent_box") != expected["latent_box"]:
        differences.append(f"the certificate's latent box {recorded.get('latent_box')} differs from {expected['latent_box']}, which the directions' calibration gives")
    for field in ("property", "threshold", "threshold_on", "confidence"):
        if recorded.get(field) != expected[field]:
            differences.append(f"the certificate's {field} is {recorded.get(field)!r}, the config asks {expected[field]!r}")
    if (recorded.get("samples"), recorded.get("sample_ids_sha256")) != (expected["samples"], expected["sample_ids_sha256"]):
        differences.append(
            f"the certificate covers {recorded.get('samples')} samples (ids {str(recorded.get('sample_ids_sha256'))[:12]}...), "
            f"the config selects {expected['samples']} (ids {expected['sample_ids_sha256'][:12]}...: count, verify.seed and the test split)"
        )
    return [f"{name}: {difference}" for difference in differences]


def spec_checks(certificate: dict[str, Any], expected: ExpectedSpec) -> list[Check]:
    """The certificate's spec (and the copies of it that readers show) against the config's; each difference names its field."""
    name = expected.test.spec.name
    differences = _spec_differences(name, certificate["spec"], expected.record)
    if certificate["spec_sha256"] != sha256_bytes(canonical_json(certificate["spec"])):
        differences.append(f"{name}: spec_sha256 does not match the certificate's spec")
    shown = {
        "unit_test": (certificate["unit_test"], expected.test.spec.model_dump(mode="json")),
        "latent_box": (certificate["latent_box"], expected.record["latent_box"]),
        "threshold": (certificate["threshold"], expected.record["threshold"]),
        "directions": ([d.get("name") for d in certificate.get("directions", []) if isinstance(d, dict)], [d["name"] for d in expected.record["directions"]]),
    }
    differences += [f"{name}: the certificate's {field} differs from the config's unit test" for field, (found, wanted) in shown.items() if found != wanted]
    if differences:
        return [Check("spec", False, "; ".join(differences))]
    return [Check("spec", True, f"proves unit test '{name}' of the config (spec {expected.sha256[:12]}...)")]


def weight_checks(certificate: dict[str, Any], audited: AuditedModel) -> list[Check]:
    """The recorded weight hashes against the models in front of the checker (sample ids are checked with the samples)."""
    recorded = {k: v for k, v in certificate["hashes"].items() if k != "sample_ids_sha256"}
    recorded_mode = certificate.get("model", {}).get("mode", "latent") if isinstance(certificate.get("model"), dict) else None
    checks = [
        Check(
            "model mode",
            recorded_mode == audited.mode,
            audited.mode if recorded_mode == audited.mode else f"certificate is for mode {recorded_mode}, the config gives {audited.mode}",
        )
    ]
    for key in sorted(set(recorded) | set(audited.hashes)):
        found, actual = recorded.get(key), audited.hashes.get(key)
        checks.append(Check(key, found == actual, "matches" if found == actual else f"recorded {str(found)[:12]}..., found {str(actual)[:12]}... (another model)"))
    return checks


def _sample_checks(certificate: dict[str, Any], expected: ExpectedSpec) -> list[Check]:
    samples = certificate["samples"]
    ids = [s["id"] for s in samples]
    wanted = expected.samples.ids.tolist()
    if ids != wanted:
        missing = len(set(wanted) - set(ids))
        return [Check("samples", False, f"the certificate lists {len(ids)} samples, the config selects {len(wanted)} ({missing} of them missing, or another order)")]
    if certificate["hashes"].get("sample_ids_sha256") != sample_ids_sha256(wanted):
        return [Check("samples", False, "sample_ids_sha256 does not name the certificate's samples")]
    labels = expected.samples.labels.astype(np.int64)
    recorded_labels = np.array([s["label"] for s in samples], np.int64)
    if not np.array_equal(recorded_labels, labels):
        return [Check("samples", False, f"{int(np.sum(recorded_labels != labels))} recorded labels differ from the latents' test labels")]
    return [Check("samples", True, f"the {len(ids)} samples the config selects, with the latents' labels")]


def _clean_predictions(verifier: LineVerifier, latents: np.ndarray, batch_size: int) -> np.ndarray:
    k = verifier.directions.shape[0]
    z = torch.from_numpy(latents.astype(np.float32))
    parts = [verifier.logits(torch.zeros(len(chunk), k), chunk).argmax(dim=1).cpu() for chunk in z.split(batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.int64)


def _evidence_checks(certificate: dict[str, Any], expected: ExpectedSpec, network: torch.nn.Module) -> tuple[list[Check], np.ndarray]:
    """Proofs, counterexamples, unknowns and reasons re-checked against the network; returns the checks and the targets they used."""
    try:
        settings = VerifyConfig.model_validate(certificate["settings"])
    except ValidationError as error:
        raise AuditInputError(f"certificate settings are not valid ({error.error_count()} errors, first: {'.'.join(map(str, error.errors()[0]['loc']))})") from None
    samples, test = certificate["samples"], expected.test
    latents = expected.samples.latents
    verifier = LineVerifier(network, test.matrix, torch.device("cpu"), settings.batch_size)
    clean = _clean_predictions(verifier, latents, settings.batch_size)
    targets = expected.samples.labels.astype(np.int64) if test.spec.property == "true_label" else clean
    verdicts = np.array([s["verdict"] for s in samples], dtype=object)
    checks = []
    if not np.array_equal(np.array([s["target"] for s in samples], np.int64), targets):
        checks.append(Check("targets", False, f"recorded targets differ from the {test.spec.property} targets the models give"))
    proved = verdicts == VERIFIED
    if proved.any():
        outcome = verify_prove_first(
            verifier,
            latents[proved],
            targets[proved],
            test.t_low,
            test.t_high,
            settings.methods,
            Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, settings.seed),
            Budget(settings.max_pieces, float("inf")),
            settings.min_margin,
            settings.refine_method,
        )
        lost = int(np.sum(outcome.verdicts != VERIFIED))
        checks.append(Check("verified samples", lost == 0, f"{int(proved.sum())} proofs reproduced" if lost == 0 else f"{lost} recorded proofs do not reproduce"))
    falsified = np.flatnonzero(verdicts == FALSIFIED)
    if len(falsified):
        points = [samples[i]["counterexample"] for i in falsified]
        if any(p is None or len(p["t"]) != len(test.directions) for p in points):
            checks.append(Check("counterexamples", False, "a falsified sample has no counterexample point of the unit test's dimension"))
        else:
            t = torch.tensor([p["t"] for p in points], dtype=torch.float32)
            inside = bool(((t >= torch.from_numpy(test.t_low - 1e-6)) & (t <= torch.from_numpy(test.t_high + 1e-6))).all())
            still = margins(verifier.logits(t, torch.from_numpy(latents[falsified].astype(np.float32))), torch.from_numpy(targets[falsified])) < 0
            wrong = int((~still).sum())
            good = wrong == 0 and inside
            detail = (
                f"{len(falsified)} counterexamples confirmed"
                if good
                else ("a counterexample lies outside the box" if not inside else f"{wrong} recorded counterexamples do not misclassify")
            )
            checks.append(Check("counterexamples", good, detail))
    undecided = np.flatnonzero(verdicts == UNKNOWN)
    if len(undecided):
        refuted = int(verifier.grid_counterexamples(latents[undecided], targets[undecided], test.t_low, test.t_high, settings.falsify_grid).sum())
        checks.append(
            Check(
                "unknown samples",
                refuted == 0,
                f"{len(undecided)} undecided, none falsifiable on the search grid"
                if refuted == 0
                else f"{refuted} recorded 'unknown' samples misclassify on the search grid (counterexamples hidden)",
            )
        )
    reasons = [sample_reason(str(v), int(t), int(p)) for v, t, p in zip(verdicts, targets, clean, strict=True)]
    aggregates = certificate["aggregates"]
    consistent = [s.get("reason") for s in samples] == reasons and (aggregates.get("misclassified_at_t0"), aggregates.get("flipped")) == (
        reasons.count(MISCLASSIFIED_AT_T0),
        reasons.count(FLIPPED),
    )
    counts = f"{reasons.count(MISCLASSIFIED_AT_T0)} misclassified at t = 0, {reasons.count(FLIPPED)} flipped along the direction"
    checks.append(Check("reasons", consistent, counts if consistent else f"recorded reasons or their counts differ from the clean predictions ({counts})"))
    return checks, targets


def verdict_check(certificate: dict[str, Any], expected: ExpectedSpec) -> tuple[Check, bool]:
    """Certified accuracy from the recorded verdicts against the config's threshold; returns the check and whether the spec passes."""
    spec = expected.record
    count = len(certificate["samples"])
    verified = sum(s["verdict"] == VERIFIED for s in certificate["samples"])
    estimate = verified / count if count else 0.0
    measured = estimate if spec["threshold_on"] == "estimate" else clopper_pearson_lower(verified, count, spec["confidence"])
    passed = count > 0 and measured >= spec["threshold"]
    recorded = certificate["verdict"]
    agrees = recorded == ("pass" if passed else "fail")
    detail = f"{verified}/{count} samples verified, measured {measured:.4f} vs threshold {spec['threshold']:g} ({spec['threshold_on']})"
    if not agrees:
        return Check("verdict", False, f"{detail}; the certificate records '{recorded}'"), False
    return Check("verdict", passed, detail, VERDICT), passed


def certificate_checks(certificate: dict[str, Any], expected: dict[str, ExpectedSpec], audited: AuditedModel, require_signature: bool) -> list[Check]:
    """Every check of one parsed certificate against the config's unit tests and the models; the proof is re-run only when spec, weights and samples hold."""
    name = certificate["spec"].get("name")
    spec = expected.get(name) if isinstance(name, str) else None
    checks = integrity_checks(certificate, require_signature)
    if spec is None:
        return [*checks, Check("spec", False, f"the config has no unit test '{name}' (configured: {sorted(expected) or 'none'}): a certificate proves only what the config asks")]
    bound = [replace(c, kind=BINDING) for c in spec_checks(certificate, spec) + weight_checks(certificate, audited) + _sample_checks(certificate, spec)]
    checks += bound
    if not all(c.passed for c in bound):
        return [*checks, Check("verdict", False, "not recomputed: the certificate is not for this spec, model and samples")]
    evidence, _ = _evidence_checks(certificate, spec, audited.network)
    verdict, _ = verdict_check(certificate, spec)
    return [*checks, *evidence, verdict]
