"""Atomic writes: files get the mode of an ordinary open() under the process umask, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from auditai_ops.fileio import atomic_path, write_files, write_json, write_npz, write_text
from auditai_ops.report.images import save_grid_png


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


WRITERS: dict[str, Callable[[Path], None]] = {
    "text": lambda path: write_text(path, "hello\n"),
    "json": lambda path: write_json(path, {"a": 1}),
    "npz": lambda path: write_npz(path, {"a": np.arange(3)}),
    "png": lambda path: save_grid_png(np.zeros((1, 1, 2, 2)), path),
    "files": lambda path: write_files(path.parent, {path.name: b"bytes"}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: Callable[[int], None], writer: str, mask: int, expected: int) -> None:
    umask(mask)
    path = tmp_path / "out" / f"artifact.{writer}"
    WRITERS[writer](path)
    assert _mode(path) == expected, oct(_mode(path))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_overwriting_a_private_file_gives_the_umask_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    path = tmp_path / "summary.json"
    path.write_text("old")
    path.chmod(0o600)
    write_json(path, {"new": True})
    assert _mode(path) == 0o644 and path.read_text() == '{\n  "new": true\n}\n'


def test_temporary_file_is_beside_the_target_with_the_final_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    path = tmp_path / "report.html"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.html.") and tmp.name.endswith(".tmp")
        assert _mode(tmp) == 0o644 and not path.exists()
        tmp.write_text("done")
    assert path.read_text() == "done" and not tmp.exists()


def test_failed_write_leaves_no_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "certificate.json"
    with pytest.raises(TypeError):
        write_text(path, 42)  # type: ignore[arg-type]  # fails inside the open temporary file
    assert list(path.parent.iterdir()) == []

    with pytest.raises(RuntimeError, match="crash"), atomic_path(path) as tmp:
        tmp.write_text("half a certif")
        raise RuntimeError("crash")
    assert list(path.parent.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_text(path, "previous")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("new")
        raise RuntimeError("crash")
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_temporary_names_never_reuse_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creation is exclusive: a name already taken (say, a planted symlink) is skipped, never written through."""
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    tokens = iter(["aaaa", "bbbb"])
    monkeypatch.setattr("auditai_ops.fileio.secrets.token_hex", lambda _: next(tokens))
    (tmp_path / ".gate.json.aaaa.tmp").symlink_to(victim)
    write_text(tmp_path / "gate.json", "decision")
    assert victim.read_text() == "untouched" and (tmp_path / "gate.json").read_text() == "decision"


def test_many_files_are_written_whole_and_leave_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "out" / "b.png").parent.mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"previous")
    write_files(tmp_path / "out", {"a.png": b"first", "b.png": b"second", "c.png": b""})
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == {"a.png": b"first", "b.png": b"second", "c.png": b""}
