"""The step helpers an orchestrator uses to name a registered model and override config fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auditai_ops.errors import AuditInputError
from auditai_ops.steps import (
    config_file_text,
    config_from_text,
    discover_directions_step,
    map_latents_step,
    override_config_text,
    registered_model_uri,
    train_classifier_step,
)

PIXEL_CONFIG = "model: {mode: pixel}\nverify: {samples: 7}\nunit_tests:\n  - {name: s, direction: slant, range: {low: -1, high: 1}}\n"


def test_registered_model_uri_tells_a_version_from_an_alias() -> None:
    assert registered_model_uri("mnist-cnn", "3") == "models:/mnist-cnn/3"
    assert registered_model_uri(" mnist-cnn ", "007") == "models:/mnist-cnn/7"
    assert registered_model_uri("mnist-cnn", "candidate") == "models:/mnist-cnn@candidate"


@pytest.mark.parametrize(("name", "version", "field"), [("", "3", "model_name"), ("a/b", "3", "model_name"), ("m", "latest/1", "model_version"), ("m", "-x", "model_version")])
def test_registered_model_uri_refuses_what_is_no_name_version_or_alias(name: str, version: str, field: str) -> None:
    with pytest.raises(AuditInputError, match=f"^{field}:"):
        registered_model_uri(name, version)


def test_overrides_replace_single_fields_and_keep_the_rest() -> None:
    text = override_config_text(PIXEL_CONFIG, {"model": {"classifier": "models:/m/3"}, "data": {"test_limit": 50}})
    config = config_from_text(text)
    assert config.model.mode == "pixel" and config.model.classifier == "models:/m/3"
    assert config.verify.samples == 7 and config.data.test_limit == 50 and config.unit_tests[0].name == "s"
    assert yaml.safe_load(text)["verify"] == {"samples": 7}


def test_no_overrides_give_the_same_config_and_an_empty_text_the_defaults() -> None:
    assert config_from_text(override_config_text(PIXEL_CONFIG, {})) == config_from_text(PIXEL_CONFIG)
    assert config_from_text(override_config_text("", {})) == config_from_text("")


def test_an_override_the_config_does_not_allow_names_the_field() -> None:
    with pytest.raises(AuditInputError, match="config_yaml: model: .*pixel"):
        override_config_text("verify: {samples: 7}\n", {"model": {"classifier": "models:/m/3"}})
    with pytest.raises(AuditInputError, match="config_yaml: verify.samples"):
        override_config_text(PIXEL_CONFIG, {"verify": {"samples": "many"}})
    with pytest.raises(AuditInputError, match="config_yaml: verify: Input should be a valid dictionary"):  # the original's own error comes first
        override_config_text("verify: 3\n", {"verify": {"samples": 1}})


def test_config_file_text_is_the_validated_text_and_names_the_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(PIXEL_CONFIG)
    bad.write_text("verify: {samples: many}\n")
    assert config_file_text(good) == PIXEL_CONFIG
    with pytest.raises(AuditInputError, match=f"config file '{bad}': verify.samples"):
        config_file_text(bad)
    with pytest.raises(AuditInputError, match="cannot be read"):
        config_file_text(tmp_path / "missing.yaml")


def test_pipeline_steps_check_their_inputs_before_training(small_run: Path, tmp_path: Path) -> None:
    """map-latents refuses a missing dataset, discover-directions more PCA components than latent dimensions, before anything is written."""
    with pytest.raises(AuditInputError, match="missing.npz': file not found"):
        map_latents_step("data: {dataset: missing.npz}\n", tmp_path / "latent", base_dir=tmp_path)
    assert not (tmp_path / "latent" / "latent").exists()
    with pytest.raises(AuditInputError, match="directions.pca_components: 17 exceeds the latent dimension 16"):
        discover_directions_step("directions: {pca_components: 17}\n", small_run, tmp_path / "directions")
    assert not (tmp_path / "directions" / "directions").exists()
    with pytest.raises(AuditInputError, match=r"latents '.*latents.npz': file not found \(run `auditai map-latents` first\)"):
        train_classifier_step("", tmp_path / "empty", tmp_path / "head")
    assert not (tmp_path / "head" / "classifier").exists()
