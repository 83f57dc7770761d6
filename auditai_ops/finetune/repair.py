"""The repair loop of `auditai run` (`finetune.repair: true`): fine-tune on the failing specs, then re-audit the candidate.

The re-audit runs the same unit tests with the same verification settings, on the same
test samples, generator and directions, with the candidate's weights in place of the
parent's, into `<out>/repaired/` (certificates, summary.json, junit.xml); its certificates
carry the candidate's weight hash. `<out>/repair.json` sets the two audits side by side,
spec by spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditai_ops.config import AuditConfig, InputsConfig
from auditai_ops.fileio import write_json
from auditai_ops.finetune.step import FinetuneResult, finetune_model
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import SUMMARY_FILE, StepInputs
from auditai_ops.verify.step import verify_audit
from auditai_ops.verify.unit_tests import PASS

REPAIRED_DIR = "repaired"
REPAIR_RECORD = "repair.json"
_FIGURES = ("certified_accuracy", "falsified_fraction", "clean_accuracy", "verdict")


@dataclass(frozen=True)
class RepairOutcome:
    """The fine-tuning result, the re-audit's summary (None when the original model was kept), and the side-by-side rows."""

    finetune: FinetuneResult
    after: dict[str, Any] | None
    rows: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return self.after is not None and self.after["verdict"] == PASS


def compare_summaries(before: dict[str, Any], after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per unit test of `before`: threshold, and its figures before and after (None without a re-audit)."""
    after_rows = {row["name"]: row for row in (after or {}).get("unit_tests", [])}
    rows = []
    for row in before["unit_tests"]:
        later = after_rows.get(row["name"])
        rows.append(
            {
                "name": row["name"],
                "threshold": row["threshold"],
                "before": {key: row.get(key) for key in _FIGURES},
                "after": None if later is None else {key: later.get(key) for key in _FIGURES},
            }
        )
    return rows


def repair_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width before -> after table, one line per unit test."""

    def figure(entry: dict[str, Any] | None, key: str) -> str:
        value = None if entry is None else entry.get(key)
        return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value).upper())

    header = f"{'unit test':28s} {'threshold':>9s}  {'certified before -> after':>25s}  {'clean before -> after':>21s}  verdict before -> after"
    lines = [header, "-" * len(header)]
    for row in rows:
        before, after = row["before"], row["after"]
        certified = f"{figure(before, 'certified_accuracy')} -> {figure(after, 'certified_accuracy')}"
        clean = f"{figure(before, 'clean_accuracy')} -> {figure(after, 'clean_accuracy')}"
        verdict = f"{figure(before, 'verdict')} -> {figure(after, 'verdict')}"
        lines.append(f"{row['name'][:28]:28s} {row['threshold']:9.2f}  {certified:>25s}  {clean:>21s}  {verdict}")
    return "\n".join(lines)


def repair_audit(config: AuditConfig, generator: Generator, inputs: StepInputs, out_dir: Path, base_dir: Path | None = None) -> RepairOutcome:
    """Fine-tune for the failing unit tests of the audit in `out_dir`, re-audit the candidate into `out_dir/repaired`, write `repair.json`."""
    out_dir = Path(out_dir)
    before = json.loads((out_dir / SUMMARY_FILE).read_text())
    result = finetune_model(config.finetune, config.unit_tests, config.verify, config.model, generator, inputs, out_dir, base_dir)
    after = None
    if result.candidate is not None:
        model_settings, candidate_inputs = result.audit_settings(config.model, inputs)
        after = verify_audit(config.unit_tests, config.verify, model_settings, generator, candidate_inputs, out_dir / REPAIRED_DIR, base_dir)
        if after["models"].get(result.hash_key) != result.candidate_sha256:
            raise RuntimeError(f"the re-audit did not audit the candidate: {result.hash_key} {after['models'].get(result.hash_key)} != {result.candidate_sha256}")
    rows = compare_summaries(before, after)
    outcome = RepairOutcome(result, after, rows)
    write_json(
        out_dir / REPAIR_RECORD,
        {
            "schema_version": 1,
            "kind": "auditai.repair",
            "verdict_before": before["verdict"],
            "verdict_after": None if after is None else after["verdict"],
            "passed": outcome.passed,
            "finetune_status": result.status,
            "finetune_record": str(result.record_path.relative_to(out_dir)),
            "message": result.message,
            "parent_sha256": result.parent_sha256,
            "candidate": None if result.candidate is None else str(result.candidate.relative_to(out_dir)),
            "candidate_sha256": result.candidate_sha256,
            "repaired_audit": None if after is None else REPAIRED_DIR,
            "unit_tests": rows,
        },
    )
    return outcome


def candidate_gate_config(config: AuditConfig, outcome: RepairOutcome, inputs: StepInputs, out_dir: Path) -> AuditConfig:
    """The config that gates the repaired candidate from `out_dir/repaired`: its model and inputs, and the audit's own MLflow store.

    The tracking settings are made explicit (`resolve_target` of `out_dir`), so the gate of the
    sub-folder logs to the same store and registry as the audit did.
    """
    from auditai_ops.tracking.store import resolve_target

    model_settings, candidate = outcome.finetune.audit_settings(config.model, inputs)
    candidate_inputs = InputsConfig(**{name: str(Path(getattr(candidate, name)).resolve()) for name in ("vae", "latents", "directions", "head")})
    target = resolve_target(config.tracking, Path(out_dir))
    tracking = config.tracking.model_copy(update={"uri": target.tracking_uri, "artifact_location": target.artifact_location})
    return config.model_copy(update={"model": model_settings, "inputs": candidate_inputs, "tracking": tracking})
