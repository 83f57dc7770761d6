import time
from pathlib import Path

import pytest

from auditai_ops.config import MAX_CONFIG_BYTES, AuditConfig, load_config, parse_config, parse_yaml
from auditai_ops.errors import AuditInputError
from auditai_ops.steps import config_from_text, override_config_text

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


def _yaml_error(text: str) -> str:
    with pytest.raises(AuditInputError) as caught:
        parse_yaml(text, "audit.yaml")
    message = str(caught.value)
    assert "\n" not in message, "one line"
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("verify:\n  samples: 3\n    bad: 1\n", "audit.yaml: not valid YAML at line 3, column 8: mapping values are not allowed here"),
        ("latent: [unclosed\n", "audit.yaml: not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)"),
        ("verify:\n\tsamples: 3\n", "audit.yaml: not valid YAML at line 2, column 1: found character '\\t' that cannot start any token (while scanning for the next token)"),
        ("verify: {samples: 3}\n\nx: \x00\n", "audit.yaml: not valid YAML at line 3, column 4: unacceptable character #x0000 (special characters are not allowed)"),
        ("a: *nowhere\n", "audit.yaml: not valid YAML at line 1, column 4: found undefined alias 'nowhere'"),
        ("!!int inputs: 1\n", "audit.yaml: not valid YAML: a tagged value cannot be read (invalid literal for int() with base 10: 'inputs')"),  # found by test_fuzzed_config_long
        ("a: !!bool maybe\n", "audit.yaml: not valid YAML: a tagged value cannot be read ('maybe')"),
        (
            "!!python/object/apply:os.system [echo]\n",
            "audit.yaml: not valid YAML at line 1, column 1: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
    ],
)
def test_malformed_yaml_is_one_line_with_line_and_column(text: str, expected: str) -> None:
    assert _yaml_error(text) == expected


