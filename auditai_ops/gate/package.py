"""The files a registered model version carries: the audited model's weights and its audit.

A package is a folder with `auditai_model.json` (the model and generator settings with paths
relative to the folder, and the weight hashes the certificates claim), the model files
exactly as audited (safetensors + json records, TorchScript, ONNX, factory weights), the
certificates and `summary.json` at their places in the audit folder, and what the specs are
re-derived from: the directions (`directions/`) and the test split of the latents
(`latent/test-latents.npz`). Nothing in it is pickled. `package_hashes` recomputes the
weight hashes from a package with the same loaders the audit used, and `package_digest` names
every byte of it, so a version can be re-checked after a round trip through the registry
without the folder it came from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.audit_files import audit_files, file_sha256
from auditai_ops.config import AuditConfig, GeneratorConfig, ModelConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import canonical_json, sha256_bytes, write_json, write_npz
from auditai_ops.layers import PerChannelNormalize
from auditai_ops.layout import DIRECTIONS_DIR, DIRECTIONS_JSON, LATENT_DIR, SUMMARY_FILE, VECTORS_FILE, StepInputs, resolve_inputs
from auditai_ops.models.source import ModelSource, parse_model_reference

MANIFEST_FILE = "auditai_model.json"
MANIFEST_KIND = "auditai.model_package"
SCHEMA_VERSION = 2
TEST_LATENTS_FILE = "test-latents.npz"
TEST_SPLIT_KEYS = ("test_ids", "test_z", "test_labels")


def certificates_digest(certificates: dict[str, str]) -> str:
    """sha256 over {unit test name: certificate content_sha256}: names the exact set of certificates."""
    return sha256_bytes(canonical_json(dict(sorted(certificates.items()))))


def weights_digest(hashes: dict[str, str]) -> str:
    """sha256 over {weights key: sha256}: names the exact weights of every model the audit depends on."""
    return sha256_bytes(canonical_json({k: v for k, v in sorted(hashes.items()) if k != "sample_ids_sha256"}))


def _copy_record(path: Path, folder: Path) -> str:
    """Copy a safetensors file and its json record into `folder`; return the new safetensors path relative to the package."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in (path, path.with_suffix(".json")):
        if not part.is_file():
            raise AuditInputError(f"gate: model file '{part}' not found (did the audit's steps run?)")
        shutil.copy2(part, folder / part.name)
    return f"{folder.name}/{path.name}"


def _copy_reference(source: ModelSource, package: Path, folder: str) -> tuple[str, str | None]:
    """Copy a user model reference into `package/folder`; return (reference, weights) as the manifest records them."""
    target = package / folder
    target.mkdir(parents=True, exist_ok=True)
    if source.kind == "factory":
        assert source.weights is not None
        shutil.copy2(source.weights, target / Path(source.weights).name)
        return source.reference, f"{folder}/{Path(source.weights).name}"
    if source.kind == "mlflow" and not Path(source.reference).is_dir():
        import mlflow.artifacts

        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=source.reference, dst_path=str(target / "download")))
        return str(downloaded.relative_to(package)), None
    path = Path(source.reference)
    if path.is_dir():
        shutil.copytree(path, target / path.name)
    else:
        if not path.is_file():
            raise AuditInputError(f"gate: model file '{path}' not found")
        shutil.copy2(path, target / path.name)
        if source.kind == "auditai":
            shutil.copy2(path.with_suffix(".json"), target / path.with_suffix(".json").name)
    return f"{folder}/{path.name}", None


def build_package(config: AuditConfig, out_dir: Path, base_dir: Path | None, package: Path) -> dict[str, Any]:
    """Write the package of the audit in `out_dir` into the empty folder `package`; return its manifest."""
    out_dir, package = Path(out_dir), Path(package)
    package.mkdir(parents=True, exist_ok=True)
    inputs = resolve_inputs(out_dir, config.inputs, base_dir)
    model = config.model.model_dump(mode="json")
    generator = config.generator.model_dump(mode="json")
    files: dict[str, str | None] = {"vae": None, "head": None}
    image_shape, image_channels = list(config.generator.image_shape), config.generator.image_channels
    if config.generator.encoder is None:
        files["vae"] = _copy_record(inputs.vae, package / "latent")
        architecture = (_read_json(inputs.vae.with_suffix(".json")) or {}).get("architecture", {})
        image_shape = [architecture.get("image_height"), architecture.get("image_width")]
        image_channels = architecture.get("image_channels", 1)
    else:
        for part in ("encoder", "decoder"):
            generator[part], _ = _copy_reference(parse_model_reference(getattr(config.generator, part), base_dir=base_dir), package, f"generator_{part}")
    if config.model.mode == "pixel" and config.model.classifier is not None:
        source = parse_model_reference(config.model.classifier, config.model.weights, config.model.factory_kwargs, base_dir)
        model["classifier"], model["weights"] = _copy_reference(source, package, "classifier")
    else:
        files["head"] = _copy_record(inputs.head, package / "classifier")
    summary_file, certificate_files = audit_files(out_dir)
    shutil.copy2(summary_file, package / SUMMARY_FILE)
    certificates: dict[str, str] = {}
    for name, path in certificate_files.items():
        relative = path.relative_to(out_dir.resolve())
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, package / relative)
        certificates[name] = relative.as_posix()
    (package / DIRECTIONS_DIR).mkdir()
    for part in (DIRECTIONS_JSON, VECTORS_FILE):
        if not (inputs.directions / part).is_file():
            raise AuditInputError(f"gate: directions file '{inputs.directions / part}' not found")
        shutil.copy2(inputs.directions / part, package / DIRECTIONS_DIR / part)
    write_npz(package / LATENT_DIR / TEST_LATENTS_FILE, _test_split(inputs.latents))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": MANIFEST_KIND,
        "model": model,
        "generator": generator,
        "files": files,
        "image_shape": image_shape,
        "image_channels": image_channels,
        "certificates": certificates,
        "directions": DIRECTIONS_DIR,
        "latents": f"{LATENT_DIR}/{TEST_LATENTS_FILE}",
    }
    write_json(package / MANIFEST_FILE, manifest)
    return manifest


