from pathlib import Path

import pytest

from auditai_ops.config import AuditConfig, load_config, parse_config
from auditai_ops.errors import AuditInputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mnist"


def _error(raw: object) -> str:
    with pytest.raises(AuditInputError) as caught:
        parse_config(raw, source="audit.yaml")
    return str(caught.value)


def test_defaults_are_embedded() -> None:
    config = parse_config(None)
    assert config == AuditConfig()
    assert config.latent.latent_dim == 16
    assert config.verify.methods == ("forward+backward",)


def test_misspelt_field_is_named_with_a_suggestion() -> None:
    assert _error({"latent": {"epocs": 3}}) == "audit.yaml: latent.epocs: unknown field (did you mean 'epochs'?)"


def test_mistyped_nested_field_is_named() -> None:
    message = _error({"unit_tests": [{"name": "a", "direction": "slant", "range": {"low": "wide", "high": 1}}]})
    assert "unit_tests[0].range[0].low" in message and "valid number" in message and "'wide'" in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"unit_tests": [{"name": "a", "direction": "s", "range": {"low": 2, "high": 1}}]}, "unit_tests[0].range[0]: low (2.0) must be <= high (1.0)"),
        ({"unit_tests": [{"name": "a", "direction": "s", "range": {"low": 0, "high": 1}, "threshold": 1.5}]}, "unit_tests[0].threshold"),
        ({"unit_tests": [{"name": "bad name/..", "direction": "s", "range": {"low": 0, "high": 1}}]}, "unit_tests[0].name"),
        ({"verify": {"device": "tpu"}}, "verify.device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"verify": {"methods": ["IBP", "magic"]}}, "verify.methods[1]"),
        ({"latent": {"latent_dim": 0}}, "latent.latent_dim"),
        ({"surprise": 1}, "surprise: unknown field"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_fields_are_named(raw: object, fragment: str) -> None:
    assert fragment in _error(raw)


def test_several_directions_need_as_many_ranges() -> None:
    span = {"low": -1, "high": 1}
    config = parse_config({"unit_tests": [{"name": "a", "direction": ["slant", "thickness"], "range": [span, span]}]})
    assert config.unit_tests[0].direction == ("slant", "thickness") and len(config.unit_tests[0].range) == 2
    assert "2 direction(s) need as many ranges, got 1" in _error({"unit_tests": [{"name": "a", "direction": ["slant", "thickness"], "range": span}]})
    assert "repeat a direction" in _error({"unit_tests": [{"name": "a", "direction": ["slant", "slant"], "range": [span, span]}]})
    assert "1 to 3 directions" in _error({"unit_tests": [{"name": "a", "direction": list("abcd"), "range": [span] * 4}]})


def test_duplicate_unit_test_names_are_refused() -> None:
    test = {"name": "a", "direction": "s", "range": {"low": 0, "high": 1}}
    assert "'a' is used twice" in _error({"unit_tests": [test, test]})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match="cannot be read"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("latent: [unclosed\n")
    with pytest.raises(AuditInputError, match="not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("name", ["audit.yaml", "audit-failing.yaml", "audit-pixel-encoder.yaml", "audit-pixel-torchscript.yaml", "audit-pixel-onnx.yaml", "audit-repair.yaml"])
def test_shipped_examples_validate(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert len(config.unit_tests) >= 2
