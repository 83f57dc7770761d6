"""The finetune step's inputs and outputs: config errors, disjoint splits, the CLI command, the schedule."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from finetune_synthetic import SPEC, generator_and_inputs, synthetic_config

from auditai_ops.cli.main import _repair, main
from auditai_ops.config import FinetuneConfig, load_config, parse_config
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_npz
from auditai_ops.finetune.step import FINETUNE_DIR, FINETUNE_RECORD, finetune_model, load_training_splits, specs_to_train
from auditai_ops.finetune.train import box_pieces, schedule_at
from auditai_ops.layout import resolve_inputs
from auditai_ops.verify.step import load_test_samples


def test_validation_and_training_samples_are_disjoint_from_the_test_samples(synthetic_audit: Path) -> None:
    latents = synthetic_audit / "latent" / "latents.npz"
    train, valid = load_training_splits(latents, seed=0)
    test = load_test_samples(latents, seed=0)
    assert len(valid.ids) == 500 and len(train.ids) == 2000
    assert not set(valid.ids.tolist()) & set(test.ids.tolist())
    assert not set(train.ids.tolist()) & set(test.ids.tolist())
    assert set(valid.ids.tolist()) == set(np.load(latents)["valid_ids"].tolist())  # every validation sample comes from the valid split


def test_a_test_sample_in_the_valid_split_is_refused(synthetic_audit: Path, tmp_path: Path) -> None:
    with np.load(synthetic_audit / "latent" / "latents.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["valid_ids"] = arrays["valid_ids"].copy()
    arrays["valid_ids"][7] = arrays["test_ids"][3]
    write_npz(tmp_path / "latents.npz", arrays)
    with pytest.raises(AuditInputError, match=r"1 sample\(s\) of the valid split are also test samples \(e.g. 'synthetic:test:3'\)"):
        load_training_splits(tmp_path / "latents.npz", seed=0)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"finetune": {"method": "CROWN"}}, "finetune.method"),
        ({"finetune": {"epochs": 4, "warmup_epochs": 1, "ramp_epochs": 3}}, "finetune: warmup_epochs + ramp_epochs (1 + 3) must be < epochs (4)"),
        ({"finetune": {"clean_accuracy_drop": 2}}, "finetune.clean_accuracy_drop"),
        ({"finetune": {"specs": []}}, "finetune: specs: name at least one unit test"),
        ({"finetune": {"repiar": True}}, "finetune.repiar: unknown field (did you mean 'repair'?)"),
    ],
)
def test_bad_finetune_settings_are_named(raw: dict, fragment: str) -> None:
    with pytest.raises(AuditInputError) as caught:
        parse_config(raw, source="audit.yaml")
    assert fragment in str(caught.value)


def test_defaults() -> None:
    settings = parse_config({}).finetune
    assert settings == FinetuneConfig() and settings.method == "CROWN-IBP" and settings.clean_accuracy_drop == 0.01 and not settings.repair


def test_specs_come_from_the_config_or_the_failing_ones_in_the_summary(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match="summary .* file not found"):
        specs_to_train(FinetuneConfig(), (SPEC,), tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"unit_tests": [{"name": SPEC.name, "verdict": "fail"}, {"name": "other", "verdict": "pass"}]}))
    with pytest.raises(AuditInputError, match="unknown unit test 'other'"):
        specs_to_train(FinetuneConfig(specs=("other",)), (SPEC,), tmp_path)
    assert specs_to_train(FinetuneConfig(), (SPEC,), tmp_path) == (SPEC.name,)


def test_the_candidate_never_overwrites_its_parent(synthetic_audit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    (folder / FINETUNE_DIR).mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(folder / "classifier" / f"head{suffix}", folder / FINETUNE_DIR / f"head{suffix}")
    config = synthetic_config()
    generator, inputs = generator_and_inputs(folder)
    with pytest.raises(AuditInputError, match="would overwrite its parent"):
        inputs = replace(inputs, head=folder / FINETUNE_DIR / "head.safetensors")
        finetune_model(config.finetune, config.unit_tests, config.verify, config.model, generator, inputs, folder, specs=(SPEC.name,))


QUICK_SETTINGS = "{epochs: 12, ramp_epochs: 2, pieces: 4, batch_size: 256, samples_per_epoch: null, learning_rate: 0.02, kappa_end: 0.5, validation_samples: 200}"
X1_WITHIN_3 = "{name: x1_within_3, direction: x1, range: {low: -3, high: 3, units: latent}, threshold: 0.9}"
BOTH_WITHIN_4_5 = "{name: both_within_4.5, direction: [x1, x2], range: [{low: -4.5, high: 4.5, units: latent}, {low: -4.5, high: 4.5, units: latent}]}"


def _write_config(path: Path, finetune: str, unit_test: str = X1_WITHIN_3) -> Path:
    path.write_text(f"verify: {{samples: 300, batch_size: 512, max_pieces: 16}}\nfinetune: {finetune}\nunit_tests:\n  - {unit_test}\n")
    return path


def test_finetune_command(synthetic_audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    config = _write_config(tmp_path / "audit.yaml", QUICK_SETTINGS)
    assert main(["finetune", "--config", str(config), "--out", str(folder)]) == 2  # no summary.json yet
    assert "summary.json': file not found" in capsys.readouterr().err
    assert main(["verify", "--config", str(config), "--out", str(folder)]) == 1
    capsys.readouterr()
    assert main(["finetune", "--config", str(config), "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "x1_within_3: certified accuracy on 200 validation samples" in out and "passed_validation" in out
    assert json.loads((folder / FINETUNE_DIR / FINETUNE_RECORD).read_text())["specs"] == ["x1_within_3"]


def test_schedule_warms_up_ramps_and_holds() -> None:
    settings = FinetuneConfig(epochs=6, warmup_epochs=1, ramp_epochs=2, kappa_start=1.0, kappa_end=0.5)
    at = [schedule_at(settings, step, steps_per_epoch=2) for step in range(8)]
    assert [(s.scale, s.kappa) for s in at[:2]] == [(0.0, 1.0), (0.0, 1.0)]
    assert [s.scale for s in at[2:7]] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [s.kappa for s in at[2:6]] == [0.875, 0.75, 0.625, 0.5]


def test_box_pieces_cover_the_box() -> None:
    low, high = box_pieces(np.array([-1.0, 0.0]), np.array([1.0, 4.0]), 4)
    assert low.shape == high.shape == (4, 2)
    assert np.isclose(np.prod(high - low, axis=1).sum(), 2.0 * 4.0)  # the pieces tile the box
    assert low.min(axis=0).tolist() == [-1.0, 0.0] and high.max(axis=0).tolist() == [1.0, 4.0]
    one_low, one_high = box_pieces(np.array([-2.0]), np.array([2.0]), 8)
    assert one_low[:, 0].tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5] and one_high[-1, 0] == 2.0


@pytest.mark.parametrize(
    ("unit_test", "settings", "code", "expected"),
    [
        (X1_WITHIN_3, QUICK_SETTINGS, 0, "FAIL -> PASS"),
        (BOTH_WITHIN_4_5, "{epochs: 3, ramp_epochs: 0, kappa_start: 0, kappa_end: 0, learning_rate: 0.1, batch_size: 64, validation_samples: 50}", 1, "original model is kept"),
    ],
)
def test_the_repair_step_of_auditai_run(synthetic_audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], unit_test: str, settings: str, code: int, expected: str) -> None:
    """What `auditai run` does after a failing audit with finetune.repair: true (the earlier steps need a real dataset)."""
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    config_path = _write_config(tmp_path / "audit.yaml", settings.replace("{", "{repair: true, ", 1), unit_test)
    assert main(["verify", "--config", str(config_path), "--out", str(folder)]) == 1
    config = load_config(config_path)
    assert config.finetune.repair
    assert _repair(config, argparse.Namespace(out=folder, config=config_path), resolve_inputs(folder, config.inputs), tmp_path) == code
    assert expected in capsys.readouterr().out
    assert json.loads((folder / "repair.json").read_text())["passed"] is (code == 0)
