"""Sharded verification: shards merged back equal an unsharded run, and merging verifies nothing; bad shard sets are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from auditai_ops.cli.main import main
from auditai_ops.errors import AuditInputError
from auditai_ops.verify import step
from auditai_ops.verify.engine import LineVerifier
from auditai_ops.verify.unit_tests import Shard

TIMING_FIELDS = ("created_at", "content_sha256", "signature")


def _config(small_run: Path, folder: Path, block_size: int = 48) -> Path:
    """The small run's artifacts, audited with small blocks and a range wide enough to falsify some samples."""
    config = {
        "inputs": {
            "vae": str(small_run / "latent" / "vae.safetensors"),
            "latents": str(small_run / "latent" / "latents.npz"),
            "directions": str(small_run / "directions"),
            "head": str(small_run / "classifier" / "head.safetensors"),
        },
        "verify": {"samples": 150, "block_size": block_size},
        "unit_tests": [
            {"name": "slant_wide", "direction": "slant", "range": {"low": -12, "high": 12}, "threshold": 0.5},
            {"name": "slant_x_thickness", "direction": ["slant", "thickness"], "range": [{"low": -3, "high": 3}, {"low": -0.2, "high": 0.2}], "threshold": 0.5},
        ],
    }
    path = folder / "sharded.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _without_timings(certificate: dict) -> dict:
    kept = {key: value for key, value in certificate.items() if key not in TIMING_FIELDS}
    kept["aggregates"] = {key: value for key, value in kept["aggregates"].items() if key != "seconds"}
    return kept


def test_shard_positions_cover_every_sample_once() -> None:
    shards = [Shard(i, 3).positions(250, 40) for i in range(3)]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(250))
    assert shards[0].tolist()[:41] == [*range(40), 120]  # whole blocks: 0-39, then block 3 (120-159)
    assert len(Shard(5, 9).positions(100, 40)) == 0  # more shards than blocks: an empty shard


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "2", "1/0"])
def test_bad_shard_text_is_refused(text: str) -> None:
    with pytest.raises(AuditInputError, match="--shard"):
        Shard.parse(text)


def _no_heavy_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("merge must not verify, decode or bound anything: the shards did")


@pytest.mark.slow
def test_merged_shards_equal_an_unsharded_run(small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(small_run, tmp_path)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert main(["verify", "--config", str(config), "--out", str(whole)]) in (0, 1)
    for index in range(3):
        assert main(["verify", "--config", str(config), "--out", str(sharded), "--shard", f"{index}/3"]) == 0
    assert not (sharded / "summary.json").exists()
    with monkeypatch.context() as patch:
        patch.setattr(LineVerifier, "verify", _no_heavy_work)
        patch.setattr(step, "counterexample_pngs", _no_heavy_work)
        patch.setattr(step, "curve_counts", _no_heavy_work)
        assert main(["merge", "--config", str(config), "--out", str(sharded)]) in (0, 1)
    for name in ("slant_wide", "slant_x_thickness"):
        expected = json.loads((whole / "certificates" / f"{name}.json").read_text())
        merged = json.loads((sharded / "certificates" / f"{name}.json").read_text())
        assert _without_timings(merged) == _without_timings(expected)
        verdicts = {sample["verdict"] for sample in merged["samples"]}
        assert "falsified" in verdicts and "verified" in verdicts, "the comparison must cover both kinds of samples"
    falsified = [s for s in expected["samples"] if s["counterexample"]]
    assert all((sharded / s["counterexample"]["image"]).read_bytes() == (whole / s["counterexample"]["image"]).read_bytes() for s in falsified)
    whole_summary, merged_summary = (json.loads((folder / "summary.json").read_text()) for folder in (whole, sharded))
    assert [t["verdict"] for t in merged_summary["unit_tests"]] == [t["verdict"] for t in whole_summary["unit_tests"]]
    curves = [t["range_curve"] for t in merged_summary["unit_tests"]]
    assert curves == [t["range_curve"] for t in whole_summary["unit_tests"]], "the shards' range-curve counts add up to the unsharded curve"
    assert any(point["falsified_fraction"] > 0 for curve in curves for point in curve[:-1]), "the comparison must cover sub-boxes with falsified samples"


@pytest.mark.slow
def test_merge_refuses_incomplete_or_foreign_shards(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(small_run, tmp_path)
    out = tmp_path / "out"
    assert main(["verify", "--config", str(config), "--out", str(out), "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert main(["merge", "--config", str(config), "--out", str(out)]) == 2
    assert "need every shard i/N of one N exactly once, got 0/2" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    other = _config(small_run, tmp_path / "other", block_size=64)
    assert main(["verify", "--config", str(other), "--out", str(out), "--shard", "1/2"]) == 0
    capsys.readouterr()
    assert main(["merge", "--config", str(config), "--out", str(out)]) == 2
    assert "made for another audit" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    assert main(["merge", "--config", str(config), "--out", str(tmp_path / "empty")]) == 2
    assert "no shard-i-of-N.npz files found" in capsys.readouterr().err
    first = out / "shards" / "shard-0-of-2.npz"
    copy = tmp_path / "copy" / "shard-0-of-2.npz"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    assert main(["merge", "--config", str(config), "--out", str(out), str(first), str(copy)]) == 2
    assert "shard 0/2 is given twice" in capsys.readouterr().err
    with np.load(first) as stored:
        arrays = {key: stored[key] for key in stored.files}
    header = json.loads(str(arrays["header"]))
    del header["format"]
    np.savez(first, **{**arrays, "header": np.array(json.dumps(header))})
    assert main(["merge", "--config", str(config), "--out", str(out), str(first)]) == 2
    assert "shard file format 1" in capsys.readouterr().err