def _test_split(latents: Path) -> dict[str, np.ndarray]:
    """The test split of a latents file: what the unit tests' samples are drawn from."""
    try:
        with np.load(latents, allow_pickle=False) as stored:
            return {key: stored[key] for key in TEST_SPLIT_KEYS}
    except (OSError, ValueError, KeyError) as error:
        raise AuditInputError(f"gate: latents '{latents}': cannot read the test split ({error})") from None


def package_digest(package: Path) -> str:
    """sha256 over every file of the package (relative path and bytes): any change to a registered version shows."""
    package = Path(package)
    return sha256_bytes(canonical_json({f.relative_to(package).as_posix(): file_sha256(f) for f in sorted(package.rglob("*")) if f.is_file()}))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def find_package(root: Path) -> Path:
    """The package folder inside downloaded version artifacts (the folder holding the manifest)."""
    found = sorted(Path(root).rglob(MANIFEST_FILE))
    if len(found) != 1:
        raise AuditInputError(f"model package: expected one {MANIFEST_FILE} under '{root}', found {len(found)}")
    return found[0].parent


def read_manifest(package: Path) -> dict[str, Any]:
    manifest = _read_json(Path(package) / MANIFEST_FILE)
    if manifest is None or manifest.get("kind") != MANIFEST_KIND:
        raise AuditInputError(f"model package '{package}': no valid {MANIFEST_FILE}")
    return manifest


def package_inputs(package: Path, manifest: dict[str, Any]) -> tuple[ModelConfig, GeneratorConfig, StepInputs]:
    """The model and generator settings of a package, and its files as step inputs."""
    files = manifest["files"]
    missing = package / "absent"

    def inside(relative: Any) -> Path:
        return package / relative if isinstance(relative, str) and relative else missing

    inputs = StepInputs(vae=inside(files.get("vae")), latents=inside(manifest.get("latents")), directions=inside(manifest.get("directions")), head=inside(files.get("head")))
    return ModelConfig.model_validate(manifest["model"]), GeneratorConfig.model_validate(manifest["generator"]), inputs


def package_hashes(package: Path) -> dict[str, str]:
    """The weight hashes of the packaged model, recomputed by loading it the way the audit did."""
    from auditai_ops.models.generator import load_generator
    from auditai_ops.verify.audited_model import build_audited_model

    package = Path(package)
    model, generator_settings, inputs = package_inputs(package, read_manifest(package))
    generator = load_generator(generator_settings, inputs.vae, package)
    return build_audited_model(model, generator, inputs, package).hashes


def load_packaged_classifier(package: Path) -> nn.Module:
    """The deployable classifier on images (B, C, H, W) in [0, 1]: head o encoder, or normalisation then the team's classifier."""
    from auditai_ops.classifier.head import load_head
    from auditai_ops.models.generator import load_generator
    from auditai_ops.models.loading import load_model

    package = Path(package)
    model, generator_settings, inputs = package_inputs(package, read_manifest(package))
    generator = load_generator(generator_settings, inputs.vae, package)
    if model.mode == "pixel" and model.classifier is not None:
        source = parse_model_reference(model.classifier, model.weights, model.factory_kwargs, package)
        classifier = load_model(source, input_shape=generator.input_shape, trust_pickle=model.trust_pickle)
        layers: list[nn.Module] = [PerChannelNormalize(model.normalization.mean, model.normalization.std)] if model.normalization else []
        return nn.Sequential(*layers, classifier).eval()
    head, _ = load_head(inputs.head)
    return nn.Sequential(generator.encoder, head).eval()


@torch.no_grad()
def predict_classes(classifier: nn.Module, images: Any) -> Any:
    """Predicted classes for images (N, C, H, W) in [0, 1], or (N, H, W) for grayscale."""
    import numpy as np

    batch = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if batch.dim() == 3:
        batch = batch[:, None]
    return classifier(batch).argmax(dim=1).numpy()
