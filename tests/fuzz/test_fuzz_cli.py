"""Property-based fuzzing of the CLI's inputs: configs, dataset and latents archives, certificates.

Each target starts from a valid input of the tiny audit (tests/fuzz/conftest.py), mutates it
(structurally: a field retyped, removed or added; and as bytes or text: truncated, spliced
with YAML/JSON syntax or garbage), and runs `auditai` in-process on it. Whatever the input,
the outcome must be exit 0, 1 or 2, with no traceback on stderr (bad input is one line), and
no temporary `*.tmp` file left in the output folder (artifacts are written atomically).

The default run is short (40 examples per target, a few seconds in all); the `slow` variants run 200 each.
A failing example is printed by hypothesis with the input that broke the contract.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cli_harness import AUDIT_CONFIG, CliResult, run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from auditai_ops.config import AuditConfig, parse_yaml

SHORT = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
LATENTS = Path("latent") / "latents.npz"
CERTIFICATE = Path("certificates") / "x1_small.json"


def _assert_contract(result: CliResult, out: Path) -> None:
    """Exit 0, 1 or 2; no traceback; bad input is one `auditai: error:` line; no half-written file."""
    assert result.code in (0, 1, 2), (result.code, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-5000:]
    if result.code == 2:
        errors = [line for line in result.err_lines if line.startswith("auditai: error: ")]
        assert len(errors) == 1, result.err[-3000:]
    left = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else []
    assert not left, f"half-written files left behind: {left}"
    event(f"exit {result.code}")  # --hypothesis-show-statistics: how the examples ended


@contextmanager
def _scratch(tiny_audit: Path) -> Iterator[Path]:
    """A fresh copy of the tiny audit for one example, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="auditai-fuzz-"))
    try:
        yield Path(shutil.copytree(tiny_audit, folder / "audit"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- values and edits ------------------------------------------------------------------------

SMALL_INTS = st.integers(min_value=-3, max_value=40)  # small: a valid-but-mutated setting must stay cheap to run
EDGE_INTS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**30, 10**400])
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([1e308, -1e308, 5e-324, 1e-300])
TEXT = st.text(max_size=12) | st.sampled_from(["", "x1", "x2", "pca1", "latent", "pixel", "cuda", "cuda:7", "cpu", "mnist", "../..", "nan", "\x00", "é"])
SCALARS = st.none() | st.booleans() | SMALL_INTS | EDGE_INTS | FLOATS | TEXT
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)

YAML_TOKENS = [
    "&a ",
    "*a",
    "*b",
    "<<: *a",
    "!!binary ",
    "!!set ",
    "!!python/object:os.system ",
    "!!str ",
    "!!int ",
    "!!float ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    "? ",
    "\t",
    "\x00",
    "'",
    '"',
    "|",
    ">",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "99999999999999999999999",
    "-1",
    "0x10",
    "null",
    "~",
    "yes",
    "\n",
    "    ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "#",
    "\ufeff",
    "\u2028",
    "\x85",
    "é",
    "\\",
]
JSON_TOKENS = ["{", "}", "[", "]", ",", ":", '"', "NaN", "Infinity", "-Infinity", "1e400", "-0", "null", "true", "\\u0000", "\\ud800", "9" * 400, "\x00", "é"]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON-like value (mapping keys and list indices), the value itself included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):  # the first few entries of long lists (certificate samples) suffice
            found += _paths(item, (*prefix, index))
    return found


def _edit(document: Any, path: tuple, action: str, value: Any) -> Any:
    """`document` with the value at `path` replaced, removed, or given an extra (unknown) key."""
    if not path:
        return value if action == "replace" else document
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "remove":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last]["unknown_field_x"] = value
    return document


@st.composite
def structural_edits(draw: st.DrawFn, document: Any) -> Any:
    """1 to 3 edits at random paths of a deep copy of `document`."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        document = _edit(document, path, draw(st.sampled_from(["replace", "replace", "remove", "add"])), draw(VALUES))
    return document


@st.composite
def text_edits(draw: st.DrawFn, text: str, tokens: list[str]) -> bytes:
    """0 to 3 splices of syntax tokens or garbage into `text`, possibly truncated, as bytes (maybe not UTF-8)."""
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["token", "token", "delete", "garbage", "truncate"]))
        if kind == "token":
            data = data[:at] + draw(st.sampled_from(tokens)).encode("utf-8", "surrogatepass") + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)) :]
        elif kind == "garbage":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        else:
            data = data[:at]
    return data


# ---- configs -----------------------------------------------------------------------------------


def _base_config() -> dict[str, Any]:
    """Every field of every section (the defaults), with the tiny audit's verify settings and unit test: every field is a target."""
    base = AuditConfig().model_dump(mode="json")
    tiny = parse_yaml(AUDIT_CONFIG, "AUDIT_CONFIG")
    base["verify"].update(tiny["verify"])
    base["tracking"].update(tiny["tracking"])
    base["unit_tests"] = tiny["unit_tests"]
    return base


