"""Saving and loading the project's own modules without pickle.

A module is stored as `<name>.safetensors` (weights) beside `<name>.json`, which holds the
kind of module, the architecture needed to rebuild it, the sha256 of its weights and any
metrics. Loading rebuilds the module from the JSON and loads the weights strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import atomic_path, read_json, sha256_state_dict, write_json

SCHEMA_VERSION = 1


def save_module(module: nn.Module, path: Path, kind: str, architecture: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Write `path` (.safetensors) and its `.json` record atomically; return the weights' sha256."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    weights_sha256 = sha256_state_dict(state)
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "architecture": architecture,
        "weights_file": path.name,
        "weights_sha256": weights_sha256,
        **(extra or {}),
    }
    write_json(path.with_suffix(".json"), record)
    return weights_sha256


def read_record(path: Path) -> dict[str, Any]:
    """The JSON record beside a saved module."""
    record_path = Path(path).with_suffix(".json")
    record = read_json(record_path, "model record", " (run the step that creates it first)")
    if not isinstance(record, dict) or "kind" not in record or "architecture" not in record:
        raise AuditInputError(f"model record '{record_path}': expected keys 'kind' and 'architecture'")
    return record


def load_safetensors_into(module: nn.Module, path: Path, mismatch: str) -> dict[str, torch.Tensor]:
    """Load a safetensors state_dict into `module` strictly; a bad file or a mismatch is bad input."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise AuditInputError(f"model weights '{path}': file not found") from None
    except (OSError, SafetensorError) as error:
        raise AuditInputError(f"model weights '{path}': cannot be read as safetensors ({error})") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise AuditInputError(f"model weights '{path}': {mismatch} ({first_line})") from None
    return state


def load_module(path: Path, kind: str, build: Callable[[dict[str, Any]], nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a module with `build(architecture)` and load its safetensors weights strictly."""
    path = Path(path)
    record = read_record(path)
    if record["kind"] != kind:
        raise AuditInputError(f"model '{path}': expected a saved {kind}, found a {record['kind']}")
    try:
        module = build(record["architecture"])
    except (TypeError, KeyError, ValueError) as error:
        raise AuditInputError(f"model record '{path.with_suffix('.json')}': bad architecture ({error})") from None
    state = load_safetensors_into(module, path, "do not match the recorded architecture")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AuditInputError(f"model weights '{path}': tensor '{name}' contains NaN or infinite values")
    module.eval()
    return module, record
