"""Certified fine-tuning on the synthetic problem: standard training fails the spec, fine-tuning provably repairs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from finetune_synthetic import SPEC, generator_and_inputs, synthetic_config

from auditai_ops.classifier.head import accuracy, load_head
from auditai_ops.config import ModelConfig, RangeConfig
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.finetune.repair import REPAIR_RECORD, REPAIRED_DIR, RepairOutcome, repair_audit
from auditai_ops.finetune.step import BUDGET_NOT_MET, FINETUNE_DIR, FINETUNE_RECORD, PASSED_VALIDATION
from auditai_ops.verify.resample import resample_certificates
from auditai_ops.verify.step import verify_audit


def _audit_then_repair(folder: Path, **finetune: object) -> tuple[dict, RepairOutcome]:
    config = synthetic_config(**finetune)
    generator, inputs = generator_and_inputs(folder)
    before = verify_audit(config.unit_tests, config.verify, config.model, generator, inputs, folder)
    return before, repair_audit(config, generator, inputs, folder)


@pytest.fixture(scope="module")
def repaired(synthetic_audit: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, RepairOutcome, str]:
    folder = tmp_path_factory.mktemp("repaired") / "audit"
    shutil.copytree(synthetic_audit, folder)
    parent_hash = sha256_state_dict(load_head(folder / "classifier" / "head.safetensors")[0].state_dict())
    before, outcome = _audit_then_repair(folder)
    return folder, before, outcome, parent_hash


def test_standard_training_fails_and_certified_finetuning_repairs(repaired: tuple[Path, dict, RepairOutcome, str]) -> None:
    folder, before, outcome, _ = repaired
    assert before["verdict"] == "fail" and before["unit_tests"][0]["certified_accuracy"] < SPEC.threshold
    assert outcome.finetune.status == PASSED_VALIDATION
    assert outcome.passed and outcome.after is not None
    row = outcome.after["unit_tests"][0]
    assert row["verdict"] == "pass" and row["certified_accuracy"] >= SPEC.threshold and row["unknown_fraction"] == 0.0
    assert outcome.rows[0]["before"]["verdict"] == "fail" and outcome.rows[0]["after"]["verdict"] == "pass"
    record = json.loads((folder / REPAIR_RECORD).read_text())
    assert record["verdict_before"] == "fail" and record["verdict_after"] == "pass" and record["passed"] is True


def test_the_reaudit_certifies_the_candidate_soundly(repaired: tuple[Path, dict, RepairOutcome, str]) -> None:
    folder, _, outcome, parent_hash = repaired
    certificate = json.loads((folder / REPAIRED_DIR / "certificates" / f"{SPEC.name}.json").read_text())
    assert certificate["hashes"]["head_sha256"] == outcome.finetune.candidate_sha256 != parent_hash
    generator, inputs = generator_and_inputs(folder)
    model_settings, candidate_inputs = outcome.finetune.audit_settings(ModelConfig(), inputs)
    results = resample_certificates(folder / REPAIRED_DIR, model_settings, generator, candidate_inputs, points=500)
    assert [r.verified_samples > 0 for r in results] == [True]
    assert [r.contradicted_samples for r in results] == [0]


def test_lineage_is_recorded_and_the_parent_untouched(repaired: tuple[Path, dict, RepairOutcome, str]) -> None:
    folder, _, outcome, parent_hash = repaired
    parent_path = folder / "classifier" / "head.safetensors"
    assert sha256_state_dict(load_head(parent_path)[0].state_dict()) == parent_hash
    candidate, record = load_head(folder / FINETUNE_DIR / "head.safetensors")
    assert outcome.finetune.candidate == folder / FINETUNE_DIR / "head.safetensors" != parent_path
    assert record["weights_sha256"] == outcome.finetune.candidate_sha256 == sha256_state_dict(candidate.state_dict())
    lineage = record["lineage"]
    assert lineage["parent"] == {"hash_key": "head_sha256", "weights_sha256": parent_hash, "path": str(parent_path.resolve())}
    assert lineage["specs"] == [SPEC.name]
    assert lineage["settings"] == synthetic_config().finetune.model_dump(mode="json")
    assert lineage["method"] == "CROWN-IBP"
    report = json.loads((folder / FINETUNE_DIR / FINETUNE_RECORD).read_text())
    assert report["status"] == PASSED_VALIDATION and report["candidate"]["weights_sha256"] == record["weights_sha256"]
    assert report["validation"]["after"]["specs"][SPEC.name]["certified_accuracy"] >= SPEC.threshold


def test_clean_accuracy_stays_within_budget(repaired: tuple[Path, dict, RepairOutcome, str]) -> None:
    folder, _, outcome, _ = repaired
    with np.load(folder / "latent" / "latents.npz") as stored:
        valid_z, valid_labels = stored["valid_z"], stored["valid_labels"]
    parent = accuracy(load_head(folder / "classifier" / "head.safetensors")[0], valid_z, valid_labels)
    candidate = accuracy(load_head(folder / FINETUNE_DIR / "head.safetensors")[0], valid_z, valid_labels)
    assert outcome.finetune.before.clean_accuracy == pytest.approx(parent)
    assert candidate >= parent - synthetic_config().finetune.clean_accuracy_drop


def test_the_original_is_kept_when_the_clean_budget_cannot_be_met(synthetic_audit: Path, tmp_path: Path) -> None:
    """Boxes of +-4.5 in both x1 and x2 around one class reach the other class: robustness costs clean accuracy."""
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    wide = RangeConfig(low=-4.5, high=4.5, units="latent")
    spec = SPEC.model_copy(update={"name": "x1_x2_within_4.5", "direction": ("x1", "x2"), "range": (wide, wide)})
    config = synthetic_config(ramp_epochs=0, epochs=4, kappa_start=0.0, kappa_end=0.0, learning_rate=0.1, batch_size=64)
    config = config.model_copy(update={"unit_tests": (spec,)})
    generator, inputs = generator_and_inputs(folder)
    assert verify_audit(config.unit_tests, config.verify, config.model, generator, inputs, folder)["verdict"] == "fail"
    outcome = repair_audit(config, generator, inputs, folder)
    assert outcome.finetune.status == BUDGET_NOT_MET and outcome.finetune.candidate is None and outcome.after is None
    assert not (folder / FINETUNE_DIR / "head.safetensors").exists() and not (folder / REPAIRED_DIR).exists()
    report = json.loads((folder / FINETUNE_DIR / FINETUNE_RECORD).read_text())
    assert report["candidate"] is None and "original model is kept" in report["message"]
    assert all(not epoch["within_budget"] for epoch in report["history"][1:])
    assert json.loads((folder / REPAIR_RECORD).read_text())["passed"] is False
