"""Every kind of bad input, through the CLI: exit 2, one line on stderr naming the file or field, no traceback, nothing half-written."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_harness import AUDIT_CONFIG, run_cli

LATENTS = Path("latent") / "latents.npz"


def _verify(audit: Path) -> list[str | Path]:
    return ["verify", "--config", audit / "audit.yaml", "--out", audit]


def _no_temporary_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")], "a half-written file was left behind"


# ---- config files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), ["not UTF-8 text (byte 0x"]),
        (b"verify: {samples: 3}\n# caf\xe9\n", ["not UTF-8 text (byte 0xe9 at offset 26)"]),
        (b"verify:\n  samples: 3\n    bad: 1\n", ["not valid YAML at line 3, column 8: mapping values are not allowed here"]),
        (b"verify: {samples: 3}\x00\n", ["not valid YAML at line 1, column 21: unacceptable character #x0000"]),
        (b"unit_tests: [\n", ["not valid YAML at line 2, column 1:"]),
        (b"a: &a [*a]\n", ["recursive document"]),
        (b"x" * (2**20 + 1), ["larger than the limit of 1,048,576 bytes"]),
        (b"verify: {falsify_grid: 200000000}\n", ["verify.falsify_grid: Input should be less than or equal to 4096"]),
        (b"verify: {min_margin: .nan}\n", ["verify.min_margin: Input should be a finite number"]),
    ],
    ids=["random-bytes", "latin-1", "bad-indent", "nul", "unclosed", "recursive-alias", "too-large", "falsify-grid", "nan"],
)
def test_bad_config_file(audit_copy: Path, content: bytes, fragments: list[str]) -> None:
    config = audit_copy / "bad.yaml"
    config.write_bytes(content)
    result = run_cli(["verify", "--config", config, "--out", audit_copy])
    result.assert_bad_input(f"config file '{config}'", *fragments)


def test_alias_bomb_in_factory_kwargs_is_refused_before_validation(audit_copy: Path) -> None:
    """A 'billion laughs' document: 9 levels of 9 aliases stand for 9**9 strings; refused while parsing, in well under a second."""
    lines = ["model:", "  factory_kwargs:", "    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    config = audit_copy / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    result = run_cli(["verify", "--config", config, "--out", audit_copy])
    result.assert_bad_input(f"config file '{config}'", "not valid YAML at line", "expands to more than 50000 nodes")


# ---- dataset files (map-latents) ---------------------------------------------------------------


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(0).random((count, 8, 8)).astype(np.float32)


def _raw_images(path: Path) -> None:
    """An archive whose 'images' member is plain bytes, not a .npy array (numpy would hand back the bytes)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images", b"not an array")
        archive.writestr("labels.npy", _npy(np.arange(20) % 2))


