"""The `verify` step: run every unit test, write certificates, `summary.json` and `junit.xml`.

The work can be split: `verify_shard` verifies shard i of N (whole blocks of samples, see
`Shard`) into one file, and `merge_shards` turns the N shard files into the certificates,
summary and junit report that `verify_audit` writes in one go. Blocks are verified with the
same seeds in either layout, so the merged certificates equal the unsharded ones apart from
timings and creation times.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from auditai_ops.config import ModelConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import canonical_json, sha256_bytes, write_json, write_npz, write_text
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import CERTIFICATES_DIR, JUNIT_FILE, SHARDS_DIR, SUMMARY_FILE, StepInputs
from auditai_ops.progress import progress
from auditai_ops.report.render import junit_xml
from auditai_ops.verify.audited_model import AuditedModel, build_audited_model
from auditai_ops.verify.certificate import write_certificate
from auditai_ops.verify.counterexamples import save_counterexample_images
from auditai_ops.verify.engine import SampleOutcomes, resolve_device
from auditai_ops.verify.range_curve import range_curve
from auditai_ops.verify.unit_tests import ERROR, FAIL, PASS, AuditSamples, ResolvedUnitTest, Shard, UnitTestResult, resolve_unit_tests, run_unit_test, unit_test_samples

_LOGGER = logging.getLogger(__name__)
SUMMARY_FIGURES = (
    "samples",
    "certified_accuracy",
    "certified_accuracy_lower_bound",
    "falsified_fraction",
    "unknown_fraction",
    "clean_accuracy",
    "misclassified_at_t0",
    "flipped",
    "seconds",
)
OUTCOME_FIELDS = tuple(SampleOutcomes.__dataclass_fields__)


def load_test_samples(path: Path, seed: int) -> AuditSamples:
    """The test split's latents, labels and ids from `latents.npz`, in a fixed pseudo-random order (seeded).

    Every array is checked (`read_latent_split`): a missing, damaged or ill-shaped file is bad input.
    """
    from auditai_ops.latent.latents_file import read_latent_split

    split = read_latent_split(path, "test")
    order = np.random.default_rng(seed).permutation(len(split.ids))
    return AuditSamples(split.ids[order], split.latents[order], split.labels[order])


@dataclass(frozen=True)
class _Audit:
    """What every unit test of an audit runs against."""

    tests: list[ResolvedUnitTest]
    audited: AuditedModel
    samples: AuditSamples
    fingerprint: str
    """sha256 of the specs, the settings (but the device), the model hashes and the sample ids: shards of one audit share it."""


def _prepare(tests: tuple[UnitTestConfig, ...], settings: VerifyConfig, model_settings: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None) -> _Audit:
    if not tests:
        raise AuditInputError("unit_tests: no unit tests are configured; add at least one under 'unit_tests'")
    resolved = resolve_unit_tests(tests, load_directions(inputs.directions))
    audited = build_audited_model(model_settings, generator, inputs, base_dir)
    samples = load_test_samples(inputs.latents, settings.seed)
    identity = {
        "unit_tests": [test.model_dump(mode="json") for test in tests],
        "settings": settings.model_dump(mode="json", exclude={"device"}),
        "models": audited.hashes,
        "directions": [[d.sha256 for d in test.directions] for test in resolved],
        "sample_ids": samples.ids.tolist(),
    }
    return _Audit(resolved, audited, samples, sha256_bytes(canonical_json(identity)))


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


def _finish(audit: _Audit, results: list[UnitTestResult | str], settings: VerifyConfig, out_dir: Path, reused: Mapping[str, Path] | None) -> dict[str, Any]:
    """Certificates, counterexample images, range curves, `summary.json` and `junit.xml` from per-test results (or error messages)."""
    device = resolve_device(settings.device)
    network = audit.audited.network.to(device)
    rows = []
    for test, result in zip(audit.tests, results, strict=True):
        row = _row(test)
        try:
            if isinstance(result, str):
                raise RuntimeError(result)
            images = save_counterexample_images(audit.audited.decoder, result, out_dir)
            path, certificate = write_certificate(result, audit.audited, settings, images, out_dir, reused)
            curve = range_curve(result, network, settings, device)
        except Exception as error:  # one broken unit test must not hide the others' results
            _LOGGER.error("unit test '%s' could not run: %s", test.spec.name, error)
            rows.append({**row, "verdict": ERROR, "error": str(error), "samples": 0})
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
        "model": audit.audited.description,
        "models": audit.audited.hashes,
        "certificates_dir": CERTIFICATES_DIR,
        "unit_tests": rows,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    write_text(out_dir / JUNIT_FILE, junit_xml(summary))
    return summary


def _run_all(audit: _Audit, settings: VerifyConfig, shard: Shard) -> list[UnitTestResult | str]:
    """Every unit test on the shard's samples; a unit test that cannot run gives its error message."""
    device = resolve_device(settings.device)
    network = audit.audited.network.to(device)
    results: list[UnitTestResult | str] = []
    for test in progress(iterable=audit.tests, desc="verify unit tests", unit="test"):
        try:
            results.append(run_unit_test(test, network, audit.samples, settings, device, shard))
        except Exception as error:  # one broken unit test must not hide the others' results
            _LOGGER.exception("unit test '%s' could not run", test.spec.name)
            results.append(f"{type(error).__name__}: {error}")
    return results