BASE_CONFIG = _base_config()


@st.composite
def fuzzed_configs(draw: st.DrawFn) -> bytes:
    document = draw(structural_edits(BASE_CONFIG)) if draw(st.booleans()) else BASE_CONFIG
    return draw(text_edits(yaml.safe_dump(document, sort_keys=False, allow_unicode=draw(st.booleans())), YAML_TOKENS))


def _config_property(tiny_audit: Path, content: bytes) -> None:
    with _scratch(tiny_audit) as audit:
        config = audit / "fuzzed.yaml"
        config.write_bytes(content)
        _assert_contract(run_cli(["verify", "--config", config, "--out", audit]), audit)


test_fuzzed_config = SHORT(given(content=fuzzed_configs())(_config_property))
test_fuzzed_config_long = pytest.mark.slow(LONG(given(content=fuzzed_configs())(_config_property)))


# ---- archives: datasets and latents --------------------------------------------------------------

DTYPES = ["float32", "float64", "float16", "int64", "int8", "uint8", "uint64", "bool", "<U5", "S3", "complex64", "object"]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """A small array of any dtype (object arrays included: np.savez pickles them) and shape."""
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "O":
        return np.full(shape, None, dtype=object)
    count = int(np.prod(shape))
    values = draw(st.lists(FLOATS | SMALL_INTS, min_size=count, max_size=count))
    with np.errstate(all="ignore"):
        return np.array(values, dtype=np.float64).astype(dtype).reshape(shape) if dtype.kind not in "US" else np.array([str(v)[:5] for v in values], dtype=dtype).reshape(shape)


