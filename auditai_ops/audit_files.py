"""The files of an audit folder that a decision rests on, read as untrusted input.

Anyone may edit an output folder, so every path read from a file (a certificate's
counterexample image, a summary's certificate, a record's PNG) must name a plain file inside
that folder (`contained_path`), and a decision made on an audit (the gate's) is tied to the
exact bytes of its summary and certificates by `audit_digest`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import canonical_json, sha256_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JSON_SUFFIX = ".json"
PNG_SUFFIX = ".png"
SUMMARY_NAME = "summary.json"


def contained_path(root: Path, relative: object, field: str, suffix: str | None = None) -> Path:
    """`root / relative` when `relative` is a relative path that stays inside `root` (no '..', no absolute path, no symlink out) and names a plain file.

    suffix: the kind of file it must be ('.png' also checks the PNG signature, '.json' the suffix).
    Anything else is bad input naming `field`.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise AuditInputError(f"{field}: expected a relative path inside '{root}', got {relative!r}")
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts:
        raise AuditInputError(f"{field}: '{relative}' leaves the folder '{root}' (absolute paths and '..' are refused)")
    root_resolved = Path(root).resolve()
    candidate = Path(root) / Path(*parts.parts)
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root_resolved) or _has_symlink(Path(root), parts):
        raise AuditInputError(f"{field}: '{relative}' leaves the folder '{root}' through a symbolic link")
    if not resolved.is_file():
        raise AuditInputError(f"{field}: '{relative}' is not a file in '{root}'")
    if suffix is not None:
        if resolved.suffix.lower() != suffix:
            raise AuditInputError(f"{field}: '{relative}' is not a {suffix} file")
        if suffix == PNG_SUFFIX:
            with open(resolved, "rb") as handle:
                if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                    raise AuditInputError(f"{field}: '{relative}' is not a PNG image")
    return resolved


def _has_symlink(root: Path, parts: PurePosixPath) -> bool:
    """Whether any component below `root` on the way to the file is a symbolic link."""
    current = root
    for part in parts.parts:
        current = current / part
        if os.path.islink(current):
            return True
    return False


def file_sha256(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


def audit_digest(summary_file: Path, certificate_files: Mapping[str, Path]) -> str:
    """sha256 over the bytes of `summary.json` and of every certificate (by unit test name).

    Two folders share it exactly when their summary and certificates are byte for byte the
    same: a decision recorded with it (gate.json, a registered version) speaks for those files only.
    """
    return sha256_bytes(canonical_json({"summary": file_sha256(summary_file), "certificates": {name: file_sha256(path) for name, path in sorted(certificate_files.items())}}))


def read_summary(folder: Path) -> dict[str, object]:
    """The audit folder's summary.json as a mapping with a list of named unit-test rows; anything else is bad input."""
    path = contained_path(folder, SUMMARY_NAME, SUMMARY_NAME, JSON_SUFFIX)
    try:
        summary = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:
        raise AuditInputError(f"summary '{path}': not valid JSON ({str(error).splitlines()[0][:200]})") from None
    rows = summary.get("unit_tests") if isinstance(summary, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get("name"), str) for row in rows):
        raise AuditInputError(f"summary '{path}': expected an object whose 'unit_tests' is a list of named rows")
    return summary


def audit_files(folder: Path) -> tuple[Path, dict[str, Path]]:
    """summary.json and the certificate each of its rows names (contained in `folder`), by unit test name; rows without a certificate are left out."""
    summary = read_summary(folder)
    certificates, seen = {}, set()
    for index, row in enumerate(summary["unit_tests"]):  # type: ignore[arg-type]
        if row["name"] in seen:
            raise AuditInputError(f"summary.json unit_tests[{index}].name: unit test '{row['name']}' appears twice")
        seen.add(row["name"])
        if row.get("certificate") is not None:
            certificates[row["name"]] = contained_path(folder, row["certificate"], f"summary.json unit_tests[{index}].certificate", JSON_SUFFIX)
    return contained_path(folder, SUMMARY_NAME, SUMMARY_NAME, JSON_SUFFIX), certificates


def folder_audit_digest(folder: Path) -> str:
    """The `audit_digest` of the summary and certificates in an audit folder (bad input when they cannot be read)."""
    summary_file, certificates = audit_files(folder)
    return audit_digest(summary_file, certificates)
