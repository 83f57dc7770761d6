"""Pixel mode on the synthetic problem: the classifier is fine-tuned behind the frozen decoder, and the re-audit certifies it.

The generator is a linear pair: decoder z -> W z as a 4x4 image, encoder its pseudo-inverse,
both TorchScript files. Pixel mode then bounds decoder, encoder (or the user's classifier) and
head in one graph.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from finetune_synthetic import SPEC, synthetic_config
from torch import nn

from auditai_ops.classifier.head import load_head
from auditai_ops.config import GeneratorConfig, InputsConfig, ModelConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.finetune.step import FINETUNE_DIR, PASSED_VALIDATION, FinetuneResult, finetune_model
from auditai_ops.layers import ViewAs
from auditai_ops.layout import resolve_inputs
from auditai_ops.modelio import read_record
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.resample import resample_certificates
from auditai_ops.verify.step import verify_audit

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _linear_generator(folder: Path) -> GeneratorConfig:
    torch.manual_seed(1)
    decoder = nn.Sequential(nn.Linear(2, 16), ViewAs((1, 4, 4))).eval()
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        decoder[0].bias.zero_()
        encoder[1].weight.copy_(torch.linalg.pinv(decoder[0].weight))
        encoder[1].bias.zero_()
    torch.jit.save(torch.jit.script(decoder), str(folder / "decoder.pt"))
    torch.jit.save(torch.jit.script(encoder), str(folder / "encoder.pt"))
    return GeneratorConfig(encoder=str(folder / "encoder.pt"), decoder=str(folder / "decoder.pt"), image_shape=(4, 4))


def _repair_in_pixel_mode(folder: Path, generator_settings: GeneratorConfig, model_settings: ModelConfig) -> tuple[dict, FinetuneResult]:
    """Audit (fails), fine-tune, re-audit into folder/repaired (passes, soundly, with the candidate's weights)."""
    config = synthetic_config()
    inputs = resolve_inputs(folder, InputsConfig())
    generator = load_generator(generator_settings, inputs.vae)
    before = verify_audit(config.unit_tests, config.verify, model_settings, generator, inputs, folder)
    assert before["verdict"] == "fail"
    result = finetune_model(config.finetune, config.unit_tests, config.verify, model_settings, generator, inputs, folder)
    assert result.status == PASSED_VALIDATION, result.message
    candidate_settings, candidate_inputs = result.audit_settings(model_settings, inputs)
    after = verify_audit(config.unit_tests, config.verify, candidate_settings, generator, candidate_inputs, folder / "repaired")
    assert after["verdict"] == "pass" and after["unit_tests"][0]["certified_accuracy"] >= SPEC.threshold
    assert after["models"][result.hash_key] == result.candidate_sha256 != result.parent_sha256
    resampled = resample_certificates(folder / "repaired", candidate_settings, generator, candidate_inputs, points=300)
    assert [r.contradicted_samples for r in resampled] == [0] and resampled[0].verified_samples > 0
    return after, result


def test_head_over_encoder_is_repaired_on_decoded_images(synthetic_audit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    _, result = _repair_in_pixel_mode(folder, _linear_generator(tmp_path), ModelConfig(mode="pixel"))
    assert result.candidate == folder / FINETUNE_DIR / "head.safetensors"
    assert read_record(result.candidate)["lineage"]["parent"]["weights_sha256"] == result.parent_sha256


def test_a_torchscript_classifier_gets_new_weights_and_keeps_its_file(synthetic_audit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    shutil.copytree(synthetic_audit, folder)
    generator_settings = _linear_generator(tmp_path)
    head, _ = load_head(folder / "classifier" / "head.safetensors")
    encoder = torch.jit.load(generator_settings.encoder)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 2), *head).eval()
    classifier[1].load_state_dict({"weight": encoder.state_dict()["1.weight"], "bias": encoder.state_dict()["1.bias"]})
    scripted = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.script(classifier), str(scripted))
    original = scripted.read_bytes()
    after, result = _repair_in_pixel_mode(folder, generator_settings, ModelConfig(mode="pixel", classifier=str(scripted)))
    assert scripted.read_bytes() == original
    assert result.candidate == folder / FINETUNE_DIR / "classifier.safetensors"
    assert after["model"]["weights"] == str(result.candidate.resolve())
    parent = read_record(result.candidate)["lineage"]["parent"]
    assert parent == {"hash_key": "classifier_sha256", "weights_sha256": sha256_state_dict(classifier.state_dict()), "classifier": str(scripted)}


def test_weights_that_do_not_fit_the_classifier_are_bad_input(synthetic_audit: Path, tmp_path: Path) -> None:
    generator_settings = _linear_generator(tmp_path)
    inputs = resolve_inputs(synthetic_audit, InputsConfig())
    model_settings = ModelConfig(mode="pixel", classifier=generator_settings.encoder, weights=str(synthetic_audit / "classifier" / "head.safetensors"))
    with pytest.raises(AuditInputError, match="do not fit the loaded classifier"):
        build_audited_model(model_settings, load_generator(generator_settings, inputs.vae), inputs)
