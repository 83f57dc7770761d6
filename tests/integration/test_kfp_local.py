"""The whole audit pipeline through kfp.local.SubprocessRunner, offline: the same verdicts as `auditai run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("kfp", reason="the kfp extra is not installed")

from auditai_ops.cli.main import main  # noqa: E402

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_gives_the_verdicts_of_auditai_run(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kfp", "run-local", "--config", str(SMALL_CONFIG), "--pipeline-root", str(tmp_path), "--shards", "2"]) == 0
    printed = capsys.readouterr().out
    expected = json.loads((small_run / "summary.json").read_text())
    (summary_path,) = tmp_path.glob("auditai-audit-*/merge/audit/summary.json")
    pipeline = json.loads(summary_path.read_text())
    assert [(t["name"], t["verdict"]) for t in pipeline["unit_tests"]] == [(t["name"], t["verdict"]) for t in expected["unit_tests"]]
    assert pipeline["verdict"] == expected["verdict"] == "pass"
    assert "slant_small: pass" in printed
