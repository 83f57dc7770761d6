"""The config decides which attributes are measured: preflight checks the names, map-latents stores exactly those."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.config import DataConfig, DirectionsConfig, LatentConfig, parse_config
from auditai_ops.data.attributes import GENERIC_ATTRIBUTES, STROKE_ATTRIBUTES, measure_attributes
from auditai_ops.data.datasets import load_dataset
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator
from auditai_ops.latent.mapping import map_latents
from auditai_ops.layout import resolve_inputs
from auditai_ops.preflight import DISCOVER_DIRECTIONS, MAP_LATENTS, preflight

SIZE = 28


def square_dataset(path: Path, channels: int, count: int = 200) -> Path:
    """Random squares of random colours (grey when channels = 1) on black, with a binary `smiling` column."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, channels, SIZE, SIZE), dtype=np.float32)
    for image in images:
        top, left = rng.integers(2, 16, size=2)
        image[:, top : top + 8, left : left + 8] = rng.uniform(0.3, 1.0, size=(channels, 1, 1))
    np.savez(path, images=images, labels=rng.integers(0, 2, size=count), attr_smiling=rng.integers(0, 2, size=count).astype(np.float32))
    return path


def tiny_generator(channels: int) -> Generator:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(channels * SIZE * SIZE, 4)).eval()
    decoder = nn.Sequential(nn.Linear(4, channels * SIZE * SIZE), nn.Sigmoid(), nn.Unflatten(1, (channels, SIZE, SIZE))).eval()
    return Generator(encoder, decoder, (SIZE, SIZE), 4, {}, "tiny", channels)


def check(tmp_path: Path, dataset: Path, directions: dict[str, list[str]]) -> None:
    """Preflight of map-latents and discover-directions on the dataset with these directions settings."""
    config = parse_config({"data": {"dataset": str(dataset)}, "latent": {"batch_size": 16}, "directions": directions, "tracking": {"enabled": False}})
    out = tmp_path / "out"
    preflight(config, tmp_path, out, (MAP_LATENTS, DISCOVER_DIRECTIONS), resolve_inputs(out, config.inputs, tmp_path))


def test_map_latents_stores_the_configured_attributes_and_the_dataset_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITAI_CACHE_DIR", str(tmp_path / "cache"))
    dataset = square_dataset(tmp_path / "colour.npz", 3)
    directions = DirectionsConfig(attributes=("hue", "size", "smiling"))
    artifacts = map_latents(DataConfig(dataset=str(dataset)), LatentConfig(), tmp_path / "out", generator=tiny_generator(3), directions=directions)
    with np.load(artifacts.latents_path) as stored:
        names = {key.removeprefix("train_attr_") for key in stored.files if key.startswith("train_attr_")}
        assert names == {*GENERIC_ATTRIBUTES, "smiling"}, "the generic family and the dataset's column, no stroke attribute"
        train = load_dataset(str(dataset)).train
        expected = measure_attributes(train.images, ("hue", "orientation"))
        np.testing.assert_array_equal(stored["train_attr_hue"], expected["hue"])
        np.testing.assert_array_equal(stored["train_attr_orientation"], expected["orientation"])
        np.testing.assert_array_equal(stored["train_attr_smiling"], train.attributes["smiling"])


def test_the_mnist_default_stores_the_stroke_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITAI_CACHE_DIR", str(tmp_path / "cache"))
    dataset = square_dataset(tmp_path / "grey.npz", 1)
    artifacts = map_latents(DataConfig(dataset=str(dataset)), LatentConfig(), tmp_path / "out", generator=tiny_generator(1))
    with np.load(artifacts.latents_path) as stored:
        names = [key.removeprefix("valid_attr_") for key in stored.files if key.startswith("valid_attr_")]
    assert names == [*STROKE_ATTRIBUTES, "smiling"]


def test_preflight_accepts_generic_and_dataset_attributes(tmp_path: Path) -> None:
    check(tmp_path, square_dataset(tmp_path / "colour.npz", 3), {"attributes": ["hue", "saturation", "smiling"], "measure": ["size"]})
    check(tmp_path, square_dataset(tmp_path / "grey.npz", 1), {"attributes": ["size", "orientation", "slant"]})


@pytest.mark.parametrize(
    ("channels", "directions", "message"),
    [
        (1, {"attributes": ["hue"]}, r"directions.attributes: \['hue'\] are measured on colour images only \(C = 3\), but the dataset's images have 1 channel"),
        (3, {"attributes": ["size", "smile"]}, r"directions.attributes: unknown attribute\(s\) \['smile'\]; known: stroke .* columns \['smiling'\]"),
        (3, {"attributes": ["size"], "measure": ["sharpness"]}, r"directions.measure: unknown attribute\(s\) \['sharpness'\]"),
    ],
)
def test_preflight_refuses_attributes_it_cannot_measure(tmp_path: Path, channels: int, directions: dict[str, list[str]], message: str) -> None:
    with pytest.raises(AuditInputError, match=message):
        check(tmp_path, square_dataset(tmp_path / "data.npz", channels), directions)
