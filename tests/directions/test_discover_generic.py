"""discover-directions on a colour generator with generic and dataset attributes, end to end on synthetic data."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.config import DirectionsConfig
from auditai_ops.data.attributes import measure_attributes, measured_attribute_names
from auditai_ops.directions.discover import discover_directions, load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator

SIZE = 28


class SquareRenderer(nn.Module):
    """z -> a soft orange-to-red square on black: its green is sigmoid(z0) (hue 60 sigmoid(z0) degrees), its
    centre column 13.5 + 3 z1 pixels, its half side 4 + z2 pixels; z3 is unused."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(SIZE, dtype=torch.float32)[None, None, :]
        rows = torch.arange(SIZE, dtype=torch.float32)[None, :, None]
        centre = (13.5 + 3.0 * z[:, 1])[:, None, None]
        half = (4.0 + z[:, 2])[:, None, None]
        inside = torch.sigmoid(4.0 * (half - (cols - centre).abs())) * torch.sigmoid(4.0 * (half - (rows - 13.5).abs()))
        green = torch.sigmoid(z[:, 0])[:, None, None]
        return torch.stack([inside, green * inside, torch.zeros_like(inside)], dim=1)


class SquareReader(nn.Module):
    """The inverse of SquareRenderer, read off the red channel's mass and centroid and the green / red ratio."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red, green = images[:, 0], images[:, 1]
        cols = torch.arange(SIZE, dtype=torch.float32)[None, None, :]
        mass = red.sum(dim=(1, 2))
        ratio = (green.sum(dim=(1, 2)) / mass).clamp(1e-4, 1 - 1e-4)
        z0 = torch.log(ratio / (1 - ratio))
        z1 = ((red * cols).sum(dim=(1, 2)) / mass - 13.5) / 3.0
        z2 = mass.sqrt() / 2 - 4.0
        return torch.stack([z0, z1, z2, torch.zeros_like(z0)], dim=1)


GENERATOR = Generator(nn.Sequential(SquareReader()), nn.Sequential(SquareRenderer()), (SIZE, SIZE), 4, {}, "synthetic squares", 3)
ATTRIBUTES = ("hue", "centroid_x", "size", "right", "redness")


def write_latents(path: Path, seed: int = 0) -> None:
    """A latents file as map-latents writes it: latents, the generic attributes measured, and two dataset columns.

    `right` is binary with P(right = 1 | z) = sigmoid(4 z1); `redness` is continuous, -2 z0 + noise.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    measured = measured_attribute_names(ATTRIBUTES, None, 3, {"right", "redness"})
    for split, count in (("train", 600), ("valid", 300)):
        z = rng.normal(scale=0.6, size=(count, 4)).astype(np.float32)
        with torch.no_grad():
            images = GENERATOR.decoder(torch.from_numpy(z)).numpy()
        arrays[f"{split}_z"] = z
        for name, values in measure_attributes(images, measured).items():
            arrays[f"{split}_attr_{name}"] = values
        arrays[f"{split}_attr_right"] = (rng.random(count) < 1 / (1 + np.exp(-4.0 * z[:, 1]))).astype(np.float32)
        arrays[f"{split}_attr_redness"] = (-2.0 * z[:, 0] + rng.normal(scale=0.1, size=count)).astype(np.float32)
    np.savez(path, **arrays)


SETTINGS = DirectionsConfig(attributes=ATTRIBUTES, ridge=1e-4, pca_components=1, effect_samples=64, effect_points=5, effect_max_step=1.0, strip_samples=2, strip_points=3)


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    folder = tmp_path_factory.mktemp("generic")
    write_latents(folder / "latents.npz")
    directions = discover_directions(SETTINGS, GENERATOR, folder / "latents.npz", folder)
    record = json.loads((folder / "directions" / "directions.json").read_text())["directions"]
    return directions, record, folder


def axis(index: int) -> np.ndarray:
    return np.eye(4)[index]


