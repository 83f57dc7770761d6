"""auditai_ops.allocator: freed tensor memory is reused instead of faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from auditai_ops.allocator import keep_freed_memory

# The verifier's own work: five rounds of forward+backward margin bounds of a 16-256-256-10 head
# on 2048 boxes, counting the page faults (minor faults) they cause after a first round.
_PROBE = textwrap.dedent(
    """
    import resource, torch
    from auditai_ops.allocator import keep_freed_memory
    from auditai_ops.classifier.head import build_head
    from auditai_ops.verify.engine import linear_margin_bounds, margin_specification
    from auditai_ops.verify.linear_bounds import latent_line_input
    applied = keep_freed_memory()
    torch.manual_seed(0)
    head = build_head(16, (256, 256), 10).eval()
    z = torch.randn(2048, 16)
    line = latent_line_input(z, torch.nn.functional.normalize(torch.randn(1, 16), dim=1))
    spec = margin_specification(head(z).argmax(1), 10)
    low = torch.full((2048, 1), -0.5)
    with torch.no_grad():
        linear_margin_bounds(head, line, spec, low, -low, "forward+backward", 1e-5)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            linear_margin_bounds(head, line, spec, low, -low, "forward+backward", 1e-5)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(keep: str) -> tuple[str, int]:
    env = {**os.environ, "AUDITAI_KEEP_FREED_MEMORY": keep}
    applied, faults = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults() -> None:
    applied, kept = _faults("1")
    opted_out, default = _faults("0")
    assert (applied, opted_out) == ("True", "False")
    assert default > 5_000  # measured: about 23,600 with glibc's defaults, 1,200 with the thresholds raised
    assert kept < default / 5


def test_opting_out_leaves_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITAI_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