def verify_audit(
    tests: tuple[UnitTestConfig, ...],
    settings: VerifyConfig,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    out_dir: Path,
    base_dir: Path | None = None,
    reused: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Prove or falsify every unit test; write certificates, `summary.json` and `junit.xml` to `out_dir`.

    reused: the artifacts of other runs this audit reads (input name -> file or folder), recorded in the certificates by sha256.
    """
    resolve_device(settings.device)
    audit = _prepare(tests, settings, model_settings, generator, inputs, base_dir)
    return _finish(audit, _run_all(audit, settings, Shard()), settings, Path(out_dir), reused)


def shard_file_name(shard: Shard) -> str:
    return f"shard-{shard.index}-of-{shard.count}.npz"


def verify_shard(
    tests: tuple[UnitTestConfig, ...],
    settings: VerifyConfig,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    shard: Shard,
    out_dir: Path,
    base_dir: Path | None = None,
) -> Path:
    """Verify shard i of N of every unit test into `out_dir/shards/shard-i-of-N.npz` (merge with `merge_shards`)."""
    resolve_device(settings.device)
    audit = _prepare(tests, settings, model_settings, generator, inputs, base_dir)
    header: dict[str, Any] = {"kind": "auditai.verify-shard", "index": shard.index, "count": shard.count, "fingerprint": audit.fingerprint, "unit_tests": []}
    arrays: dict[str, np.ndarray] = {}
    for number, result in enumerate(_run_all(audit, settings, shard)):
        if isinstance(result, str):
            header["unit_tests"].append({"error": result})
            continue
        header["unit_tests"].append({"error": None, "seconds": result.seconds})
        arrays.update({f"{number}/positions": result.positions, f"{number}/predictions": result.predictions})
        arrays.update({f"{number}/{name}": getattr(result.outcomes, name) for name in OUTCOME_FIELDS})
    path = Path(out_dir) / SHARDS_DIR / shard_file_name(shard)
    write_npz(path, {"header": np.array(json.dumps(header)), **arrays})
    return path


def _read_shard(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        header = json.loads(str(arrays.pop("header")))
    except (OSError, ValueError, KeyError) as error:
        raise AuditInputError(f"shard '{path}': not a verification shard file ({error})") from None
    if header.get("kind") != "auditai.verify-shard":
        raise AuditInputError(f"shard '{path}': not a verification shard file (kind {header.get('kind')!r})")
    return header, arrays


def find_shard_files(folders: list[Path]) -> list[Path]:
    """The shard files in the given folders (each an audit folder, its `shards/` folder, or a shard file)."""
    found: list[Path] = []
    for folder in map(Path, folders):
        candidates = [folder] if folder.is_file() else sorted((folder / SHARDS_DIR if (folder / SHARDS_DIR).is_dir() else folder).glob("shard-*-of-*.npz"))
        if not candidates:
            raise AuditInputError(f"shards '{folder}': no shard-i-of-N.npz files found (run `auditai verify --shard i/N` first)")
        found += candidates
    return found


def merge_shards(
    tests: tuple[UnitTestConfig, ...],
    settings: VerifyConfig,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    shard_files: list[Path],
    out_dir: Path,
    base_dir: Path | None = None,
    reused: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Combine the N shard files of one audit into certificates, `summary.json` and `junit.xml`, as `verify_audit` writes them."""
    audit = _prepare(tests, settings, model_settings, generator, inputs, base_dir)
    shards = {}
    for path in shard_files:
        header, arrays = _read_shard(path)
        if header["fingerprint"] != audit.fingerprint:
            raise AuditInputError(f"shard '{path}': made for another audit (other specs, settings, models or samples than this config's)")
        if len(header["unit_tests"]) != len(audit.tests):
            raise AuditInputError(f"shard '{path}': has {len(header['unit_tests'])} unit tests, the config has {len(audit.tests)}")
        shards[(header["index"], header["count"])] = (header, arrays)
    counts = {count for _, count in shards}
    if len(counts) != 1 or set(shards) != {(i, next(iter(counts))) for i in range(next(iter(counts)))}:
        have = ", ".join(f"{i}/{n}" for i, n in sorted(shards))
        raise AuditInputError(f"shards: need every shard i/N of one N exactly once, got {have or 'none'}")
    results: list[UnitTestResult | str] = []
    for number, test in enumerate(audit.tests):
        parts = [(header["unit_tests"][number], arrays) for header, arrays in (shards[key] for key in sorted(shards))]
        errors = [entry["error"] for entry, _ in parts if entry["error"]]
        if errors:
            results.append(errors[0])
            continue
        positions = np.concatenate([arrays[f"{number}/positions"] for _, arrays in parts])
        order = np.argsort(positions, kind="stable")
        chosen = unit_test_samples(test, audit.samples, settings)
        if not np.array_equal(positions[order], np.arange(len(chosen.ids))):
            raise AuditInputError(f"shards: the samples of unit test '{test.spec.name}' are not covered exactly once")
        outcomes = SampleOutcomes(**{name: np.concatenate([arrays[f"{number}/{name}"] for _, arrays in parts])[order] for name in OUTCOME_FIELDS})
        predictions = np.concatenate([arrays[f"{number}/predictions"] for _, arrays in parts])[order]
        targets = chosen.labels if test.spec.property == "true_label" else predictions
        seconds = float(sum(entry["seconds"] for entry, _ in parts))
        results.append(UnitTestResult(test, chosen, targets, predictions, outcomes, settings.confidence, seconds, positions[order]))
    return _finish(audit, results, settings, Path(out_dir), reused)
