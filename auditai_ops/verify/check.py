"""`auditai certificate check`: independently re-check a certificate against the config and the models.

The checks are those of `auditai_ops.verify.binding` (integrity and signature, the spec
re-derived from the config, weights, samples, every proof re-run without a time budget so a
slower machine cannot turn a proof into 'unknown', counterexamples, unknowns, reasons, and the
verdict against the config's threshold), plus optional dense sampling of the certified box.
"""

from __future__ import annotations

from pathlib import Path

from auditai_ops.config import AuditConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import StepInputs
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.binding import BINDING, Check, certificate_checks, expected_specs, read_certificate
from auditai_ops.verify.memory import MIB
from auditai_ops.verify.resample import TestLatents, contradicted_samples
from auditai_ops.verify.step import load_test_samples

__all__ = ["Check", "check_certificate"]


def check_certificate(
    path: Path, config: AuditConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None = None, sample_points: int | None = None
) -> list[Check]:
    """Every check of one certificate against the config's unit tests and the models it names; valid when all of them pass.

    sample_points: also evaluate the model at that many evenly spaced points of the certified box
    for every verified sample (`resample.contradicted_samples`, in chunks of `verify.chunk_memory_mb`
    of estimated activations); a prediction that leaves the target class there contradicts the proof.
    """
    certificate = read_certificate(path)
    directions = load_directions(inputs.directions)
    expected = expected_specs(config.unit_tests, config.verify, directions, load_test_samples(inputs.latents, config.verify.seed))
    audited = build_audited_model(config.model, generator, inputs, base_dir)
    checks = certificate_checks(certificate, expected, audited, config.gate.require_signature)
    bound = [c for c in checks if c.kind == BINDING]
    if sample_points is not None and bound and all(c.passed for c in bound):  # dense sampling needs only the right spec, models and samples
        latents = TestLatents.load(inputs.latents)
        verified, used, contradicted = contradicted_samples(certificate, audited.network, directions, latents, sample_points, config.verify.chunk_memory_mb * MIB)
        detail = f"{verified} verified samples, {used} points each: " + (
            "none leaves its target class" if contradicted == 0 else f"{contradicted} leave their target class at a sampled point: the proof is unsound"
        )
        checks.append(Check("dense sampling", contradicted == 0, detail))
    return checks
