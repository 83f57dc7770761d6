"""The `verify` step: run every unit test, write certificates, `summary.json` and `junit.xml`.

The work can be split: `verify_shard` verifies shard i of N (whole blocks of samples, see
`Shard`) into one file, and `merge_shards` turns the N shard files into the certificates,
summary and junit report that `verify_audit` writes in one go. Blocks are verified with the
same seeds in either layout, so the merged certificates equal the unsharded ones apart from
timings and creation times. A shard also does its samples' share of what follows
verification (`_Extras`): it decodes and encodes their counterexample images and re-runs
them on the range curve's sub-boxes, block by block, so that the merge only concatenates
arrays, sums curve counts and writes files; it loads no network and verifies nothing.
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
from auditai_ops.verify.counterexamples import counterexample_pngs, write_counterexample_images
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, SampleOutcomes, resolve_device
from auditai_ops.verify.range_curve import CurveCounts, curve_counts, curve_record
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
    "budget_exhausted",
    "stopped_by_budget",
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


@dataclass(frozen=True)
class _Extras:
    """What a unit test's result needs besides its outcomes: its counterexample images and its range curve's counts."""

    pngs: dict[str, bytes]
    """{sample id: PNG bytes} of every falsified sample (`counterexample_pngs`)."""
    curve: CurveCounts


def _extras(audit: _Audit, result: UnitTestResult, network: Any, settings: VerifyConfig, device: Any) -> _Extras:
    """Counterexample images and range-curve counts of a result (of all or of one shard's samples of the unit test)."""
    count = len(unit_test_samples(result.test, audit.samples, settings).ids)
    return _Extras(counterexample_pngs(audit.audited.decoder, result), curve_counts(result, network, settings, device, count))


def _finish(
    audit: _Audit, results: list[UnitTestResult | str], settings: VerifyConfig, out_dir: Path, reused: Mapping[str, Path] | None, extras: list[_Extras | None] | None = None
) -> dict[str, Any]:
    """Certificates, counterexample images, range curves, `summary.json` and `junit.xml` from per-test results (or error messages).

    extras: the images and curve counts of each result, made by the shards (merge); None: made here, with the network.
    """
    if extras is None:
        device = resolve_device(settings.device)
        network = audit.audited.network.to(device)
    rows = []
    for number, (test, result) in enumerate(zip(audit.tests, results, strict=True)):
        row = _row(test)
        try:
            if isinstance(result, str):
                raise RuntimeError(result)
            extra = extras[number] if extras is not None else _extras(audit, result, network, settings, device)
            if extra is None:
                raise RuntimeError("no counterexample images and range curve for this unit test")
            images = write_counterexample_images(test.spec.name, extra.pngs, out_dir)
            path, certificate = write_certificate(result, audit.audited, settings, images, out_dir, reused)
            curve = curve_record(test, extra.curve)
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


SHARD_FORMAT = 2
"""Shard files of format 2 carry each unit test's counterexample PNGs and range-curve counts (format 1, without them, is refused)."""


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
    """Verify shard i of N of every unit test into `out_dir/shards/shard-i-of-N.npz` (merge with `merge_shards`).

    Besides the outcomes, the file holds the shard's counterexample images (PNG bytes) and its
    range-curve counts per unit test, so that merging needs no network and no verification.
    """
    device = resolve_device(settings.device)
    audit = _prepare(tests, settings, model_settings, generator, inputs, base_dir)
    network = audit.audited.network.to(device)
    header: dict[str, Any] = {"kind": "auditai.verify-shard", "format": SHARD_FORMAT, "index": shard.index, "count": shard.count, "fingerprint": audit.fingerprint}
    header["unit_tests"] = []
    arrays: dict[str, np.ndarray] = {}
    for number, result in enumerate(_run_all(audit, settings, shard)):
        if isinstance(result, str):
            header["unit_tests"].append({"error": result})
            continue
        try:
            extra = _extras(audit, result, network, settings, device)
        except Exception as error:  # one broken unit test must not hide the others' results
            _LOGGER.error("unit test '%s' could not run: %s", result.test.spec.name, error)
            header["unit_tests"].append({"error": str(error)})
            continue
        header["unit_tests"].append({"error": None, "seconds": result.seconds, "curve_fractions": list(extra.curve.fractions), "curve_samples": extra.curve.samples})
        arrays.update({f"{number}/positions": result.positions, f"{number}/predictions": result.predictions})
        arrays.update({f"{number}/{name}": getattr(result.outcomes, name) for name in OUTCOME_FIELDS})
        arrays.update({f"{number}/curve_certified": extra.curve.certified, f"{number}/curve_falsified": extra.curve.falsified})
        pngs = list(extra.pngs.values())
        arrays[f"{number}/image_ids"] = np.array(list(extra.pngs), dtype=str)
        arrays[f"{number}/image_offsets"] = np.cumsum([0, *map(len, pngs)], dtype=np.int64)
        arrays[f"{number}/image_bytes"] = np.frombuffer(b"".join(pngs), dtype=np.uint8)
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
    if not isinstance(header, dict) or header.get("kind") != "auditai.verify-shard":
        raise AuditInputError(f"shard '{path}': not a verification shard file (kind {header.get('kind') if isinstance(header, dict) else None!r})")
    if header.get("format") != SHARD_FORMAT:
        found = header.get("format", 1)
        raise AuditInputError(f"shard '{path}': shard file format {found!r}, this auditai merges format {SHARD_FORMAT}; verify the shards again with this version")
    return header, arrays


def _shard_extras(path: Path, number: int, entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, bytes], CurveCounts]:
    """A shard's counterexample PNGs and curve counts of unit test `number`, checked for shape."""
    try:
        ids, offsets, data = arrays[f"{number}/image_ids"], arrays[f"{number}/image_offsets"], arrays[f"{number}/image_bytes"]
        fractions = tuple(float(f) for f in entry["curve_fractions"])
        certified, falsified = arrays[f"{number}/curve_certified"].astype(np.int64), arrays[f"{number}/curve_falsified"].astype(np.int64)
        samples = int(entry["curve_samples"])
    except (KeyError, TypeError, ValueError) as error:
        raise AuditInputError(f"shard '{path}': unit test {number} lacks its images or range curve ({error})") from None
    images_ok = offsets.shape == (len(ids) + 1,) and offsets[0] == 0 and not np.any(np.diff(offsets) < 0) and offsets[-1] == len(data)
    if not images_ok or certified.shape != (len(fractions),) or falsified.shape != (len(fractions),):
        raise AuditInputError(f"shard '{path}': unit test {number} has damaged images or range curve")
    pngs = {str(sample_id): data[offsets[i] : offsets[i + 1]].tobytes() for i, sample_id in enumerate(ids)}
    return pngs, CurveCounts(fractions, certified, falsified, samples)


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
    """Combine the N shard files of one audit into certificates, `summary.json` and `junit.xml`, as `verify_audit` writes them.

    The shards carry everything (outcomes, counterexample images, range-curve counts): merging
    concatenates and checks them and writes the files; it runs no network.
    """
    audit = _prepare(tests, settings, model_settings, generator, inputs, base_dir)
    shards = {}
    for path in shard_files:
        header, arrays = _read_shard(path)
        if header["fingerprint"] != audit.fingerprint:
            raise AuditInputError(f"shard '{path}': made for another audit (other specs, settings, models or samples than this config's)")
        if len(header["unit_tests"]) != len(audit.tests):
            raise AuditInputError(f"shard '{path}': has {len(header['unit_tests'])} unit tests, the config has {len(audit.tests)}")
        key = (header["index"], header["count"])
        if key in shards:
            raise AuditInputError(f"shards: shard {key[0]}/{key[1]} is given twice ('{shards[key][0]}' and '{path}')")
        shards[key] = (path, header, arrays)
    counts = {count for _, count in shards}
    if len(counts) != 1 or set(shards) != {(i, next(iter(counts))) for i in range(next(iter(counts)))}:
        have = ", ".join(f"{i}/{n}" for i, n in sorted(shards))
        raise AuditInputError(f"shards: need every shard i/N of one N exactly once, got {have or 'none'}")
    results: list[UnitTestResult | str] = []
    extras: list[_Extras | None] = []
    for number, test in enumerate(audit.tests):
        parts = [(header["unit_tests"][number], arrays) for _, header, arrays in (shards[key] for key in sorted(shards))]
        errors = [entry["error"] for entry, _ in parts if entry["error"]]
        if errors:
            results.append(errors[0])
            extras.append(None)
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
        result = UnitTestResult(test, chosen, targets, predictions, outcomes, settings.confidence, seconds, positions[order])
        results.append(result)
        extras.append(_merged_extras([(path, number, header["unit_tests"][number], arrays) for path, header, arrays in (shards[key] for key in sorted(shards))], result))
    return _finish(audit, results, settings, Path(out_dir), reused, extras)