def _huge_header(path: Path) -> None:
    """A few hundred bytes that announce a 10**6 x 10**6 float64 array (8 TB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("labels.npy", _npy(np.zeros(10**6, np.int64)))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _truncated(path: Path) -> None:
    np.savez_compressed(path, images=_images(60), labels=np.arange(60) % 3)
    path.write_bytes(path.read_bytes()[:1500])


DATASETS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-samples": (lambda p: np.savez(p, images=_images(0), labels=np.zeros(0, np.int64)), "key 'images': expected at least one image, got shape (0, 8, 8)"),
    "zero-test-split": (
        lambda p: np.savez(
            p,
            train_images=_images(20),
            train_labels=np.arange(20) % 2,
            valid_images=_images(5),
            valid_labels=np.arange(5) % 2,
            test_images=_images(0),
            test_labels=np.zeros(0, int),
        ),
        "key 'test_images': expected at least one image",
    ),
    "corrupt": (lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(200)), "not a readable .npz archive (BadZipFile"),
    "not-a-zip": (lambda p: p.write_bytes(os.urandom(200)), "not an .npz archive"),
    "empty-file": (lambda p: p.write_bytes(b""), "not an .npz archive"),
    "truncated": (_truncated, "not a readable .npz archive"),
    "object-images": (lambda p: np.savez(p, images=_images(20).astype(object), labels=np.arange(20) % 2), "key 'images' holds Python objects (dtype object)"),
    "object-labels": (lambda p: np.savez(p, images=_images(20), labels=(np.arange(20) % 2).astype(object)), "key 'labels' holds Python objects"),
    "raw-member": (_raw_images, "key 'images' is not a readable array"),
    "huge-header": (_huge_header, "announces shape (1000000, 1000000) of float64"),
    "label-too-large": (lambda p: np.savez(p, images=_images(20), labels=np.full(20, 10**12)), "key 'labels': expected labels < 100000"),
    "attribute-of-strings": (
        lambda p: np.savez(p, images=_images(20), labels=np.arange(20) % 2, attr_slant=np.array(["a"] * 20)),
        "key 'attr_slant': expected a numeric attribute column",
    ),
    "attribute-too-short": (
        lambda p: np.savez(p, images=_images(20), labels=np.arange(20) % 2, attr_slant=np.zeros(3)),
        "key 'attr_slant': expected an attribute column of shape (20,)",
    ),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_bad_dataset_file(tmp_path: Path, case: str) -> None:
    make, fragment = DATASETS[case]
    dataset = tmp_path / "data.npz"
    make(dataset)
    config = tmp_path / "audit.yaml"
    config.write_text("tracking: {enabled: false}\ndata: {dataset: data.npz}\nlatent: {epochs: 1, batch_size: 4, latent_dim: 2, channels: [2, 2]}\n")
    out = tmp_path / "out"
    run_cli(["map-latents", "--config", config, "--out", out]).assert_bad_input(f"dataset '{dataset}'", fragment)
    assert not (out / LATENTS).exists()
    _no_temporary_files(tmp_path)


# ---- latents files (verify) ------------------------------------------------------------------


def _with(**changes: np.ndarray | None) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The latents' arrays with some replaced (None: removed)."""

    def change(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = dict(arrays)
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value
        return arrays

    return change


TEST_COUNT = 300  # the synthetic audit's test split
rng = np.random.default_rng(1)
LATENT_CASES: dict[str, tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], str]] = {
    "dimension-1": (_with(test_z=rng.normal(size=(TEST_COUNT, 1)).astype(np.float32)), "key 'test_z' has latents of dimension 1, but the head"),
    "dimension-3": (_with(test_z=rng.normal(size=(TEST_COUNT, 3)).astype(np.float32)), "takes latents of dimension 2"),
    "negative-label": (lambda a: _with(test_labels=a["test_labels"] - 1)(a), "key 'test_labels': expected labels in [0, 100000), got values in [-1,"),
    "label-beyond-classes": (lambda a: _with(test_labels=a["test_labels"] + 2)(a), "key 'test_labels' has label 3, but the head"),
    "no-test_z": (_with(test_z=None), "key 'test_z' is missing"),
    "no-test_ids": (_with(test_ids=None), "key 'test_ids' is missing"),
    "no-test_labels": (_with(test_labels=None), "key 'test_labels' is missing"),
    "integer-latents": (lambda a: _with(test_z=a["test_z"].astype(np.int64))(a), "key 'test_z': expected floating-point latents, got dtype int64"),
    "string-latents": (lambda a: _with(test_z=a["test_z"].astype(str))(a), "key 'test_z': expected floating-point latents"),
    "flat-latents": (lambda a: _with(test_z=a["test_z"][:, 0])(a), "key 'test_z': expected latents of shape (N, D)"),
    "no-samples": (lambda a: _with(test_z=a["test_z"][:0], test_ids=a["test_ids"][:0], test_labels=a["test_labels"][:0])(a), "got shape (0, 2)"),
    "short-labels": (lambda a: _with(test_labels=a["test_labels"][:5])(a), "key 'test_labels': expected integer labels of shape (300,)"),
    "float-labels": (lambda a: _with(test_labels=a["test_labels"].astype(np.float64))(a), "key 'test_labels': expected integer labels"),
    "integer-ids": (_with(test_ids=np.arange(TEST_COUNT)), "key 'test_ids': expected sample ids as strings"),
    "repeated-ids": (_with(test_ids=np.array(["same"] * TEST_COUNT)), "key 'test_ids': sample ids must be distinct"),
    "nan-latents": (lambda a: _with(test_z=np.where(np.arange(TEST_COUNT)[:, None] == 7, np.nan, a["test_z"]))(a), "key 'test_z' contains NaN or infinite values"),
    "huge-latents": (lambda a: _with(test_z=a["test_z"] * np.float32(1e37))(a), "key 'test_z': expected latent values within +-1e+06"),
    "object-latents": (lambda a: _with(test_z=a["test_z"].astype(object))(a), "key 'test_z' holds Python objects"),
}


