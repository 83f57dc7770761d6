"""The `verify` step: run every unit test, write certificates, `summary.json` and `junit.xml`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from auditai_ops.config import ModelConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_json, write_text
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import CERTIFICATES_DIR, JUNIT_FILE, SUMMARY_FILE, StepInputs
from auditai_ops.progress import progress
from auditai_ops.report.render import junit_xml
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.certificate import write_certificate
from auditai_ops.verify.counterexamples import save_counterexample_images
from auditai_ops.verify.engine import resolve_device
from auditai_ops.verify.range_curve import range_curve
from auditai_ops.verify.unit_tests import ERROR, FAIL, PASS, AuditSamples, ResolvedUnitTest, resolve_unit_tests, run_unit_test

_LOGGER = logging.getLogger(__name__)
SUMMARY_FIGURES = ("samples", "certified_accuracy", "certified_accuracy_lower_bound", "falsified_fraction", "unknown_fraction", "clean_accuracy", "seconds")


def load_test_samples(path: Path, seed: int) -> AuditSamples:
    """The test split's latents, labels and ids from `latents.npz`, in a fixed pseudo-random order (seeded)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            ids, latents, labels = stored["test_ids"], stored["test_z"], stored["test_labels"]
    except FileNotFoundError:
        raise AuditInputError(f"latents '{path}': file not found (run `auditai map-latents` first)") from None
    if not np.isfinite(latents).all():
        raise AuditInputError(f"latents '{path}': test_z contains NaN or infinite values")
    order = np.random.default_rng(seed).permutation(len(ids))
    return AuditSamples(ids[order], latents[order], labels[order])


def _row(test: ResolvedUnitTest) -> dict[str, Any]:
    spec = test.spec
    return {
        "name": spec.name,
        "direction": " x ".join(spec.direction),
        "ranges": [{**span.model_dump(mode="json"), "direction_units": d.units} for span, d in zip(spec.range, test.directions, strict=True)],
        "latent_box": {"low": test.t_low.tolist(), "high": test.t_high.tolist()},
        "property": spec.property,
        "threshold": spec.threshold,
        "threshold_on": spec.threshold_on,
    }


def verify_audit(
    tests: tuple[UnitTestConfig, ...],
    settings: VerifyConfig,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    out_dir: Path,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Prove or falsify every unit test; write certificates, `summary.json` and `junit.xml` to `out_dir`."""
    out_dir = Path(out_dir)
    if not tests:
        raise AuditInputError("unit_tests: no unit tests are configured; add at least one under 'unit_tests'")
    device = resolve_device(settings.device)
    resolved = resolve_unit_tests(tests, load_directions(inputs.directions))
    audited = build_audited_model(model_settings, generator, inputs, base_dir)
    network = audited.network.to(device)
    samples = load_test_samples(inputs.latents, settings.seed)
    rows = []
    for test in progress(iterable=resolved, desc="verify unit tests", unit="test"):
        row = _row(test)
        try:
            result = run_unit_test(test, network, samples, settings, device)
            images = save_counterexample_images(audited.decoder, result, out_dir)
            path, certificate = write_certificate(result, audited, settings, images, out_dir)
            curve = range_curve(result, network, settings, device)
        except Exception as error:  # one broken unit test must not hide the others' results
            _LOGGER.exception("unit test '%s' could not run", test.spec.name)
            rows.append({**row, "verdict": ERROR, "error": f"{type(error).__name__}: {error}", "samples": 0})
            continue
        aggregates = certificate["aggregates"]
        rows.append(
            {
                **row,
                **{key: aggregates[key] for key in SUMMARY_FIGURES},
                "verdict": result.verdict,
                "error": None,
                "certificate": str(path.relative_to(out_dir)),
                "certificate_sha256": certificate["content_sha256"],
                "range_curve": curve,
            }
        )
    verdicts = {row["verdict"] for row in rows}
    summary = {
        "schema_version": 1,
        "kind": "auditai.summary",
        "verdict": ERROR if ERROR in verdicts else FAIL if FAIL in verdicts else PASS,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": audited.description,
        "models": audited.hashes,
        "certificates_dir": CERTIFICATES_DIR,
        "unit_tests": rows,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    write_text(out_dir / JUNIT_FILE, junit_xml(summary))
    return summary