def _merged_extras(parts: list[tuple[Path, int, dict[str, Any], dict[str, np.ndarray]]], result: UnitTestResult) -> _Extras:
    """The shards' images and curve counts of one unit test, checked against the merged outcomes."""
    name = result.test.spec.name
    pngs: dict[str, bytes] = {}
    curve: CurveCounts | None = None
    for path, number, entry, arrays in parts:
        shard_pngs, shard_curve = _shard_extras(path, number, entry, arrays)
        pngs.update(shard_pngs)
        try:
            curve = shard_curve if curve is None else curve + shard_curve
        except ValueError as error:
            raise AuditInputError(f"shard '{path}': unit test '{name}': {error}") from None
    falsified = result.samples.ids[result.outcomes.verdicts == FALSIFIED].astype(str).tolist()
    if sorted(pngs) != sorted(falsified):
        raise AuditInputError(f"shards: the counterexample images of unit test '{name}' are not those of its falsified samples")
    if curve is None or curve.samples != len(result.outcomes.verdicts) or not curve.fractions or curve.fractions[-1] != 1.0:
        raise AuditInputError(f"shards: the range curve of unit test '{name}' does not cover its samples")
    if curve.certified[-1] != np.sum(result.outcomes.verdicts == VERIFIED) or curve.falsified[-1] != len(falsified) or np.any(curve.certified + curve.falsified > curve.samples):
        raise AuditInputError(f"shards: the range curve of unit test '{name}' contradicts its outcomes")
    return _Extras({sample_id: pngs[sample_id] for sample_id in falsified}, curve)
