"""The CLI run in-process, as the bad-input and fuzz tests call it, and the tiny audit's config.

`run_cli` calls `auditai_ops.cli.main.main` with stdout and stderr captured, and with a logging
handler on stderr as a real process has one (`logging.basicConfig` in `main` does nothing under
pytest, whose handlers are already installed), so a logged traceback shows up in `err`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

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
