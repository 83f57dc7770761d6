"""Fixtures of the bad-input and fuzz tests: a tiny audit folder made in seconds, and the CLI run in-process.

The audit is the synthetic one of tests/finetune_synthetic.py (2-D latents, a random 8x8 VAE,
a small head), verified once so that it also holds certificates. `run_cli` calls
`auditai_ops.cli.main.main` with stdout and stderr captured, and with a logging handler on
stderr as a real process has one (`logging.basicConfig` in `main` does nothing under pytest,
whose handlers are already installed), so a logged traceback shows up in `err`.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from finetune_synthetic import write_synthetic_audit

from auditai_ops.cli.main import main

AUDIT_CONFIG = """\
tracking: {enabled: false}
verify: {samples: 24, batch_size: 256, block_size: 64, max_pieces: 8, falsify_grid: 9, falsify_steps: 2, seconds_per_test: 20}
unit_tests:
  - name: x1_small
    direction: x1
    range: {low: -0.2, high: 0.2, units: latent}
    threshold: 0.5
"""


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def assert_bad_input(self, *fragments: str) -> str:
        """Exit 2 with exactly one stderr line, no traceback, that holds every fragment; returns the line."""
        assert self.code == 2, (self.code, self.err)
        assert "Traceback" not in self.err, self.err
        assert len(self.err_lines) == 1, self.err
        line = self.err_lines[0]
        assert line.startswith("auditai: error: "), line
        for fragment in fragments:
            assert fragment in line, (fragment, line)
        return line


def run_cli(argv: Sequence[str]) -> CliResult:
    """`auditai ARGV` in this process: exit code, stdout, stderr (log records included)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        root.removeHandler(handler)
    return CliResult(code, out.getvalue(), err.getvalue())


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
