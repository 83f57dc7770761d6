"""The `finetune` step: certified fine-tuning of the audited model against the specs it fails.

Trains the model's own part of the audited network (the head in latent mode; in pixel mode
the head behind the frozen decoder and encoder, or the user's classifier behind the frozen
decoder) with the loss of auditai_ops.finetune.train, on the training split's latents. After
every epoch past the warm-up, the verifier measures each spec's certified accuracy at its
box on `validation_samples` of the valid split, and the audited network's clean accuracy on
the whole valid split; both splits are checked to share no sample id with the test split,
whose samples the audit certifies. The epoch kept is the best one whose clean accuracy is at
most `clean_accuracy_drop` below the parent's; training stops early once every spec clears
its threshold by `early_stop_margin`. Without such an epoch the original model is kept and
no candidate is written.

Writes `<out>/finetune/finetune.json` (status, before and after figures, history) and, for
a kept candidate, `<out>/finetune/head.safetensors` (or `classifier.safetensors`, weights for
the user's classifier) with a `.json` record whose `lineage` names the parent's weight hash,
the specs trained for and the settings. The candidate is never the parent's file.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditai_ops.config import FinetuneConfig, ModelConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import read_json, write_json
from auditai_ops.finetune.train import CertifiedTrainer, TrainingSpec
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import SUMMARY_FILE, StepInputs
from auditai_ops.modelio import read_record, save_module
from auditai_ops.progress import progress
from auditai_ops.verify.audited_model import AuditedModel, build_audited_model
from auditai_ops.verify.engine import resolve_device
from auditai_ops.verify.unit_tests import FAIL, AuditSamples, ResolvedUnitTest, clean_predictions, resolve_unit_tests, run_unit_test

FINETUNE_DIR = "finetune"
FINETUNE_RECORD = "finetune.json"
PASSED_VALIDATION, BELOW_THRESHOLD = "passed_validation", "below_threshold"
BUDGET_NOT_MET, NOT_IMPROVED = "clean_accuracy_budget_not_met", "not_improved"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Validation:
    """Clean accuracy on the valid split, and per spec the certified accuracy on the validation samples."""

    clean_accuracy: float
    specs: dict[str, dict[str, Any]]

    def slack(self, name: str) -> float:
        """How far the figure the spec's threshold applies to lies above the threshold."""
        entry = self.specs[name]
        measured = entry["certified_accuracy"] if entry["threshold_on"] == "estimate" else entry["certified_accuracy_lower_bound"]
        return float(measured - entry["threshold"])

    def score(self) -> tuple[int, float]:
        """Specs passed, then the smallest slack: the order in which epochs are preferred."""
        return sum(self.slack(n) >= 0 for n in self.specs), min(self.slack(n) for n in self.specs)

    def as_dict(self) -> dict[str, Any]:
        return {"clean_accuracy": self.clean_accuracy, "specs": self.specs}


@dataclass(frozen=True)
class FinetuneResult:
    """What the step decided: `candidate` is None when the original model is kept."""

    status: str
    specs: tuple[str, ...]
    parent_sha256: str
    candidate: Path | None
    candidate_sha256: str | None
    hash_key: str
    before: Validation
    after: Validation | None
    record_path: Path
    message: str

    def describe(self) -> str:
        """The validation figures before -> after, one line per spec, and what was decided."""
        after = self.after
        lines = [f"clean accuracy (valid split): {self.before.clean_accuracy:.4f} -> {'-' if after is None else f'{after.clean_accuracy:.4f}'}"]
        for name, entry in self.before.specs.items():
            later = "-" if after is None else f"{after.specs[name]['certified_accuracy']:.3f}"
            lines.append(f"{name}: certified accuracy on {entry['samples']} validation samples {entry['certified_accuracy']:.3f} -> {later} (threshold {entry['threshold']:.2f})")
        lines.append(f"{self.status}: {self.message}")
        if self.candidate is not None:
            lines.append(f"candidate {self.candidate} (sha256 {self.candidate_sha256}), parent sha256 {self.parent_sha256}")
        return "\n".join(lines)

    def audit_settings(self, model_settings: ModelConfig, inputs: StepInputs) -> tuple[ModelConfig, StepInputs]:
        """The model settings and inputs that audit the candidate instead of its parent."""
        if self.candidate is None:
            raise ValueError("no candidate was kept")
        if self.hash_key == "head_sha256":
            return model_settings, dataclasses.replace(inputs, head=self.candidate.resolve())
        return model_settings.model_copy(update={"weights": str(self.candidate.resolve())}), inputs


