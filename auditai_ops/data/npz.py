"""Reading `.npz` archives that users and earlier steps hand in, without trusting them.

`np.load` on a damaged or hostile file fails in many ways (BadZipFile, EOFError, zlib.error,
a ValueError for object arrays, a KeyError for a missing key, raw bytes for a member that is
not an array) and allocates whatever size an array's header announces, so a few kilobytes of
compressed zeros can ask for gigabytes. `NpzArchive` checks that the file is a zip archive,
reads each array's header before its data, refuses object arrays (pickle stays off) and
arrays beyond a size limit, and turns every failure into one `AuditInputError` that names the
file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from auditai_ops.errors import AuditInputError

MAX_ARRAY_BYTES = 4 * 2**30
"""The largest array read from an archive (4 GiB): MNIST's 50,000 training images take 157 MB as float32."""

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class NpzArchive:
    """An open `.npz` file: `files` lists its keys, `header(key)` gives (shape, dtype) cheaply, `read(key)` the checked array."""

    def __init__(self, npz: Any, where: str) -> None:
        self._npz = npz
        self.where = where
        self.files: set[str] = set(npz.files)
        self._names = set(npz.zip.namelist())

    def _member(self, key: str) -> str:
        """The zip member behind `key`, chosen as numpy's NpzFile chooses it."""
        return key if key in self._names else f"{key}.npy"

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype that the array `key` announces, read without its data."""
        if key not in self.files:
            raise AuditInputError(f"{self.where}: key '{key}' is missing (found {sorted(self.files)})")
        try:
            with self._npz.zip.open(self._member(key)) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
        except Exception as error:  # a damaged member fails in any of a dozen ways; all of them are bad input
            raise AuditInputError(f"{self.where}: key '{key}' is not a readable array ({type(error).__name__}: {_short(error)})") from None
        return tuple(int(n) for n in shape), np.dtype(dtype)

    def read(self, key: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
        """The array `key`, refused when it holds Python objects or exceeds `max_bytes`."""
        shape, dtype = self.header(key)
        if dtype.hasobject:
            raise AuditInputError(f"{self.where}: key '{key}' holds Python objects (dtype object); expected a numeric or string array (pickled data is never loaded)")
        size = math.prod(shape) * dtype.itemsize
        if size > max_bytes:
            raise AuditInputError(f"{self.where}: key '{key}' announces shape {shape} of {dtype} ({size:,} bytes), more than the limit of {max_bytes:,} bytes")
        try:
            with self._npz.zip.open(self._member(key)) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
        except Exception as error:  # truncated data, bad CRC, zlib errors: bad input
            raise AuditInputError(f"{self.where}: key '{key}' is damaged ({type(error).__name__}: {_short(error)})") from None
        return array


def _short(error: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def open_npz(path: Path, where: str, missing_hint: str = "") -> Iterator[NpzArchive]:
    """Open the `.npz` archive at `path` for checked reading; `where` starts every error message ("latents 'x.npz'")."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError:
        raise AuditInputError(f"{where}: file not found{missing_hint}") from None
    except OSError as error:
        raise AuditInputError(f"{where}: cannot be read ({error.strerror or error})") from None
    if magic not in _ZIP_MAGIC:
        raise AuditInputError(f"{where}: not an .npz archive (a .npz file is a zip archive of .npy arrays, as numpy.savez writes it)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as error:  # BadZipFile, EOFError, OSError, ValueError: a damaged archive
        raise AuditInputError(f"{where}: not a readable .npz archive ({type(error).__name__}: {_short(error)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise AuditInputError(f"{where}: not an .npz archive")
    try:
        yield NpzArchive(npz, where)
    finally:
        npz.close()
