"""Where a user's model comes from: a `ModelSource`, parsed from the reference in a config."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auditai_ops.errors import AuditInputError

ModelKind = Literal["torchscript", "onnx", "factory", "mlflow", "auditai", "pickle"]

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
PICKLE_SUFFIXES = (".pkl", ".pickle")
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_PICKLE_PROTOCOL_BYTE = 0x80


@dataclass(frozen=True)
class ModelSource:
    """A model reference with its kind resolved.

    `reference` is an absolute path for file kinds, `pkg.module:factory` for `factory` and
    the URI for `mlflow`; `weights` is the safetensors file of a factory; `kwargs` are
    passed to the factory (or, for `auditai` VAE records, `{"part": "encoder"|"decoder"}`).
    """

    kind: ModelKind
    reference: str
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_model_reference(reference: str, weights: str | None = None, kwargs: dict[str, Any] | None = None, base_dir: Path | None = None) -> ModelSource:
    """Infer the kind of `reference`; relative paths are resolved against `base_dir`.

    `models:/name/version`, `models:/name@alias`, `runs:/id/path` -> mlflow; `pkg.mod:factory`
    (with `weights`) -> factory; `.onnx` -> onnx; `.pt`/`.pth`/`.ts`/`.torchscript`/`.jit` ->
    torchscript (pickle when the file exists and is a plain `torch.save` pickle); `.pkl` ->
    pickle; `.safetensors` or `.json` of a record written by auditai_ops.modelio -> auditai;
    a directory (a local MLflow model folder, or downloaded artifacts) -> mlflow. An
    `s3://bucket/key` file or weights are fetched into the cache first (see auditai_ops.s3).
    """
    text = str(reference).strip()
    options = dict(kwargs or {})
    if not text:
        raise AuditInputError("model reference: empty")
    if text.startswith(MLFLOW_SCHEMES):
        return ModelSource("mlflow", text, None, options)
    if text.startswith("s3://") or (weights or "").startswith("s3://"):
        from auditai_ops.s3 import fetch_s3

        text = str(fetch_s3(text, siblings=(".json", ".safetensors"))) if text.startswith("s3://") else text
        weights = str(fetch_s3(weights)) if weights and weights.startswith("s3://") else weights
    if _FACTORY.match(text):
        if weights is None:
            raise AuditInputError(f"model '{text}': a module:factory reference needs its weights (a .safetensors state_dict)")
        return ModelSource("factory", text, _resolve(weights, base_dir), options)
    path = Path(_resolve(text, base_dir))
    suffix = path.suffix.lower()
    if path.is_dir():
        return ModelSource("mlflow", str(path), None, options)
    if suffix == ".onnx":
        return ModelSource("onnx", str(path), None, options)
    if suffix in PICKLE_SUFFIXES:
        return ModelSource("pickle", str(path), None, options)
    if suffix in TORCHSCRIPT_SUFFIXES:
        kind: ModelKind = "pickle" if path.is_file() and sniff_torch_file(path) == "pickle" else "torchscript"
        return ModelSource(kind, str(path), None, options)
    if suffix in (".safetensors", ".json"):
        weights_path = path.with_suffix(".safetensors")
        if not path.with_suffix(".json").exists() and weights_path.exists():
            raise AuditInputError(
                f"model '{path}': safetensors weights without a '{path.with_suffix('.json').name}' record; give the architecture as `pkg.module:factory` with these weights"
            )
        return ModelSource("auditai", str(weights_path), None, options)
    raise AuditInputError(
        f"model '{text}': unknown kind; expected a TorchScript file (.pt, .ts, .torchscript), an ONNX file (.onnx), "
        "`pkg.module:factory` with safetensors weights, an MLflow URI (models:/name/version, models:/name@alias, runs:/id/path) "
        "or a .safetensors file with its .json record"
    )


def sniff_torch_file(path: Path) -> Literal["torchscript", "pickle", "unknown"]:
    """Tell a TorchScript archive from a `torch.save` pickle by the file's content (nothing is unpickled)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise AuditInputError(f"model '{path}': cannot be read ({error.strerror or error})") from None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        if any(name.endswith("constants.pkl") for name in names) and any("/code/" in name for name in names):
            return "torchscript"
        if any(name.endswith(".pkl") for name in names):
            return "pickle"
        return "unknown"
    if head[:1] == bytes([_PICKLE_PROTOCOL_BYTE]):
        return "pickle"
    return "unknown"


def _resolve(text: str, base_dir: Path | None) -> str:
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path.absolute())