def failing_specs(out_dir: Path) -> tuple[str, ...]:
    """Names of the unit tests that `summary.json` in `out_dir` reports as failing."""
    path = Path(out_dir) / SUMMARY_FILE
    summary = read_json(path, "summary", " (run `auditai verify` first, or name the specs under finetune.specs)")
    return tuple(row["name"] for row in summary.get("unit_tests", []) if row.get("verdict") == FAIL)


def specs_to_train(settings: FinetuneConfig, tests: tuple[UnitTestConfig, ...], out_dir: Path) -> tuple[str, ...]:
    """`finetune.specs` when given, else the failing unit tests of the audit in `out_dir`; each must be a configured unit test."""
    chosen = settings.specs if settings.specs is not None else failing_specs(out_dir)
    known = [test.name for test in tests]
    for name in chosen:
        if name not in known:
            where = "finetune.specs" if settings.specs is not None else f"summary '{Path(out_dir) / SUMMARY_FILE}'"
            raise AuditInputError(f"{where}: unknown unit test '{name}'; configured unit tests are {known}")
    return tuple(chosen)


def load_training_splits(path: Path, seed: int) -> tuple[AuditSamples, AuditSamples]:
    """The train and valid splits of `latents.npz`; neither may share a sample id with the test split the audit certifies.

    The valid split comes in a fixed pseudo-random order (seeded), as the test split does for the audit.
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            splits = {name: AuditSamples(stored[f"{name}_ids"], stored[f"{name}_z"], stored[f"{name}_labels"]) for name in ("train", "valid")}
            test_ids = set(stored["test_ids"].tolist())
    except FileNotFoundError:
        raise AuditInputError(f"latents '{path}': file not found (run `auditai map-latents` first)") from None
    except KeyError as error:
        raise AuditInputError(f"latents '{path}': missing array {error} (fine-tuning needs the train, valid and test splits)") from None
    for name, split in splits.items():
        if not len(split.ids):
            raise AuditInputError(f"latents '{path}': the {name} split is empty; fine-tuning needs it")
        if not np.isfinite(split.latents).all():
            raise AuditInputError(f"latents '{path}': {name}_z contains NaN or infinite values")
        shared = test_ids.intersection(split.ids.tolist())
        if shared:
            example = sorted(shared)[0]
            raise AuditInputError(f"latents '{path}': {len(shared)} sample(s) of the {name} split are also test samples (e.g. '{example}'); fine-tuning must not see them")
    valid = splits["valid"]
    order = np.random.default_rng(seed).permutation(len(valid.ids))
    return splits["train"], AuditSamples(valid.ids[order], valid.latents[order], valid.labels[order])


def validate(
    audited: AuditedModel, tests: list[ResolvedUnitTest], valid: AuditSamples, settings: FinetuneConfig, verify_settings: VerifyConfig, device: torch.device
) -> Validation:
    """Clean accuracy of the audited network on the whole valid split; each spec verified on the first `validation_samples`."""
    network = audited.network.eval()
    predictions = clean_predictions(network, valid.latents, device, verify_settings.batch_size)
    per_spec = {}
    check = verify_settings.model_copy(update={"samples": settings.validation_samples})
    for test in tests:
        result = run_unit_test(dataclasses.replace(test, spec=test.spec.model_copy(update={"samples": None})), network, valid, check, device)
        per_spec[test.spec.name] = {
            "certified_accuracy": result.certified_accuracy,
            "certified_accuracy_lower_bound": result.certified_accuracy_lower_bound,
            "falsified_fraction": result.falsified_fraction,
            "threshold": test.spec.threshold,
            "threshold_on": test.spec.threshold_on,
            "samples": len(result.samples.ids),
        }
    return Validation(float(np.mean(predictions == valid.labels)), per_spec)


def _candidate_path(audited: AuditedModel, out_dir: Path) -> Path:
    return Path(out_dir) / FINETUNE_DIR / ("head.safetensors" if audited.classifier_hash == "head_sha256" else "classifier.safetensors")


def _parent(audited: AuditedModel, model_settings: ModelConfig, inputs: StepInputs, base_dir: Path | None) -> dict[str, Any]:
    """Where the parent's weights live, and their hash."""
    parent: dict[str, Any] = {"hash_key": audited.classifier_hash, "weights_sha256": audited.hashes[audited.classifier_hash]}
    if audited.classifier_hash == "head_sha256":
        parent["path"] = str(Path(inputs.head).resolve())
    else:
        parent["classifier"] = model_settings.classifier
        if model_settings.weights is not None:
            weights = Path(model_settings.weights)
            parent["path"] = str((weights if weights.is_absolute() or base_dir is None else base_dir / weights).resolve())
    return parent