def _transform(array: np.ndarray, how: str) -> np.ndarray:
    """A damaged version of a real array: other dtype, fewer rows, flat, an extra column, a NaN, a huge or negative value."""
    with np.errstate(all="ignore"):
        if how == "astype-int" and array.dtype.kind in "fiub":
            return array.astype(np.int64)
        if how == "astype-float" and array.dtype.kind in "fiub":
            return array.astype(np.float64)
        if how == "astype-str":
            return array.astype(str)
        if how == "fewer-rows":
            return array[: max(0, len(array) // 3)] if array.ndim else array
        if how == "empty":
            return array[:0] if array.ndim else array.reshape(1)[:0]
        if how == "flat":
            return array.reshape(-1)
        if how == "extra-column" and array.ndim >= 1:
            return np.stack([array, array], axis=-1)
        if how == "nan" and array.dtype.kind == "f" and array.size:
            array = array.copy()
            array.flat[array.size // 2] = np.nan
            return array
        if how == "huge" and array.dtype.kind in "fiu" and array.size:
            array = array.copy()
            array.flat[0] = np.iinfo(array.dtype).max if array.dtype.kind in "iu" else np.finfo(array.dtype).max
            return array
        if how == "negative" and array.dtype.kind in "fi" and array.size:
            return -np.abs(array) - 1
    return array


TRANSFORMS = ["astype-int", "astype-float", "astype-str", "fewer-rows", "empty", "flat", "extra-column", "nan", "huge", "negative"]


Edit = tuple[str, str, str, np.ndarray]
"""(key, action, transform, replacement): remove the key, transform its array, or replace (or add) it."""


@st.composite
def archive_edits(draw: st.DrawFn, keys: list[str]) -> tuple[list[Edit], list[tuple[str, int, bytes]], bool]:
    """1 to 3 edits of an archive's arrays (applied by `_apply`), byte edits of the saved file, and whether it is compressed."""
    edits = [
        (draw(st.sampled_from(keys)), draw(st.sampled_from(["remove", "transform", "transform", "replace"])), draw(st.sampled_from(TRANSFORMS)), draw(arrays()))
        for _ in range(draw(st.integers(1, 3)))
    ]
    byte_edits = draw(st.lists(st.tuples(st.sampled_from(["flip", "truncate", "append"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=4)), max_size=2))
    return edits, byte_edits, draw(st.booleans())


def _apply(base: dict[str, np.ndarray], edits: list[Edit]) -> dict[str, np.ndarray]:
    arrays_ = dict(base)
    for key, action, how, replacement in edits:
        if action == "remove":
            arrays_.pop(key, None)
        elif action == "transform" and key in arrays_:
            arrays_[key] = _transform(arrays_[key], how)
        else:
            arrays_[key] = replacement
    return arrays_


def _save(path: Path, arrays_: dict[str, np.ndarray], byte_edits: list[tuple[str, int, bytes]], compressed: bool) -> None:
    """The arrays saved with numpy (object arrays pickled), then the file's bytes flipped, cut or extended."""
    (np.savez_compressed if compressed else np.savez)(path, **arrays_)
    data = bytearray(path.read_bytes())
    for kind, position, payload in byte_edits:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= payload[0] or 1
        elif kind == "truncate":
            data = data[:at]
        else:
            data += payload
    path.write_bytes(bytes(data))


def _dataset_base() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = (rng.random((20, 8, 8)) > 0.6).astype(np.float32)
    return {"images": images, "labels": (np.arange(20) % 2).astype(np.int64)}


DATASET_BASE = _dataset_base()
DATASET_EXTRA_KEYS = ["attr_slant", "attr_custom", "train_images", "train_labels", "valid_images", "valid_labels", "test_images", "test_labels"]
DATASET_CONFIG = "tracking: {enabled: false}\ndata: {dataset: data.npz}\nlatent: {epochs: 1, batch_size: 4, latent_dim: 2, channels: [2, 2]}\n"


def _dataset_property(tmp_root: Path, edits: tuple[list[Edit], list, bool]) -> None:
    changes, byte_edits, compressed = edits
    folder = Path(tempfile.mkdtemp(prefix="auditai-fuzz-data-", dir=tmp_root))
    try:
        _save(folder / "data.npz", _apply(DATASET_BASE, changes), byte_edits, compressed)
        (folder / "audit.yaml").write_text(DATASET_CONFIG)
        _assert_contract(run_cli(["map-latents", "--config", folder / "audit.yaml", "--out", folder / "out"]), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


DATASET_EDITS = archive_edits(sorted(DATASET_BASE) + DATASET_EXTRA_KEYS)
test_fuzzed_dataset = SHORT(given(edits=DATASET_EDITS)(_dataset_property))
test_fuzzed_dataset_long = pytest.mark.slow(LONG(given(edits=DATASET_EDITS)(_dataset_property)))

LATENT_KEYS = ["test_z", "test_labels", "test_ids", "num_classes", "train_z", "train_labels", "valid_z", "valid_labels", "valid_ids", "test_attr_x"]


def _latents_property(tiny_audit: Path, edits: tuple[list[Edit], list, bool]) -> None:
    changes, byte_edits, compressed = edits
    with _scratch(tiny_audit) as audit:
        path = audit / LATENTS
        with np.load(path) as stored:
            real = {key: stored[key] for key in stored.files}
        _save(path, _apply(real, changes), byte_edits, compressed)
        _assert_contract(run_cli(["verify", "--config", audit / "audit.yaml", "--out", audit]), audit)


LATENT_EDITS = archive_edits(LATENT_KEYS)
test_fuzzed_latents = SHORT(given(edits=LATENT_EDITS)(_latents_property))
test_fuzzed_latents_long = pytest.mark.slow(LONG(given(edits=LATENT_EDITS)(_latents_property)))


# ---- certificates ------------------------------------------------------------------------------


@st.composite
def certificate_edits(draw: st.DrawFn) -> tuple[list[tuple[str, int, Any]], bool, list[tuple[str, int, bytes]]]:
    """Structural edits (by index into the certificate's paths, resolved when applied), whether to re-seal the content hash, and text edits."""
    structural = [(draw(st.sampled_from(["replace", "replace", "remove", "add"])), draw(st.integers(0, 10**6)), draw(VALUES)) for _ in range(draw(st.integers(0, 3)))]
    text = [
        (draw(st.sampled_from(["token", "delete", "garbage", "truncate"])), draw(st.integers(0, 10**7)), draw(st.sampled_from(JSON_TOKENS)).encode("utf-8", "surrogatepass"))
        for _ in range(draw(st.integers(0, 2)))
    ]
    return structural, draw(st.booleans()), text


def _mutated_certificate(original: dict[str, Any], edits: tuple[list[tuple[str, int, Any]], bool, list[tuple[str, int, bytes]]]) -> bytes:
    from auditai_ops.verify.certificate import content_hash

    structural, reseal, text_edits_ = edits
    document: Any = json.loads(json.dumps(original))
    for action, index, value in structural:
        paths = _paths(document)
        document = _edit(document, paths[index % len(paths)], action, value)
    if reseal and isinstance(document, dict):  # a consistent hash takes the check past its integrity test, into the recomputation
        try:
            document["content_sha256"] = content_hash(document)
        except (TypeError, ValueError):  # NaN, or keys canonical JSON refuses: leave the old hash
            pass
    data = json.dumps(document, allow_nan=True).encode()
    for kind, position, payload in text_edits_:
        at = position % (len(data) + 1)
        if kind == "token":
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 + position % 40 :]
        elif kind == "garbage":
            data = data[:at] + bytes([position % 256]) * (1 + position % 5) + data[at:]
        else:
            data = data[:at]
    return data


def _certificate_property(tiny_audit: Path, edits: tuple) -> None:
    with _scratch(tiny_audit) as audit:
        original = json.loads((audit / CERTIFICATE).read_text())
        fuzzed = audit / "certificates" / "fuzzed.json"
        fuzzed.write_bytes(_mutated_certificate(original, edits))
        _assert_contract(run_cli(["certificate", "check", fuzzed, "--config", audit / "audit.yaml", "--out", audit]), audit)


test_fuzzed_certificate = SHORT(given(edits=certificate_edits())(_certificate_property))
test_fuzzed_certificate_long = pytest.mark.slow(LONG(given(edits=certificate_edits())(_certificate_property)))