@pytest.mark.parametrize("case", sorted(LATENT_CASES))
def test_bad_latents_file(audit_copy: Path, case: str) -> None:
    change, fragment = LATENT_CASES[case]
    path = audit_copy / LATENTS
    with np.load(path) as stored:
        arrays = change({key: stored[key] for key in stored.files})
    np.savez(path, **arrays)
    (audit_copy / "summary.json").unlink()
    run_cli(_verify(audit_copy)).assert_bad_input(f"latents '{path}'", fragment)
    assert not (audit_copy / "summary.json").exists(), "refused before any verification"
    _no_temporary_files(audit_copy)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"PK\x03\x04garbage", "not a readable .npz archive"), (b"", "not an .npz archive"), (b"\x93NUMPY", "not an .npz archive")],
    ids=["corrupt", "empty", "npy-magic"],
)
def test_damaged_latents_file(audit_copy: Path, content: bytes, fragment: str) -> None:
    path = audit_copy / LATENTS
    path.write_bytes(content)
    run_cli(_verify(audit_copy)).assert_bad_input(f"latents '{path}'", fragment)


def test_truncated_latents_file(audit_copy: Path) -> None:
    path = audit_copy / LATENTS
    path.write_bytes(path.read_bytes()[:3000])
    run_cli(_verify(audit_copy)).assert_bad_input(f"latents '{path}'", "not a readable .npz archive")


def test_certificate_check_with_latents_of_another_dimension(audit_copy: Path) -> None:
    path = audit_copy / LATENTS
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    np.savez(path, **{**arrays, "test_z": np.zeros((TEST_COUNT, 5), np.float32)})
    certificate = audit_copy / "certificates" / "x1_small.json"
    result = run_cli(["certificate", "check", certificate, "--config", audit_copy / "audit.yaml", "--out", audit_copy])
    result.assert_bad_input(f"latents '{path}'", "dimension 5")


# ---- the output folder -----------------------------------------------------------------------


@pytest.mark.parametrize("below", ["sub", "sub/deeper", ""], ids=["child", "grandchild", "the-file-itself"])
def test_out_below_an_existing_file(audit_copy: Path, tmp_path: Path, below: str) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    out = blocker / below if below else blocker
    result = run_cli(["verify", "--config", audit_copy / "audit.yaml", "--out", out])
    result.assert_bad_input(f"--out '{out}'", f"'{blocker}' exists and is not a folder; expected a folder, or a path where one can be made")
    assert blocker.read_text() == "not a folder"


def test_the_tiny_audit_itself_passes(audit_copy: Path) -> None:
    """The cases above are refused for their one defect: the unchanged audit verifies."""
    assert (audit_copy / "audit.yaml").read_text() == AUDIT_CONFIG
    result = run_cli(_verify(audit_copy))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    _no_temporary_files(audit_copy)
