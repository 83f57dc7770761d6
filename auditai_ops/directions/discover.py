"""The `discover-directions` step: semantic directions in latent space, calibrated in human units.

Supervised directions: for each attribute a, a linear probe on the training latents
(`directions.probes`): ridge regression a(x) ~ w . mu(x) + b for a continuous attribute,
logistic regression P(a = 1 | x) = sigmoid(w . mu(x) + b) for a binary (0/1) one; the unit
direction is d = w / |w|.

Calibration (attribute units per latent unit). For an attribute measured by code
(data.attributes) it is measured, not assumed: decode z + t d for held-out z and a grid of t,
re-measure the attribute, and fit the slope. The sign of d is chosen so that this slope is
positive, so a range in attribute units maps to the latent interval [low, high] / slope. A
dataset's own attribute (an `attr_<name>` column) has no code to measure it on decoded images,
so it is read by its probe on the re-encoded images, probe(encode(decode(z + t d))): a
continuous one is calibrated by the slope of that reading; a binary one in logit units, by
|w| (a step of 1 / |w| along d moves the probe's logit by exactly 1), and its evidence gives the
mean probability at every step, of the probe on the latents and of the probe on the re-encoded
images.

Unsupervised directions: the leading principal components of the training latents, in
latent units. Every direction carries quality evidence: the probe's held-out R2 (and for a
binary attribute its accuracy and ROC AUC), the measured slope and whether the mean attribute
moves monotonically along the grid, and how much every other attribute moves (disentanglement).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit
from torch import nn

from auditai_ops.config import DirectionsConfig
from auditai_ops.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_UNITS, STROKE_ATTRIBUTES, measure_attributes
from auditai_ops.directions.probes import Probe, fit_logistic_probe, fit_probe, is_binary, r_squared, roc_auc
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_array, write_json, write_npz
from auditai_ops.latent.generator import Generator
from auditai_ops.latent.mapping import decode, encode
from auditai_ops.layout import DIRECTIONS_DIR, DIRECTIONS_JSON, VECTORS_FILE
from auditai_ops.report.images import save_grid_png

SCHEMA_VERSION = 1
LOGIT_UNITS = "logit"
"""The units of a binary attribute's direction."""


@dataclass(frozen=True)
class Direction:
    """A unit vector in latent space; `calibration` is attribute units per latent unit (None for PCA)."""

    name: str
    kind: str
    vector: np.ndarray
    units: str
    calibration: float | None

    @property
    def sha256(self) -> str:
        return sha256_array(self.vector.astype(np.float32))


def measured_effect(
    decoder: nn.Module,
    latents: np.ndarray,
    vector: np.ndarray,
    steps: np.ndarray,
    names: Sequence[str] = STROKE_ATTRIBUTES,
    encoder: nn.Module | None = None,
    probes: Mapping[str, Probe] | None = None,
) -> dict[str, np.ndarray]:
    """Mean of every named attribute of decode(z + t d) over the sample z, for each t in `steps`.

    The `names` are measured by code; each of the `probes` reads its attribute from the
    re-encoded images, probe(encoder(decode(z + t d))).
    """
    moved = latents[None, :, :] + steps[:, None, None] * vector[None, None, :]
    images = decode(decoder, moved.reshape(-1, latents.shape[1]).astype(np.float32))
    measured = measure_attributes(images, names) if names else {}
    if probes:
        if encoder is None:
            raise ValueError("measured_effect: probes read re-encoded images, so an encoder is needed")
        reencoded = encode(encoder, images)
        measured.update({name: probe.read(reencoded) for name, probe in probes.items()})
    return {name: np.nanmean(values.reshape(len(steps), len(latents)), axis=1) for name, values in measured.items()}


def _slope(steps: np.ndarray, means: np.ndarray) -> float | None:
    """Least-squares slope of the finite means against t; None with fewer than two finite points."""
    finite = np.isfinite(means)
    return float(np.polyfit(steps[finite], means[finite], 1)[0]) if finite.sum() >= 2 else None


