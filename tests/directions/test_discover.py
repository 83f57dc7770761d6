import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditai_ops.directions.discover import _effect_evidence, fit_probe, load_directions, measured_effect, r_squared


class BarRenderer(nn.Module):
    """A synthetic generator: z -> a 28x28 bar whose slant is 10 degrees per unit of z0 and width 3 + z1 pixels."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(28, dtype=torch.float32)[:, None]
        cols = torch.arange(28, dtype=torch.float32)[None, :]
        shear = torch.tan(torch.deg2rad(10.0 * z[:, 0]))[:, None, None]
        half_width = (1.5 + 0.5 * z[:, 1])[:, None, None]
        centre = 13.5 + shear * (13.5 - rows)
        across = torch.sigmoid(4.0 * (half_width - (cols - centre).abs()))
        along = ((rows >= 4) & (rows <= 23)).float()
        return (across * along).unsqueeze(1)


def test_probe_recovers_a_known_direction() -> None:
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(2000, 8))
    truth = np.zeros(8)
    truth[2], truth[5] = 3.0, -4.0
    target = latents @ truth + 7.0 + rng.normal(scale=0.1, size=2000)
    weights, bias = fit_probe(latents, target, ridge=1e-4)
    np.testing.assert_allclose(weights, truth, atol=0.02)
    assert abs(bias - 7.0) < 0.02
    assert r_squared(latents @ weights + bias, target) > 0.999
    assert abs(np.linalg.norm(weights) - 5.0) < 0.03


def test_measured_calibration_on_a_synthetic_generator() -> None:
    """Moving along e0 changes slant by about 10 degrees per latent unit and leaves thickness alone."""
    latents = np.random.default_rng(1).normal(scale=0.2, size=(32, 4)).astype(np.float32)
    steps = np.linspace(-1.0, 1.0, 5)
    slant_direction = np.array([1.0, 0, 0, 0])
    means = measured_effect(BarRenderer(), latents, slant_direction, steps)
    evidence = _effect_evidence("slant", steps, means, {name: 1.0 for name in means})
    assert evidence["monotonic"]
    assert math.isclose(evidence["attributes"]["slant"]["slope"], 10.0, rel_tol=0.15)
    assert abs(evidence["attributes"]["thickness"]["slope"]) < 0.3

    thickness_means = measured_effect(BarRenderer(), latents, np.array([0.0, 1.0, 0, 0]), steps)
    thickness = _effect_evidence("thickness", steps, thickness_means, {name: 1.0 for name in thickness_means})
    assert thickness["monotonic"]
    assert math.isclose(thickness["attributes"]["thickness"]["slope"], 1.0, rel_tol=0.3)
    assert abs(thickness["attributes"]["slant"]["slope"]) < 0.5


def test_discovered_directions_on_the_small_run(small_run: Path) -> None:
    directions = load_directions(small_run / "directions")
    record = json.loads((small_run / "directions" / "directions.json").read_text())["directions"]
    assert {"slant", "thickness", "width", "height", "pca1", "pca2"} <= set(directions)
    for name in ("slant", "thickness", "width", "height"):
        assert directions[name].calibration > 0 and abs(np.linalg.norm(directions[name].vector) - 1) < 1e-5
        assert record[name]["probe"]["r2_valid"] > 0.2
        assert (small_run / "directions" / record[name]["traversal_png"]).is_file()
    assert record["slant"]["effect"]["monotonic"]
    assert directions["pca1"].calibration is None and directions["pca1"].units == "latent"
