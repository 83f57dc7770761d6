"""Pixel mode: the classifier is fine-tuned behind the frozen decoder, and the re-audit certifies the candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from auditai_ops.config import FinetuneConfig, GeneratorConfig, InputsConfig, ModelConfig, RangeConfig, UnitTestConfig, VerifyConfig
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.finetune.step import FINETUNE_DIR, finetune_model
from auditai_ops.layers import ViewAs
from auditai_ops.layout import resolve_inputs
from auditai_ops.modelio import read_record
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.resample import resample_certificates
from auditai_ops.verify.step import verify_audit

SPEC = UnitTestConfig(name="slant_3deg", direction=("slant",), range=(RangeConfig(low=-3.0, high=3.0),), property="clean_prediction", threshold=0.99)
VERIFY = VerifyConfig(samples=24, batch_size=64, max_pieces=8)
# Robust loss only and no clean-accuracy budget: the pixel bounds are loose, so this is about the mechanics, not about a good model.
QUICK = FinetuneConfig(
    specs=(SPEC.name,), epochs=3, warmup_epochs=1, ramp_epochs=0, kappa_start=0.0, kappa_end=0.0, pieces=2, batch_size=32, samples_per_epoch=96,
    validation_samples=24, learning_rate=1e-2, clean_accuracy_drop=1.0,
)


def _finetune_and_reaudit(run: Path, model_settings: ModelConfig, out: Path) -> tuple[dict, object]:
    inputs = resolve_inputs(run, InputsConfig())
    generator = load_generator(GeneratorConfig(), inputs.vae)
    result = finetune_model(QUICK, (SPEC,), VERIFY, model_settings, generator, inputs, out)
    assert result.candidate is not None, result.message
    candidate_settings, candidate_inputs = result.audit_settings(model_settings, inputs)
    summary = verify_audit((SPEC,), VERIFY, candidate_settings, generator, candidate_inputs, out / "repaired")
    assert summary["models"][result.hash_key] == result.candidate_sha256 != result.parent_sha256
    resampled = resample_certificates(out / "repaired", candidate_settings, generator, candidate_inputs, points=100)
    assert [r.contradicted_samples for r in resampled] == [0] and resampled[0].verified_samples > 0
    return summary, result


@pytest.mark.slow
def test_head_over_encoder_is_finetuned_on_decoded_images(small_run: Path, tmp_path: Path) -> None:
    _, result = _finetune_and_reaudit(small_run, ModelConfig(mode="pixel"), tmp_path)
    record = read_record(tmp_path / FINETUNE_DIR / "head.safetensors")
    assert record["kind"] == "mlp_head" and record["lineage"]["parent"]["weights_sha256"] == result.parent_sha256
    assert json.loads((tmp_path / FINETUNE_DIR / "finetune.json").read_text())["mode"] == "pixel"


@pytest.mark.slow
def test_a_torchscript_classifier_gets_new_weights_and_keeps_its_file(small_run: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 32), nn.ReLU(), nn.Linear(32, 10), ViewAs((10,))).eval()
    scripted = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(cnn), str(scripted))
    original = scripted.read_bytes()
    summary, result = _finetune_and_reaudit(small_run, ModelConfig(mode="pixel", classifier=str(scripted)), tmp_path / "out")
    assert scripted.read_bytes() == original
    assert result.candidate == tmp_path / "out" / FINETUNE_DIR / "classifier.safetensors"
    assert summary["model"]["weights"] == str(result.candidate.resolve())
    assert read_record(result.candidate)["lineage"]["parent"] == {"hash_key": "classifier_sha256", "weights_sha256": sha256_state_dict(cnn.state_dict()), "classifier": str(scripted)}
    shutil.rmtree(tmp_path / "out")