def test_generic_attribute_directions_are_found_and_calibrated(discovered: tuple[dict, dict, Path]) -> None:
    directions, record, _ = discovered
    for name, index, units in (("hue", 0, "degrees"), ("centroid_x", 1, "pixels"), ("size", 2, "pixels^2")):
        assert float(directions[name].vector @ axis(index)) > 0.95, name
        assert directions[name].units == units and directions[name].calibration > 0
        assert record[name]["probe"]["r2_valid"] > 0.8
        assert record[name]["effect"]["monotonic"]
    # The centre moves 3 px per unit of z1; hue is 60 sigmoid(z0) degrees, 15 degrees per unit at z0 = 0.
    assert math.isclose(directions["centroid_x"].calibration, 3.0, rel_tol=0.1)
    assert math.isclose(directions["hue"].calibration, 15.0, rel_tol=0.25)
    # Moving the square sideways changes neither its hue nor its size, only `right`, which is drawn from the same z1:
    # the disentanglement, target / (target + largest other) in data standard deviations, names that one.
    moved = {k: abs(v["slope_per_std"] or 0.0) for k, v in record["centroid_x"]["effect"]["attributes"].items()}
    assert max(v for k, v in moved.items() if k not in ("centroid_x", "right")) < 0.05 * moved["centroid_x"]
    assert record["centroid_x"]["effect"]["disentanglement"] == pytest.approx(moved["centroid_x"] / (moved["centroid_x"] + moved["right"]))


def test_binary_dataset_attribute_gets_a_logistic_probe_in_logits(discovered: tuple[dict, dict, Path]) -> None:
    directions, record, _ = discovered
    right, probe, effect = directions["right"], record["right"]["probe"], record["right"]["effect"]
    assert right.units == "logit" and probe["model"] == "logistic"
    assert float(right.vector @ axis(1)) > 0.95
    # Calibration in logits per latent unit is |w|: about the 4 logits per unit of z1 the labels were drawn with.
    assert right.calibration == pytest.approx(probe["slope_units_per_latent"])
    assert math.isclose(right.calibration, 4.0, rel_tol=0.2)
    assert probe["auc_valid"] > 0.85 and probe["accuracy_valid"] > 0.75 and 0.3 < probe["positive_rate_valid"] < 0.7
    # The probability rises along the direction, on the latents and on the decoded, re-encoded images.
    latent_probability = effect["probability_of_latent_probe"]
    assert np.all(np.diff(latent_probability) > 0) and latent_probability[0] < 0.2 and latent_probability[-1] > 0.8
    reencoded = effect["attributes"]["right"]["means"]
    assert effect["monotonic"] and np.allclose(reencoded, latent_probability, atol=0.05)
    assert "re-encoded" in effect["target_measured_by"]


def test_continuous_dataset_attribute_gets_a_ridge_probe(discovered: tuple[dict, dict, Path]) -> None:
    directions, record, _ = discovered
    redness = directions["redness"]
    assert record["redness"]["probe"]["model"] == "ridge" and record["redness"]["probe"]["r2_valid"] > 0.9
    assert float(redness.vector @ axis(0)) < -0.95 and redness.units == "units"
    assert math.isclose(redness.calibration, 2.0, rel_tol=0.15)
    # Redness and hue are the same factor: the evidence says they are entangled.
    assert record["redness"]["effect"]["disentanglement"] < 0.7


def test_the_record_round_trips_with_traversal_strips(discovered: tuple[dict, dict, Path]) -> None:
    directions, record, folder = discovered
    loaded = load_directions(folder / "directions")
    assert set(loaded) == {*ATTRIBUTES, "pca1"}
    for name, direction in directions.items():
        np.testing.assert_array_equal(loaded[name].vector, direction.vector)
        assert (folder / "directions" / record[name]["traversal_png"]).is_file()
    assert set(record["pca1"]["effect"]["attributes"]) >= {"hue", "saturation", "right", "redness"}


def test_a_binary_attribute_with_one_value_is_refused(tmp_path: Path) -> None:
    write_latents(tmp_path / "latents.npz")
    with np.load(tmp_path / "latents.npz") as stored:
        arrays = dict(stored)
    arrays["train_attr_right"] = np.ones_like(arrays["train_attr_right"])
    np.savez(tmp_path / "latents.npz", **arrays)
    with pytest.raises(AuditInputError, match="binary attribute 'right' takes only the value 1 in the training split"):
        discover_directions(SETTINGS, GENERATOR, tmp_path / "latents.npz", tmp_path)