def _alias_bomb(indent: str = "") -> str:
    """9 levels of 9 aliases: the loaded object shares its lists, but expanded it is 9**9 strings."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "factory_kwargs"])
def test_alias_bombs_are_refused_before_validation(where: str) -> None:
    text = _alias_bomb() if where == "top" else "model:\n  factory_kwargs:\n" + _alias_bomb("    ")
    started = time.perf_counter()
    assert "expands to more than 50000 nodes once aliases are expanded" in _yaml_error(text)
    with pytest.raises(AuditInputError, match="config_yaml: not valid YAML at line .*expands to more than"):
        config_from_text(text)
    with pytest.raises(AuditInputError, match="expands to more than"):
        override_config_text(text, {"verify": {"device": "cpu"}})
    assert time.perf_counter() - started < 5.0, "refused while parsing, not after expanding"


def test_small_aliases_still_work() -> None:
    span = "{low: -1, high: 1}"
    config = config_from_text(f"unit_tests:\n  - {{name: a, direction: s, range: &r {span}}}\n  - {{name: b, direction: t, range: *r}}\n")
    assert config.unit_tests[1].range == config.unit_tests[0].range


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: &a [*a]\n", "an alias refers to a node that contains it (a recursive document)"),
        ("[" * 200, "nested deeper than 64 levels"),
        ("- 1\n" * 60_000, "the document has more than 50000 nodes"),
    ],
    ids=["recursive", "deep", "many-nodes"],
)
def test_recursive_deep_and_huge_documents_are_refused(text: str, fragment: str) -> None:
    assert fragment in _yaml_error(text)


def test_config_files_are_size_limited_utf8(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(AuditInputError, match=r"config file '.*big.yaml': larger than the limit of 1,048,576 bytes"):
        load_config(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(AuditInputError, match=r"config file '.*binary.yaml': not UTF-8 text \(byte 0x80 at offset 128\)"):
        load_config(binary)
    with_bom = tmp_path / "bom.yaml"
    with_bom.write_bytes(b"\xef\xbb\xbfverify: {samples: 7}\n")
    assert load_config(with_bom).verify.samples == 7
    with pytest.raises(AuditInputError, match="larger than the limit"):
        config_from_text("#" * (MAX_CONFIG_BYTES + 1))


@pytest.mark.parametrize(
    ("section", "field", "limit"),
    [
        ("verify", "falsify_grid", 4096),
        ("verify", "samples", 1_000_000),
        ("verify", "batch_size", 65536),
        ("verify", "block_size", 65536),
        ("verify", "max_pieces", 65536),
        ("verify", "falsify_steps", 10_000),
        ("verify", "falsify_restarts", 1024),
        ("latent", "latent_dim", 4096),
        ("latent", "epochs", 10_000),
        ("latent", "batch_size", 65536),
        ("classifier", "epochs", 10_000),
        ("classifier", "batch_size", 65536),
        ("directions", "effect_samples", 100_000),
        ("directions", "effect_points", 1001),
        ("directions", "strip_samples", 100),
        ("directions", "strip_points", 100),
        ("directions", "pca_components", 4096),
        ("finetune", "epochs", 10_000),
        ("finetune", "pieces", 4096),
        ("finetune", "batch_size", 65536),
        ("finetune", "validation_samples", 1_000_000),
        ("finetune", "samples_per_epoch", 100_000_000),
        ("data", "train_limit", 100_000_000),
        ("data", "test_limit", 100_000_000),
    ],
)
def test_every_setting_that_sizes_memory_has_an_upper_bound(section: str, field: str, limit: int) -> None:
    small = {"finetune": {"batch_size": 1, "pieces": 1}, "verify": {"block_size": 1, "max_pieces": 1}, "directions": {"effect_samples": 1, "effect_points": 3}}
    parse_config({section: {**small.get(section, {}), field: limit}})
    message = _error({section: {**small.get(section, {}), field: limit + 1}})
    assert message == f"audit.yaml: {section}.{field}: Input should be less than or equal to {limit} (got {limit + 1})"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"verify": {"falsify_grid": 200_000_000}}, "verify.falsify_grid: Input should be less than or equal to 4096 (got 200000000)"),
        ({"latent": {"channels": [32, 4096]}}, "latent.channels[1]: Input should be less than or equal to 1024"),
        ({"classifier": {"hidden": [100_000]}}, "classifier.hidden[0]: Input should be less than or equal to 8192"),
        ({"classifier": {"hidden": [8] * 17}}, "classifier.hidden: Tuple should have at most 16 items"),
        ({"generator": {"image_shape": [28, 4096]}}, "generator.image_shape[1]: Input should be less than or equal to 1024"),
        ({"verify": {"block_size": 65536, "max_pieces": 65536}}, "verify: block_size x max_pieces = 65536 x 65536 open pieces at most; keep the product <= 16777216"),
        ({"finetune": {"batch_size": 65536, "pieces": 4096}}, "finetune: batch_size x pieces = 65536 x 4096 boxes are bounded per step"),
        ({"directions": {"effect_samples": 100_000, "effect_points": 1001}}, "directions: effect_samples x effect_points = 100000 x 1001 images"),
        ({"verify": {"seconds_per_test": 1e30}}, "verify.seconds_per_test: Input should be less than or equal to 604800"),
        ({"verify": {"min_margin": float("nan")}}, "verify.min_margin: Input should be a finite number"),
        ({"unit_tests": [{"name": "a", "direction": "s", "range": {"low": float("-inf"), "high": 1}}]}, "unit_tests[0].range[0].low: Input should be a finite number"),
        ({"latent": {"seed": -1}}, "latent.seed: Input should be greater than or equal to 0"),
        ({"verify": {"seed": 2**64}}, "verify.seed: Input should be less than 4294967296"),
        ({"data": {"dataset": "a\x00b.npz"}}, "data.dataset: must not contain NUL characters"),
        ({"unit_tests": [{"name": f"t{i}", "direction": "s", "range": {"low": 0, "high": 1}} for i in range(1001)]}, "unit_tests: Tuple should have at most 1000 items"),
    ],
)
def test_absurd_sizes_and_numbers_are_named(raw: dict, fragment: str) -> None:
    assert fragment in _error(raw)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}, "model.factory_kwargs: nested deeper than 8 levels (at 'a.b.c.d.e.f.g.h.i')"),
        ({"a": list(range(1001))}, "model.factory_kwargs: more than 1000 values in all"),
        ({"a": float("nan")}, "model.factory_kwargs: 'a' must be a finite number, got nan"),
        ({"a": b"bytes"}, "model.factory_kwargs: 'a' must be a string, number, boolean, null, list or mapping, got bytes"),
        ({"a": {1: 2}}, "model.factory_kwargs: keys must be strings, got int 1 in 'a'"),
    ],
)
def test_factory_kwargs_are_small_plain_values(kwargs: dict, fragment: str) -> None:
    assert fragment in _error({"model": {"factory_kwargs": kwargs}})
    assert parse_config({"model": {"factory_kwargs": {"width": 8, "names": ["a", "b"], "nested": {"ok": [1.5, None, True]}}}}).model.factory_kwargs["width"] == 8


def test_many_problems_stay_on_one_short_line() -> None:
    message = _error({"unit_tests": [{"name": "bad name"} for _ in range(20)]})
    assert "\n" not in message and message.endswith("more problems") and len(message) < 2000
    long_value = _error({"data": {"dataset": "x" * 5000}})
    assert len(long_value) < 300