def _effect_evidence(target: str | None, steps: np.ndarray, means: dict[str, np.ndarray], spread: dict[str, float]) -> dict[str, Any]:
    """Slopes of every attribute along the direction, in own units and relative to the data's std."""
    per_attribute = {}
    for name, values in means.items():
        slope = _slope(steps, values)
        relative = slope / spread[name] if slope is not None and spread[name] > 0 else None
        per_attribute[name] = {"slope": slope, "slope_per_std": relative, "means": [v if np.isfinite(v) else None for v in values.tolist()]}
    evidence: dict[str, Any] = {"steps": steps.tolist(), "attributes": per_attribute}
    if target is not None:
        diffs = np.diff(means[target])
        evidence["target"] = target
        evidence["monotonic"] = bool(np.all(diffs > 0) or np.all(diffs < 0))
        target_rel = abs(per_attribute[target]["slope_per_std"] or 0.0)
        others = [abs(v["slope_per_std"]) for k, v in per_attribute.items() if k != target and v["slope_per_std"] is not None]
        evidence["disentanglement"] = target_rel / (target_rel + max(others)) if others and target_rel > 0 else 1.0
    return evidence


def _fit_probe(attribute: str, arrays: Mapping[str, np.ndarray], train_z: np.ndarray, ridge: float) -> Probe:
    """The probe of a dataset's own attribute column: logistic when its values are 0/1, ridge otherwise."""
    target = arrays[f"train_attr_{attribute}"].astype(np.float64)
    rows = np.isfinite(target)
    if not is_binary(target):
        return Probe(*fit_probe(train_z[rows], target[rows], ridge), binary=False)
    if len(np.unique(target[rows])) < 2:
        raise AuditInputError(f"directions.attributes: binary attribute '{attribute}' takes only the value {target[rows][0]:g} in the training split")
    return Probe(*fit_logistic_probe(train_z[rows], target[rows], ridge), binary=True)


