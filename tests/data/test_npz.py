"""`open_npz`: every way an archive can be damaged or hostile is one AuditInputError naming the file and key."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from auditai_ops.data import cache
from auditai_ops.data.attributes import STROKE_ATTRIBUTES as ATTRIBUTE_NAMES  # the attributes cached_measurements measures by default
from auditai_ops.data.npz import MAX_ARRAY_BYTES, open_npz
from auditai_ops.errors import AuditInputError


def _read(path: Path, key: str = "a") -> np.ndarray:
    with open_npz(path, f"archive '{path}'") as archive:
        return archive.read(key)


def _error(path: Path, key: str = "a") -> str:
    with pytest.raises(AuditInputError) as caught:
        _read(path, key)
    message = str(caught.value)
    assert message.startswith(f"archive '{path}'") and "\n" not in message
    return message


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_a_good_archive_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "good.npz"
    np.savez_compressed(path, a=np.arange(6, dtype=np.float32).reshape(2, 3), names=np.array(["x", "y"]))
    with open_npz(path, "good") as archive:
        assert archive.files == {"a", "names"}
        assert archive.header("a") == ((2, 3), np.dtype(np.float32))
        np.testing.assert_array_equal(archive.read("a"), np.arange(6).reshape(2, 3))
        assert archive.read("names").tolist() == ["x", "y"]


def test_missing_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match=r"archive 'x': file not found \(run it first\)"):
        with open_npz(tmp_path / "absent.npz", "archive 'x'", " (run it first)"):
            pass
    path = tmp_path / "one.npz"
    np.savez(path, b=np.zeros(2))
    assert "key 'a' is missing (found ['b'])" in _error(path)


def test_an_announced_size_beyond_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    """A few hundred bytes announcing 8 TB: refused from the header, nothing is allocated."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.npy", _npy_header((10**6, 10**6)) + b"\0" * 1000)
    assert path.stat().st_size < 2000
    message = _error(path)
    assert "key 'a' announces shape (1000000, 1000000) of float64 (8,000,000,000,000 bytes)" in message
    assert f"more than the limit of {MAX_ARRAY_BYTES:,} bytes" in message


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([{"x": 1}, None], dtype=object))
    assert "key 'a' holds Python objects (dtype object)" in _error(path)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.write_bytes(b""), "not an .npz archive"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00" + b"x" * 100), "not an .npz archive"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\xff" * 100), "not a readable .npz archive (BadZipFile"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("a", b"raw bytes, not an array"), "key 'a' is not a readable array"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("a.npy", _npy_header((4,))[:20]), "key 'a' is not a readable array"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("a.npy", _npy_header((100,)) + b"\0" * 10), "key 'a' is damaged"),
    ],
    ids=["empty", "npy-not-npz", "bad-zip", "raw-member", "cut-header", "short-data"],
)
def test_damaged_archives(tmp_path: Path, make, fragment: str) -> None:
    path = tmp_path / "bad.npz"
    make(path)
    assert fragment in _error(path)


def test_a_corrupted_compressed_member_is_damaged_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "flipped.npz"
    np.savez_compressed(path, a=np.random.default_rng(0).random(5000))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "key 'a' is damaged" in _error(path)


def test_a_damaged_attribute_cache_entry_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITAI_CACHE_DIR", str(tmp_path))
    images = np.zeros((3, 8, 8), np.float32)
    images[:, 2:6, 3:5] = 1.0
    measured = cache.cached_measurements(images)
    (entry,) = (tmp_path / "attributes").glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 damaged")
    again = cache.cached_measurements(images)
    assert set(again) == set(ATTRIBUTE_NAMES)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(again[name], measured[name])
    with open_npz(entry, "cache") as stored:
        assert stored.files == set(ATTRIBUTE_NAMES), "the entry was written again"