def _save_candidate(audited: AuditedModel, path: Path, inputs: StepInputs, lineage: dict[str, Any], after: Validation) -> str:
    if audited.classifier_hash == "head_sha256":
        parent_record = read_record(inputs.head)
        extra = {"training": parent_record.get("training"), "metrics": {"valid_accuracy": after.clean_accuracy}, "lineage": lineage}
        return save_module(audited.classifier, path, "mlp_head", parent_record["architecture"], extra)
    architecture = {"classifier": lineage["parent"]["classifier"], "route": audited.description.get("route")}
    return save_module(audited.classifier, path, "classifier_weights", architecture, {"metrics": {"valid_accuracy": after.clean_accuracy}, "lineage": lineage})


def finetune_model(
    settings: FinetuneConfig,
    unit_tests: tuple[UnitTestConfig, ...],
    verify_settings: VerifyConfig,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    out_dir: Path,
    base_dir: Path | None = None,
    specs: tuple[str, ...] | None = None,
) -> FinetuneResult:
    """Fine-tune the audited model for `specs` (default: `specs_to_train`); write the candidate and `finetune/finetune.json`."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    names = specs if specs is not None else specs_to_train(settings, unit_tests, out_dir)
    if not names:
        raise AuditInputError("finetune.specs: no unit test to fine-tune for (every unit test passes); name them under finetune.specs")
    device = resolve_device(verify_settings.device)
    chosen = tuple(test for test in unit_tests if test.name in names)
    tests = resolve_unit_tests(chosen, load_directions(inputs.directions))
    audited = build_audited_model(model_settings, generator, inputs, base_dir)
    parent = _parent(audited, model_settings, inputs, base_dir)
    candidate_path = _candidate_path(audited, out_dir)
    if parent.get("path") == str(candidate_path.resolve()):
        raise AuditInputError(f"finetune: the candidate '{candidate_path}' would overwrite its parent; fine-tune into another --out")
    train, valid = load_training_splits(inputs.latents, settings.seed)
    torch.manual_seed(settings.seed)
    network = audited.network.to(device)
    parent_predictions = clean_predictions(network, train.latents, device, verify_settings.batch_size)
    training_specs = [
        TrainingSpec(t.spec.name, t.matrix, t.t_low, t.t_high, train.labels if t.spec.property == "true_label" else parent_predictions) for t in tests
    ]
    before = validate(audited, tests, valid, settings, verify_settings, device)
    trainer = CertifiedTrainer(network, list(audited.classifier.parameters()), training_specs, settings, device)
    best, history = _train_and_select(trainer, audited, tests, train, valid, before, settings, verify_settings, device)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "auditai.finetune",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "specs": list(names),
        "method": settings.method,
        "mode": model_settings.mode,
        "settings": settings.model_dump(mode="json"),
        "parent": parent,
        "validation": {
            "before": before.as_dict(),
            "clean_accuracy_floor": before.clean_accuracy - settings.clean_accuracy_drop,
            "samples": settings.validation_samples,
            "clean_samples": len(valid.ids),
        },
        "history": history,
    }
    record_path = out_dir / FINETUNE_DIR / FINETUNE_RECORD
    if best is None:
        if any(entry.get("within_budget") for entry in history):
            status, message = NOT_IMPROVED, "no epoch within the clean-accuracy budget improved on the parent's certified accuracy: the original model is kept"
        else:
            status = BUDGET_NOT_MET
            message = (
                f"no epoch kept clean accuracy within {settings.clean_accuracy_drop:.3f} of the parent's {before.clean_accuracy:.4f} on the valid split: "
                "the clean-accuracy budget cannot be met, the original model is kept"
            )
        record.update(status=status, candidate=None, message=message, seconds=time.perf_counter() - started)
        write_json(record_path, record)
        for stale in (candidate_path, candidate_path.with_suffix(".json")):  # an earlier run's candidate must not outlive this verdict
            stale.unlink(missing_ok=True)
        return FinetuneResult(status, tuple(names), parent["weights_sha256"], None, None, audited.classifier_hash, before, None, record_path, message)
    _, after, state = best
    audited.classifier.load_state_dict(state)
    passed = all(after.slack(name) >= 0 for name in after.specs)
    status = PASSED_VALIDATION if passed else BELOW_THRESHOLD
    lineage = {"parent": parent, "specs": list(names), "method": settings.method, "settings": settings.model_dump(mode="json"), "generator": generator.hashes}
    lineage["validation"] = {"before": before.as_dict(), "after": after.as_dict()}
    candidate_sha256 = _save_candidate(audited, candidate_path, inputs, lineage, after)
    message = "every spec meets its threshold on the validation samples" if passed else "some specs stay below their threshold on the validation samples"
    candidate = {"path": str(candidate_path.relative_to(out_dir)), "weights_sha256": candidate_sha256}
    record["validation"]["after"] = after.as_dict()
    record.update(status=status, candidate=candidate, message=message, seconds=time.perf_counter() - started)
    write_json(record_path, record)
    result = FinetuneResult(status, tuple(names), parent["weights_sha256"], candidate_path, candidate_sha256, audited.classifier_hash, before, after, record_path, message)
    _check_round_trip(result, model_settings, generator, inputs, base_dir)
    return result


_Best = tuple[tuple[int, float], Validation, dict[str, torch.Tensor]]


def _train_and_select(
    trainer: CertifiedTrainer,
    audited: AuditedModel,
    tests: list[ResolvedUnitTest],
    train: AuditSamples,
    valid: AuditSamples,
    before: Validation,
    settings: FinetuneConfig,
    verify_settings: VerifyConfig,
    device: torch.device,
) -> tuple[_Best | None, list[dict[str, Any]]]:
    """Train epoch by epoch; keep the best validated state within the clean budget that beats the parent; stop early when every spec clears its margin."""
    clean_floor = before.clean_accuracy - settings.clean_accuracy_drop
    rng = np.random.default_rng(settings.seed)
    best: _Best | None = None
    history: list[dict[str, Any]] = []
    for epoch in progress(iterable=range(1, settings.epochs + 1), desc="certified fine-tuning", unit="epoch"):
        epoch_started = time.perf_counter()
        entry: dict[str, Any] = {"epoch": epoch, **trainer.train_epoch(train.latents, train.labels, rng)}
        entry["train_seconds"] = time.perf_counter() - epoch_started
        history.append(entry)
        if epoch <= settings.warmup_epochs:
            continue
        current = validate(audited, tests, valid, settings, verify_settings, device)
        entry["validation_seconds"] = time.perf_counter() - epoch_started - entry["train_seconds"]
        within_budget = current.clean_accuracy >= clean_floor - 1e-12
        entry.update(validation=current.as_dict(), within_budget=within_budget)
        if within_budget and current.score() > (before.score() if best is None else best[0]):
            best = (current.score(), current, {k: v.detach().clone() for k, v in audited.classifier.state_dict().items()})
        if within_budget and all(current.slack(name) >= settings.early_stop_margin for name in current.specs):
            break
    return best, history


def _check_round_trip(result: FinetuneResult, model_settings: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None) -> None:
    """The candidate, loaded the way an audit loads it, must be the weights just trained."""
    candidate_settings, candidate_inputs = result.audit_settings(model_settings, inputs)
    reloaded = build_audited_model(candidate_settings, generator, candidate_inputs, base_dir)
    if reloaded.hashes[result.hash_key] != result.candidate_sha256:
        raise AuditInputError(
            f"finetune: the candidate '{result.candidate}' does not load back as trained (the classifier '{model_settings.classifier}' is converted on loading); "
            "fine-tune a classifier whose layers the verifier bounds as they are"
        )