def discover_directions(settings: DirectionsConfig, generator: Generator, latents_path: Path, out_dir: Path) -> dict[str, Direction]:
    """Fit, calibrate and document every direction; write `directions.json`, vectors and traversal strips."""
    try:
        with np.load(latents_path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except FileNotFoundError:
        raise AuditInputError(f"latents '{latents_path}': file not found (run `auditai map-latents` first)") from None
    train_z, valid_z = arrays["train_z"].astype(np.float64), arrays["valid_z"].astype(np.float64)
    stored_names = [k.removeprefix("train_attr_") for k in arrays if k.startswith("train_attr_")]
    unknown = [a for a in settings.attributes if a not in stored_names]
    if unknown:
        raise AuditInputError(f"directions.attributes: unknown attribute(s) {unknown}; measured attributes are {sorted(stored_names)}")

    rng = np.random.default_rng(settings.seed)
    effect_z = valid_z[rng.choice(len(valid_z), size=min(settings.effect_samples, len(valid_z)), replace=False)]
    steps = np.linspace(-settings.effect_max_step, settings.effect_max_step, settings.effect_points)
    measured_names = [name for name in ATTRIBUTE_NAMES if name in stored_names]  # re-measured by code on decoded images
    probes = {a: _fit_probe(a, arrays, train_z, settings.ridge) for a in settings.attributes if a not in ATTRIBUTE_UNITS}
    spread = {name: float(np.nanstd(arrays[f"train_attr_{name}"])) for name in [*measured_names, *probes]}

    def effect(vector: np.ndarray) -> dict[str, np.ndarray]:
        return measured_effect(generator.decoder, effect_z, vector, steps, measured_names, generator.encoder, probes)

    directions: dict[str, Direction] = {}
    records: dict[str, dict[str, Any]] = {}
    for attribute in settings.attributes:
        target, valid_target = arrays[f"train_attr_{attribute}"], arrays[f"valid_attr_{attribute}"]
        fit_rows, valid_rows = np.isfinite(target), np.isfinite(valid_target)
        probe = probes.get(attribute) or Probe(*fit_probe(train_z[fit_rows], target[fit_rows].astype(np.float64), settings.ridge), binary=False)
        norm = float(np.linalg.norm(probe.weights))
        if norm == 0.0:
            raise AuditInputError(f"directions.attributes: attribute '{attribute}' is not predictable from the latents (probe weights are zero)")
        vector = probe.weights / norm
        means = effect(vector)
        if not np.isfinite(means[attribute]).all():
            raise AuditInputError(
                f"directions.attributes: '{attribute}' cannot be measured on decoded images (they have no foreground); "
                "the generator looks undertrained: raise latent.epochs or use more training data"
            )
        slope = _slope(steps, means[attribute]) or 0.0
        if slope < 0 and not probe.binary:
            vector, means = -vector, {k: v[::-1] for k, v in means.items()}
            slope = -slope
        evidence = _effect_evidence(attribute, steps, means, spread)
        valid_reading = probe.read(valid_z[valid_rows])
        quality: dict[str, Any] = {"model": "logistic" if probe.binary else "ridge", "r2_valid": r_squared(valid_reading, valid_target[valid_rows])}
        quality["slope_units_per_latent"] = norm
        if attribute in probes:
            evidence["target_measured_by"] = "its probe on the re-encoded images, encode(decode(z + t d))"
        if probe.binary:
            labels = valid_target[valid_rows]
            quality.update({"accuracy_valid": float(np.mean((valid_reading >= 0.5) == (labels == 1))), "auc_valid": roc_auc(valid_reading, labels)})
            quality["positive_rate_valid"] = float(labels.mean()) if len(labels) else None
            logits = effect_z @ probe.weights + probe.bias
            evidence["probability_of_latent_probe"] = [float(np.mean(expit(logits + t * norm))) for t in steps]
        units, calibration = (LOGIT_UNITS, norm) if probe.binary else (ATTRIBUTE_UNITS.get(attribute, "units"), slope)
        directions[attribute] = Direction(attribute, "attribute", vector.astype(np.float32), units, calibration)
        records[attribute] = {"probe": quality, "effect": evidence}

    if settings.pca_components > min(train_z.shape):
        raise AuditInputError(f"directions.pca_components: {settings.pca_components} exceeds the latent dimension {train_z.shape[1]}")
    centred = train_z - train_z.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / np.sum(singular**2)
    for index in range(settings.pca_components):
        vector = components[index] * np.sign(components[index][np.argmax(np.abs(components[index]))])
        name = f"pca{index + 1}"
        directions[name] = Direction(name, "pca", vector.astype(np.float32), "latent", None)
        records[name] = {"explained_variance_ratio": float(explained[index]), "effect": _effect_evidence(None, steps, effect(vector), spread)}

    folder = Path(out_dir) / DIRECTIONS_DIR
    strip_z = valid_z[: settings.strip_samples]
    strip_steps = np.linspace(-settings.effect_max_step, settings.effect_max_step, settings.strip_points)
    for name, direction in directions.items():
        moved = strip_z[:, None, :] + strip_steps[None, :, None] * direction.vector[None, None, :].astype(np.float64)
        images = decode(generator.decoder, moved.reshape(-1, strip_z.shape[1]).astype(np.float32))
        save_grid_png(images.reshape(len(strip_z), len(strip_steps), *images.shape[1:]), folder / f"traversal_{name}.png")
        records[name].update(
            {"kind": direction.kind, "units": direction.units, "calibration": direction.calibration, "vector_sha256": direction.sha256, "traversal_png": f"traversal_{name}.png"}
        )
    write_npz(folder / VECTORS_FILE, {name: d.vector for name, d in directions.items()})
    write_json(folder / DIRECTIONS_JSON, {"schema_version": SCHEMA_VERSION, "latent_dim": int(train_z.shape[1]), "strip_steps": strip_steps.tolist(), "directions": records})
    return directions


def load_directions(folder: Path) -> dict[str, Direction]:
    """Read `directions.json` and the vectors written by `discover_directions` in `folder`, checking their hashes."""
    folder = Path(folder)
    try:
        record = json.loads((folder / DIRECTIONS_JSON).read_text())
        with np.load(folder / VECTORS_FILE, allow_pickle=False) as stored:
            vectors = {key: stored[key] for key in stored.files}
    except FileNotFoundError as error:
        raise AuditInputError(f"directions: '{error.filename}' not found (run `auditai discover-directions` first)") from None
    directions = {}
    for name, entry in record["directions"].items():
        if name not in vectors:
            raise AuditInputError(f"directions: vector '{name}' is missing from '{folder / VECTORS_FILE}'")
        direction = Direction(name, entry["kind"], vectors[name].astype(np.float32), entry["units"], entry["calibration"])
        if direction.sha256 != entry["vector_sha256"]:
            raise AuditInputError(f"directions: vector '{name}' in '{folder / VECTORS_FILE}' does not match its recorded sha256")
        directions[name] = direction
    return directions
