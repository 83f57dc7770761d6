"""Verdicts that do not depend on machine speed: deterministic budgets, the opt-in wall-clock budget, memory-bounded chunks."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from auditai_ops.cli.main import main
from auditai_ops.config import VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.report.render import console_table, junit_xml
from auditai_ops.verify import engine, prove_first, resample
from auditai_ops.verify.engine import (
    STOPPED_BY_PIECES,
    STOPPED_BY_SPLITS,
    STOPPED_BY_TIME,
    UNKNOWN,
    VERIFIED,
    Budget,
    Falsifier,
    LineVerifier,
    stop_for_splits,
)
from auditai_ops.verify.memory import point_cost
from auditai_ops.verify.unit_tests import Shard, split_share

CPU = torch.device("cpu")
GRID_ONLY = Falsifier(grid_points=5, steps=0, restarts=1)
UNHASHED = ("created_at", "content_sha256", "signature")


def _cancelling_head() -> nn.Module:
    """Margin 0.5 + relu(t) - relu(t) = 0.5 everywhere; IBP loses the cancellation, so proofs need pieces narrower than 0.5."""
    first, second = nn.Linear(1, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [1.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        second.bias.copy_(torch.tensor([0.5, 0.0]))
    return nn.Sequential(first, nn.ReLU(), second).eval()


def _ibp_run(budget: Budget, samples: int = 6) -> engine.SampleOutcomes:
    verifier = LineVerifier(_cancelling_head(), np.array([1.0]), CPU, batch_size=64)
    latents = np.linspace(-0.3, 0.3, samples, dtype=np.float32)[:, None]
    return verifier.verify(latents, np.zeros(samples, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP",), GRID_ONLY, budget, 1e-5)


def test_without_a_total_budget_every_sample_is_proved_by_splitting() -> None:
    out = _ibp_run(Budget(max_pieces=64))
    assert out.verdicts.tolist() == [VERIFIED] * 6 and (out.pieces >= 4).all()
    assert out.stopped_by.tolist() == [""] * 6


@pytest.mark.parametrize("splits", [0, 5, 12, 20])
def test_the_total_split_budget_is_never_exceeded_and_marks_whom_it_stopped(splits: int) -> None:
    free = _ibp_run(Budget(max_pieces=64))
    out = _ibp_run(Budget(max_pieces=64, splits=splits))
    assert int((out.pieces - 1).sum()) <= splits
    stopped = out.stopped_by == STOPPED_BY_SPLITS
    assert set(out.verdicts[stopped]) <= {UNKNOWN} and stopped.any()
    assert out.verdicts[~stopped].tolist() == [VERIFIED] * int((~stopped).sum())
    np.testing.assert_array_equal(out.pieces[~stopped], free.pieces[~stopped])  # the samples it lets go on branch as without it
    if splits == 0:
        assert out.pieces.tolist() == [1] * 6 and stopped.all()


def test_the_per_sample_budget_is_marked_apart_from_the_total() -> None:
    out = _ibp_run(Budget(max_pieces=2, splits=1000))
    assert out.verdicts.tolist() == [UNKNOWN] * 6 and out.stopped_by.tolist() == [STOPPED_BY_PIECES] * 6


def test_stop_for_splits_stops_the_largest_first_and_keeps_what_fits() -> None:
    open_count = np.array([0, 3, 1, 5, 1, 2])
    candidates = np.array([1, 2, 3, 4, 5])
    assert stop_for_splits(open_count, candidates, 12).tolist() == [False] * 5
    assert stop_for_splits(open_count, candidates, 7).tolist() == [False, False, True, False, False]  # 3 + 1 + 1 + 2 = 7
    assert stop_for_splits(open_count, candidates, 2).tolist() == [True, False, True, False, True]  # 1 + 1 left
    assert stop_for_splits(open_count, candidates, 0).tolist() == [True] * 5
    assert stop_for_splits(open_count, np.array([2, 4]), 1).tolist() == [False, True]  # equal needs: the later sample stops


def test_split_shares_add_up_and_do_not_depend_on_the_shard_layout() -> None:
    total, count, block = 1000, 250, 40
    blocks = [(start, min(start + block, count)) for start in range(0, count, block)]
    shares = {start: split_share(total, start, stop, count) for start, stop in blocks}
    assert sum(shares.values()) == total
    assert all(abs(share - total * (stop - start) / count) < 1 for (start, stop), share in zip(blocks, shares.values(), strict=True))
    for shards in (1, 2, 3, 7):
        for index in range(shards):
            positions = Shard(index, shards).positions(count, block)
            for first in range(0, len(positions), block):
                start = int(positions[first])
                stop = start + len(positions[first : first + block])
                assert split_share(total, start, stop, count) == shares[start]


def test_a_jumpy_clock_changes_nothing_without_a_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calm = _ibp_run(Budget(max_pieces=64, splits=30))
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 1e6 * next(ticks))  # every reading a million seconds after the last
    jumpy = _ibp_run(Budget(max_pieces=64, splits=30))
    for name in engine.SampleOutcomes.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(jumpy, name), getattr(calm, name))


def test_an_exhausted_time_budget_is_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 1e6 * next(ticks))
    out = _ibp_run(Budget(max_pieces=64, seconds=60.0))
    assert out.verdicts.tolist() == [UNKNOWN] * 6 and out.stopped_by.tolist() == [STOPPED_BY_TIME] * 6 and out.pieces.tolist() == [1] * 6


def test_verify_config_defaults_are_deterministic() -> None:
    settings = VerifyConfig()
    assert settings.seconds_per_test is None and settings.max_splits_per_test >= settings.samples * (settings.max_pieces - 1)
    assert VerifyConfig(seconds_per_test=30).seconds_per_test == 30.0


# --- memory-bounded chunks --------------------------------------------------------------


def _decoder_like() -> nn.Module:
    """A latent -> 28x28 decoder shaped like the VAE's, then a small classifier."""
    return nn.Sequential(
        nn.Linear(4, 64 * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
        nn.Conv2d(1, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 3),
    ).eval()


def test_point_cost_counts_the_widest_layer_with_its_work_buffer() -> None:
    network = _decoder_like()
    cost = point_cost(lambda: network(torch.zeros(5, 4)), network, points=5)
    # the first ConvTranspose2d: input 64x7x7, output 32x14x14 and a col2im buffer of 32x4x4 x 7x7 floats
    assert cost.peak == 4 * (64 * 49 + 32 * 196 + 32 * 16 * 49)
    assert cost.saved > cost.peak - 4 * 32 * 16 * 49
    assert cost.points(10 * cost.peak) == 10 and cost.points(1) == 1


def _bumpy_head() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def test_counterexample_search_does_not_depend_on_the_chunk_size() -> None:
    """One piece per chunk (the smallest memory budget) searches the same points, random starts included, as one chunk for all."""
    head = _bumpy_head()
    latents = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    with torch.no_grad():
        targets = head(torch.from_numpy(latents)).argmax(dim=1).numpy()
    falsifier = Falsifier(grid_points=9, steps=6, restarts=3, seed=11)
    outcomes = []
    for chunk_bytes in (1 << 30, 1):
        verifier = LineVerifier(head, np.array([[0.6, 0.8]]), CPU, batch_size=16, chunk_bytes=chunk_bytes)
        outcomes.append(verifier.verify(latents, targets, np.array([-2.0]), np.array([2.0]), ("forward+backward",), falsifier, Budget(max_pieces=8), 1e-5))
    assert {"falsified", "verified"} <= set(outcomes[0].verdicts.tolist())
    for name in engine.SampleOutcomes.__dataclass_fields__:
        if name == "counterexample_margin":  # the same points, their margins evaluated in batches of other sizes: last-bit differences
            np.testing.assert_allclose(outcomes[1].counterexample_margin, outcomes[0].counterexample_margin, rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(getattr(outcomes[1], name), getattr(outcomes[0], name))


def test_dense_sampling_does_not_depend_on_the_chunk_size(tmp_path: Path) -> None:
    head = _bumpy_head()
    latents = torch.from_numpy(np.random.default_rng(1).normal(size=(30, 2)).astype(np.float32))
    with torch.no_grad():
        targets = head(latents).argmax(dim=1)
    certificate = {
        "directions": [{"name": "d"}],
        "latent_box": {"low": [-1.5], "high": [1.5]},
        "samples": [{"id": f"s{i}", "verdict": VERIFIED, "target": int(targets[i])} for i in range(30)],
    }
    directions = {"d": Direction("d", "probe", np.array([0.6, 0.8], np.float32), "latent", None)}
    test_latents = resample.TestLatents(tmp_path / "latents.npz", latents, {f"s{i}": i for i in range(30)})
    results = {chunk: resample.contradicted_samples(certificate, head, directions, test_latents, 101, chunk) for chunk in (1, 5000, 1 << 30)}
    assert len(set(results.values())) == 1
    verified, points, contradicted = results[1]
    assert (verified, points) == (30, 101) and 0 < contradicted < 30  # the box is wide enough that some leave their class


# --- end to end on the small run ----------------------------------------------------------


def _config(small_run: Path, folder: Path, **verify: object) -> Path:
    """The small run's artifacts, with ranges wide enough that some samples need branch and bound."""
    config = {
        "inputs": {
            "vae": str(small_run / "latent" / "vae.safetensors"),
            "latents": str(small_run / "latent" / "latents.npz"),
            "directions": str(small_run / "directions"),
            "head": str(small_run / "classifier" / "head.safetensors"),
        },
        "verify": {"samples": 150, "block_size": 48, **verify},
        "unit_tests": [
            {"name": "slant_wide", "direction": "slant", "range": {"low": -12, "high": 12}, "threshold": 0.5},
            {"name": "slant_x_thickness", "direction": ["slant", "thickness"], "range": [{"low": -3, "high": 3}, {"low": -0.2, "high": 0.2}], "threshold": 0.5},
        ],
    }
    path = folder / "budget.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _certificates(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((out / "certificates").glob("*.json")):
        certificate = {k: v for k, v in json.loads(path.read_text()).items() if k not in UNHASHED}
        certificate["aggregates"] = {k: v for k, v in certificate["aggregates"].items() if k != "seconds"}
        found[path.name] = certificate
    return found


def _slow_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bound computation takes an hour by the clock (and the clock jumps between readings too)."""
    clock = [0.0]

    def perf_counter() -> float:
        clock[0] += 7.0
        return clock[0]

    def slowed(real: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def slow(*args: object, **kwargs: object) -> torch.Tensor:
            clock[0] += 3600.0
            return real(*args, **kwargs)

        return slow

    monkeypatch.setattr(time, "perf_counter", perf_counter)
    monkeypatch.setattr(engine, "linear_margin_bounds", slowed(engine.linear_margin_bounds))
    monkeypatch.setattr(prove_first, "margin_lower_bounds", slowed(prove_first.margin_lower_bounds))  # the first phase's bounds


@pytest.mark.slow
def test_a_slow_machine_gives_the_same_certificates_by_default(small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(small_run, tmp_path)
    assert main(["verify", "--config", str(config), "--out", str(tmp_path / "normal")]) in (0, 1)
    normal = _certificates(tmp_path / "normal")
    assert any(s["pieces"] > 1 for c in normal.values() for s in c["samples"]), "the comparison must cover branch and bound"
    assert all(c["aggregates"]["budget_exhausted"] is None and c["settings"]["seconds_per_test"] is None for c in normal.values())
    with monkeypatch.context() as patched:
        _slow_bounds(patched)
        assert main(["verify", "--config", str(config), "--out", str(tmp_path / "slow")]) in (0, 1)
    assert _certificates(tmp_path / "slow") == normal
    assert "wall-clock" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_time_budget_that_trips_is_recorded_and_warned_about(small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(small_run, tmp_path, seconds_per_test=60)
    out = tmp_path / "slow"
    assert main(["verify", "--config", str(config), "--out", str(out)]) in (0, 1)
    assert all(c["aggregates"]["budget_exhausted"] is None for c in _certificates(out).values()), "a normal run fits in 60 s"
    capsys.readouterr()
    with monkeypatch.context() as patched:
        _slow_bounds(patched)
        assert main(["verify", "--config", str(config), "--out", str(out)]) in (0, 1)
    printed = capsys.readouterr().out
    certificates = _certificates(out)
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["unit_tests"]:
        aggregates = certificates[f"{row['name']}.json"]["aggregates"]
        assert row["budget_exhausted"] == aggregates["budget_exhausted"] == "time"
        assert row["stopped_by_budget"] == aggregates["stopped_by_budget"] > 0
        assert f"warning: {row['name']}: the wall-clock budget (verify.seconds_per_test) stopped {row['stopped_by_budget']} samples" in printed
    assert "depends on the machine's speed" in printed
    assert '<property name="budget_exhausted" value="time"' in (out / "junit.xml").read_text()
    assert main(["certificate", "check", *map(str, sorted((out / "certificates").glob("*.json"))), "--config", str(config), "--out", str(out)]) in (0, 1)
    checked = capsys.readouterr().out
    assert checked.count("ok   verified samples") == 2, "re-proving has no time budget: every proof reproduces"
    assert all(line.strip().startswith("FAIL verdict") for line in checked.splitlines() if line.strip().startswith("FAIL"))


@pytest.mark.slow
def test_the_split_budget_trips_alike_in_every_shard_layout(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(small_run, tmp_path, max_splits_per_test=20)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert main(["verify", "--config", str(config), "--out", str(whole)]) in (0, 1)
    assert "the total split budget (verify.max_splits_per_test) stopped" in capsys.readouterr().out
    for index in range(2):
        assert main(["verify", "--config", str(config), "--out", str(sharded), "--shard", f"{index}/2"]) == 0
    assert main(["merge", "--config", str(config), "--out", str(sharded)]) in (0, 1)
    expected = _certificates(whole)
    assert _certificates(sharded) == expected
    assert "pieces" in {c["aggregates"]["budget_exhausted"] for c in expected.values()}, "the comparison must cover a budget that trips"
    assert all(sum(s["pieces"] - 1 for s in c["samples"]) <= 20 for c in expected.values())


def test_console_table_and_junit_name_an_exhausted_budget() -> None:
    row = {
        "name": "slant",
        "direction": "slant",
        "ranges": [{"low": -1, "high": 1, "units": "attribute", "direction_units": "degrees"}],
        "threshold": 0.5,
        "threshold_on": "estimate",
        "verdict": "fail",
        "certified_accuracy": 0.4,
        "certified_accuracy_lower_bound": 0.3,
        "falsified_fraction": 0.1,
        "unknown_fraction": 0.5,
        "clean_accuracy": 0.9,
        "samples": 10,
        "seconds": 1.0,
    }
    summary = {"verdict": "fail", "created_at": "2024-01-01T00:00:00+00:00", "unit_tests": [{**row, "budget_exhausted": "time", "stopped_by_budget": 5}]}
    table = console_table(summary)
    assert "warning: slant: the wall-clock budget (verify.seconds_per_test) stopped 5 samples undecided: this verdict depends on the machine's speed" in table
    assert '<property name="budget_exhausted" value="time"' in junit_xml(summary)
    pieces = console_table({**summary, "unit_tests": [{**row, "budget_exhausted": "pieces", "stopped_by_budget": 2}]})
    assert "note: slant: the total split budget (verify.max_splits_per_test) stopped 2 samples" in pieces and "warning" not in pieces
    for quiet in ({**row, "budget_exhausted": None}, row):  # none tripped, or a summary from before the field
        assert "budget" not in console_table({**summary, "unit_tests": [quiet]})
