"""Atomic file writes and content hashes.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a crash never leaves a half-written file behind. Files get the permissions of an
ordinary `open()` (0666 less the process umask: 0644 by default), so that pods sharing a
volume can read each other's artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from auditai_ops.errors import AuditInputError

_TEMP_ATTEMPTS = 100


def cache_dir() -> Path:
    """The local cache root: ``$AUDITAI_CACHE_DIR``, default ``~/.cache/auditai-ops`` (attribute measurements, S3 downloads)."""
    return Path(os.environ.get("AUDITAI_CACHE_DIR") or Path.home() / ".cache" / "auditai-ops")


def _open_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file `.<name>.<random>.tmp` in `folder`, created exclusively with mode 0666 less the umask: (its open descriptor, its path).

    Like tempfile.mkstemp (exclusive creation, never through a symlink), but mkstemp makes
    0600 files; here the kernel applies the umask as for any open(), with no global umask read.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        candidate = folder / f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(candidate, flags, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name for '{folder / name}' after {_TEMP_ATTEMPTS} attempts")


def _create_temp(folder: Path, name: str) -> Path:
    """A new, empty temporary file beside `folder / name` (see `_open_temp`)."""
    fd, path = _open_temp(folder, name)
    os.close(fd)
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (mode 0666 less the umask); on success rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_with(path: Path, mode: str, write: Callable[[IO[Any]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        write(handle)


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write many small files {name: bytes} into `folder`, each atomically like `atomic_path` (a temporary file renamed into place), with fewer system calls."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        fd, tmp = _open_temp(folder, name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    _write_with(path, "w", lambda handle: handle.write(text))


def write_json(path: Path, payload: Any) -> None:
    """Write indented, key-sorted JSON atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path, what: str, hint: str = "") -> Any:
    """The JSON in `path`; a missing or malformed file is bad input: "{what} '{path}': file not found{hint}" / "not valid JSON"."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AuditInputError(f"{what} '{path}': file not found{hint}") from None
    except json.JSONDecodeError as error:
        raise AuditInputError(f"{what} '{path}': not valid JSON ({error})") from None


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a compressed .npz atomically (numpy appends no suffix to an open handle)."""
    _write_with(path, "wb", lambda handle: np.savez_compressed(handle, **arrays))


def canonical_json(payload: Any) -> bytes:
    """The bytes that content hashes are taken over: sorted keys, no whitespace."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of a module's weights, independent of the file format they were stored in.

    Covers every tensor's name, dtype, shape and little-endian bytes, in sorted name order.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes."""
    contiguous = np.ascontiguousarray(array)
    return sha256_bytes(f"{contiguous.dtype.str}|{contiguous.shape}|".encode() + contiguous.tobytes())
