"""`auditai certificate check`: independently re-check a certificate against the models.

Checks, each reported with its reason:
1. integrity: the content hash matches the certificate's content (else: tampered);
2. signature: with a key in AUDITAI_SIGNING_KEY, the HMAC of the content hash matches;
3. models: the sha256 of the head, encoder and decoder weights, of every direction vector
   and of the sample-id list match the recorded ones (else: a swapped model or direction);
4. aggregates: the recorded figures and verdict follow from the per-sample verdicts;
5. verdicts: the recorded samples are verified again with the recorded settings (no time
   budget, so a slower machine cannot turn a proof into 'unknown'): every recorded
   'verified' sample is proved again, and every recorded counterexample still misclassifies
   in a plain forward pass.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from auditai_ops.config import ModelConfig, VerifyConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import canonical_json, read_json, sha256_bytes
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import StepInputs
from auditai_ops.verify.audited_model import AuditedModel, build_audited_model
from auditai_ops.verify.certificate import SIGNING_KEY_ENV, content_hash, signature, signing_key
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Budget, Falsifier, LineVerifier, margins
from auditai_ops.verify.resample import TestLatents, contradicted_samples
from auditai_ops.verify.stats import clopper_pearson_lower


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def read_certificate(path: Path) -> dict[str, Any]:
    payload = read_json(path, "certificate")
    missing = {"kind", "content_sha256", "samples", "hashes", "latent_box", "directions", "settings", "aggregates"} - set(payload)
    if payload.get("kind") != "auditai.certificate" or missing:
        raise AuditInputError(f"certificate '{path}': not an auditai certificate (missing {sorted(missing) or ['kind']})")
    return payload


def _integrity(certificate: dict[str, Any]) -> list[Check]:
    intact = content_hash(certificate) == certificate["content_sha256"]
    checks = [Check("integrity", intact, "content hash matches" if intact else "content hash mismatch: the certificate was modified after it was issued")]
    key = signing_key()
    if key is not None:
        recorded = certificate.get("signature")
        if recorded is None:
            checks.append(Check("signature", False, f"{SIGNING_KEY_ENV} is set but the certificate is not signed"))
        else:
            expected = signature(certificate["content_sha256"], key)
            good = hmac.compare_digest(expected["value"], str(recorded.get("value", "")))
            checks.append(Check("signature", good, "HMAC signature matches" if good else "HMAC signature does not match the key"))
    elif "signature" in certificate:
        checks.append(Check("signature", False, f"the certificate is signed; set {SIGNING_KEY_ENV} to check the signature"))
    return checks


def _hash_checks(certificate: dict[str, Any], audited: AuditedModel, inputs: StepInputs) -> tuple[list[Check], dict[str, Any]]:
    directions = load_directions(inputs.directions)
    actual = {**audited.hashes, "sample_ids_sha256": sha256_bytes(canonical_json([s["id"] for s in certificate["samples"]]))}
    recorded_mode = certificate.get("model", {}).get("mode", "latent")
    same_mode = recorded_mode == audited.mode
    checks = [Check("model mode", same_mode, audited.mode if same_mode else f"certificate is for mode {recorded_mode}, the config gives {audited.mode}")]
    for key in sorted(set(actual) | set(certificate["hashes"])):
        recorded, value = certificate["hashes"].get(key), actual.get(key)
        good = recorded == value
        detail = "matches" if good else f"recorded {str(recorded)[:12]}..., found {str(value)[:12]}..."
        checks.append(Check(key, good, detail))
    for entry in certificate["directions"]:
        direction = directions.get(entry["name"])
        good = direction is not None and direction.sha256 == entry["sha256"]
        checks.append(Check(f"direction {entry['name']}", good, "matches" if good else "the direction vector differs or is missing"))
    return checks, directions


def _aggregate_checks(certificate: dict[str, Any]) -> list[Check]:
    verdicts = [s["verdict"] for s in certificate["samples"]]
    aggregates = certificate["aggregates"]
    count = len(verdicts)
    expected = {
        "samples": count,
        "certified_accuracy": verdicts.count(VERIFIED) / count,
        "falsified_fraction": verdicts.count(FALSIFIED) / count,
        "certified_accuracy_lower_bound": clopper_pearson_lower(verdicts.count(VERIFIED), count, aggregates["confidence"]),
    }
    bad = [key for key, value in expected.items() if not np.isclose(aggregates.get(key, np.nan), value, rtol=1e-9, atol=1e-12)]
    spec = certificate["unit_test"]
    measured = expected["certified_accuracy"] if spec.get("threshold_on", "estimate") == "estimate" else expected["certified_accuracy_lower_bound"]
    verdict = "pass" if measured >= spec["threshold"] else "fail"
    if verdict != certificate["verdict"]:
        bad.append("verdict")
    return [Check("aggregates", not bad, "figures and verdict follow from the samples" if not bad else f"inconsistent: {', '.join(bad)}")]


def _reverify(certificate: dict[str, Any], network: torch.nn.Module, directions: dict[str, Any], inputs: StepInputs) -> list[Check]:
    try:
        settings = VerifyConfig.model_validate(certificate["settings"])
    except ValidationError as error:
        raise AuditInputError(f"certificate settings are not valid ({error.error_count()} errors)") from None
    with np.load(inputs.latents, allow_pickle=False) as stored:
        row_of = {sample_id: i for i, sample_id in enumerate(stored["test_ids"].tolist())}
        latents_all = stored["test_z"]
    samples = certificate["samples"]
    missing = [s["id"] for s in samples if s["id"] not in row_of]
    if missing:
        return [Check("verdicts", False, f"{len(missing)} recorded samples are not in '{inputs.latents}' (first: {missing[0]})")]
    latents = latents_all[[row_of[s["id"]] for s in samples]]
    targets = np.array([s["target"] for s in samples], dtype=np.int64)
    matrix = np.stack([directions[d["name"]].vector for d in certificate["directions"]])
    verifier = LineVerifier(network, matrix, torch.device("cpu"), settings.batch_size)
    checks = []

    recorded_verified = np.array([s["verdict"] == VERIFIED for s in samples])
    if recorded_verified.any():
        outcome = verifier.verify(
            latents[recorded_verified],
            targets[recorded_verified],
            np.array(certificate["latent_box"]["low"]),
            np.array(certificate["latent_box"]["high"]),
            settings.methods,
            Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, settings.seed),
            Budget(settings.max_pieces, float("inf")),
            settings.min_margin,
            settings.refine_method,
        )
        lost = int(np.sum(outcome.verdicts != VERIFIED))
        checks.append(Check("verified samples", lost == 0, f"{int(recorded_verified.sum())} proofs reproduced" if lost == 0 else f"{lost} recorded proofs do not reproduce"))

    falsified = [i for i, s in enumerate(samples) if s["verdict"] == FALSIFIED]
    if falsified:
        t = torch.tensor([samples[i]["counterexample"]["t"] for i in falsified], dtype=torch.float32)
        logits = verifier.logits(t, torch.from_numpy(latents[falsified].astype(np.float32)))
        still = margins(logits, torch.from_numpy(targets[falsified])) < 0
        wrong = int((~still).sum())
        checks.append(Check("counterexamples", wrong == 0, f"{len(falsified)} counterexamples confirmed" if wrong == 0 else f"{wrong} recorded counterexamples do not misclassify"))
    return checks


def check_certificate(
    path: Path, model_settings: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None = None, sample_points: int | None = None
) -> list[Check]:
    """Every check of one certificate against the models the config names; valid when all of them pass.

    sample_points: also evaluate the model at that many evenly spaced points of the certified box
    for every verified sample (`resample.contradicted_samples`); a prediction that leaves the
    target class there contradicts the proof.
    """
    certificate = read_certificate(path)
    checks = _integrity(certificate)
    audited = build_audited_model(model_settings, generator, inputs, base_dir)
    hash_checks, directions = _hash_checks(certificate, audited, inputs)
    checks += hash_checks + _aggregate_checks(certificate)
    if all(c.passed for c in hash_checks):
        checks += _reverify(certificate, audited.network, directions, inputs)
        if sample_points is not None:
            verified, used, contradicted = contradicted_samples(certificate, audited.network, directions, TestLatents.load(inputs.latents), sample_points)
            detail = f"{verified} verified samples, {used} points each: " + (
                "none leaves its target class" if contradicted == 0 else f"{contradicted} leave their target class at a sampled point: the proof is unsound"
            )
            checks.append(Check("dense sampling", contradicted == 0, detail))
    return checks
