"""A gate or promotion decision with its reasons, and its rendering (kept apart, like report/render)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from auditai_ops.verify.check import Check

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"
CHECK = "check"
"""The action of a read-only check (it moves no alias)."""
EXIT_CODES = {PASS: 0, FAIL: 1, ERROR: 2}


@dataclass(frozen=True)
class GateDecision:
    """PASS sets the alias; FAIL refuses with reasons (a failed check); ERROR refuses because the gate could not decide."""

    action: str
    decision: str
    model_name: str
    alias: str
    version: str | None = None
    promoted: bool = False
    alias_version: str | None = None
    reasons: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    certificates_digest: str | None = None
    weights: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    model_version_url: str | None = None
    audit_digest: str | None = None
    """`audit_files.audit_digest` of the summary and certificates the decision was made on: a report shows the decision only beside those files."""

    @property
    def exit_code(self) -> int:
        """0 promoted (a check: passed), 1 refused by a check, 2 error (a gate or promotion PASS that did not set the alias is an error)."""
        if self.decision == PASS and not self.promoted and self.action != CHECK:
            return EXIT_CODES[ERROR]
        return EXIT_CODES[self.decision]

    def as_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["checks"] = [asdict(check) for check in self.checks]
        payload["reasons"] = list(self.reasons)
        return payload


def render_decision(decision: GateDecision) -> str:
    """One headline, then one line per check, like a test report."""
    target = f"{decision.model_name} version {decision.version}" if decision.version else f"{decision.model_name} (no version)"
    if decision.action == CHECK:
        verdict = "passed: every check holds" if decision.decision == PASS else "refused"
        headline = f"{decision.action}: {decision.decision}: {target} {verdict}"
    elif decision.promoted:
        headline = f"{decision.action}: {decision.decision}: {target} passed; alias '{decision.alias}' -> version {decision.alias_version}"
    else:
        headline = f"{decision.action}: {decision.decision}: {target} refused; alias '{decision.alias}' not set"
    lines = [headline]
    lines += [f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}" for check in decision.checks]
    lines += [f"  reason: {reason}" for reason in decision.reasons]
    if decision.model_version_url:
        lines.append(f"  {decision.model_version_url}")
    return "\n".join(lines)
