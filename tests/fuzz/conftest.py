"""Fixtures of the bad-input and fuzz tests: a tiny audit folder made in seconds, MLflow tracking off.

The audit is the synthetic one of tests/finetune_synthetic.py (2-D latents, a random 8x8 VAE,
a small head), verified once with cli_harness.AUDIT_CONFIG so that it also holds certificates.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_harness import AUDIT_CONFIG, run_cli
from finetune_synthetic import write_synthetic_audit


@contextmanager
def _untracked() -> Iterator[None]:
    yield None


@pytest.fixture(scope="module", autouse=True)
def _no_tracking_one_thread(one_torch_thread: None) -> Iterator[None]:
    """A mutated config may switch MLflow tracking on: keep it a no-op here (tracking has its own tests); tiny nets run on one thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("auditai_ops.tracking.steps.track_step", lambda *args, **kwargs: _untracked())
        yield


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic audit folder, verified with AUDIT_CONFIG (certificates, summary.json); copy it before changing it."""
    folder = tmp_path_factory.mktemp("tiny_audit")
    write_synthetic_audit(folder)
    config = folder / "audit.yaml"
    config.write_text(AUDIT_CONFIG)
    result = run_cli(["verify", "--config", config, "--out", folder])
    assert result.code == 0, result.err
    assert (folder / "certificates" / "x1_small.json").is_file()
    return folder


@pytest.fixture
def audit_copy(tiny_audit: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny audit."""
    return Path(shutil.copytree(tiny_audit, tmp_path / "audit"))
