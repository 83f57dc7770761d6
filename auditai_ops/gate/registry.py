"""Model-registry operations of the gate: register a package once, download a version, move an alias.

Idempotency and concurrency: a version is identified by `auditai.audit_key`, the sha256 of
its weights digest and certificates digest, set atomically with the version. Registering
first looks for a version with that key; two gates that both create one resolve the race
afterwards: the lowest version number wins and the other gate deletes its own version. An
alias moves only to the highest version tagged `auditai.gate = PASS`, re-read after every
write, so concurrent gates of one model converge on the newest certified version.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from auditai_ops.fileio import canonical_json, sha256_bytes
from auditai_ops.gate.package import find_package, read_manifest, weights_digest
from auditai_ops.verify.certificate import package_version

KEY_TAG = "auditai.audit_key"
GATE_TAG = "auditai.gate"
AUDIT_TAG = "auditai.audit_sha256"
"""`audit_files.audit_digest` of the registered summary and certificates."""
PACKAGE_TAG = "auditai.package_sha256"
"""`package.package_digest` of the registered package: every file, as the gate registered it."""
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT_PATH = "model"
ALIAS_ROUNDS = 6


class Deadline:
    """The gate's time limit, checked before every irreversible registry write."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise TimeoutError(f"the gate's time limit ({self.seconds:g} s) ran out before {what}")


def audit_key(weights: dict[str, str], audit_sha256: str) -> str:
    """The identity of one audit of one model: its weights digest and the digest of its summary and certificates' bytes."""
    return sha256_bytes(canonical_json({"weights": weights_digest(weights), "audit": audit_sha256}))


def pip_requirements() -> list[str]:
    """Explicit requirements of the pyfunc (inferring them costs seconds): this package and what loading the model imports."""
    pins = []
    for name in ("auditai-ops", "torch", "numpy", "safetensors", "pydantic", "pyyaml", "mlflow"):
        version = package_version(name)
        pins.append(name if version == "not installed" else f"{name}=={version}")
    return pins


def model_signature(package: Path) -> Any:
    """Images float32 in [0, 1] in, (N, H, W) grayscale or (N, C, H, W) colour; predicted classes (N,) int64 out."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *_image_dims(package)))]), outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))


def _image_dims(package: Path) -> tuple[int, ...]:
    """(H, W) for grayscale packages (as before colour existed), (C, H, W) for colour ones."""
    manifest = read_manifest(package)
    channels = int(manifest.get("image_channels", 1))
    return (*([channels] if channels != 1 else []), *manifest["image_shape"])


def example_images(package: Path) -> Any:
    """One blank image, the input example shown with the model."""
    import numpy as np

    return np.zeros((1, *_image_dims(package)), np.float32)


def ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "ALREADY_EXISTS" not in str(error.error_code):
            raise


def versions_tagged(client: Any, name: str, tag: str, value: str) -> list[Any]:
    """Every version of `name` whose tag `tag` equals `value`, lowest version first."""
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'", page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda v: int(v.version))


def register_once(client: Any, name: str, package: Path, key: str, tags: dict[str, str], run_id: str, deadline: Deadline) -> Any:
    """The version of `name` with this audit key, registering the package as a pyfunc model when there is none."""
    import mlflow.pyfunc

    ensure_registered_model(client, name)
    existing = versions_tagged(client, name, KEY_TAG, key)
    if existing:
        return existing[0]
    deadline.check("registering the model version")
    with tempfile.TemporaryDirectory(prefix="auditai-model-") as folder:
        model_dir = Path(folder) / MODEL_ARTIFACT_PATH
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=str(PYFUNC_CODE),
            artifacts={"audit": str(package)},
            pip_requirements=pip_requirements(),
            signature=model_signature(package),
            input_example=example_images(package),
        )
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    mine = client.create_model_version(name, source, run_id=run_id, tags={**tags, KEY_TAG: key})
    winner = versions_tagged(client, name, KEY_TAG, key)[0]
    if winner.version != mine.version:  # another gate registered this audit first: keep its version
        client.delete_model_version(name, mine.version)
    return winner


def download_version(client: Any, tracking_uri: str, version: Any, folder: Path) -> Path:
    """Download a version's artifacts into `folder`; return the package inside."""
    import mlflow.artifacts

    root = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(folder), tracking_uri=tracking_uri)
    return find_package(Path(root))


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def converge_alias(client: Any, name: str, alias: str, deadline: Deadline) -> str | None:
    """Point `alias` at the highest version tagged PASS, re-reading after each write until it holds."""
    current = alias_version(client, name, alias)
    for _ in range(ALIAS_ROUNDS):
        certified = versions_tagged(client, name, GATE_TAG, "PASS")
        target = str(certified[-1].version) if certified else None
        if target is None or current == target:
            return current
        deadline.check(f"setting alias '{alias}'")
        client.set_registered_model_alias(name, alias, target)
        current = alias_version(client, name, alias)
    return current


def model_version_url(tracking_uri: str, name: str, version: str) -> str | None:
    """The MLflow UI page of a version, when the tracking URI is a server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
