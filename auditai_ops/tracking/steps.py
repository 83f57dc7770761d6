"""Logging the pipeline steps to MLflow: one nested run per step under the audit's parent run.

What a step logs is read from the files it wrote (files in, files out), so a step logs the
same whether it ran inside `auditai run`, alone, or in a pod: params are the step's config
sections (the parent run holds the whole config), metrics and artifacts come from the audit
folder, tags carry the weight hashes and the verdict. A tracking failure in a step is a
warning and the step's result stands; the gate and promotion fail closed instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from auditai_ops.config import AuditConfig, TrackingConfig
from auditai_ops.layout import (
    CERTIFICATES_DIR,
    CLASSIFIER_DIR,
    COUNTEREXAMPLES_DIR,
    DIRECTIONS_DIR,
    DIRECTIONS_JSON,
    JUNIT_FILE,
    LATENT_DIR,
    RECONSTRUCTIONS_PNG,
    REPORT_FILE,
    SUMMARY_FILE,
)
from auditai_ops.tracking.description import audit_note_markdown
from auditai_ops.tracking.store import AuditRun, audit_run, flatten_params, log_metrics, log_params, start_child_run

_LOGGER = logging.getLogger(__name__)
STEP_SECTIONS = {
    "map-latents": ("data", "latent", "generator"),
    "discover-directions": ("directions",),
    "train-classifier": ("classifier",),
    "verify": ("model", "verify", "unit_tests"),
    "report": (),
    "gate": ("gate",),
}
SUMMARY_METRICS = ("certified_accuracy", "certified_accuracy_lower_bound", "falsified_fraction", "unknown_fraction", "clean_accuracy")
NOTE_TAG = "mlflow.note.content"
"""The run's description in the MLflow UI (markdown)."""
MAX_NOTE_LENGTH = 8000
"""MLflow's limit on a run tag's value."""
CURVE_STEPS = 100
"""Curve points are logged at step = round(100 * fraction of the range), so step 100 is the unit test's own range."""


def audit_params(config: AuditConfig, config_file: Path | None) -> dict[str, str]:
    """The whole audit config (the specs and every setting) as params of the parent run."""
    params = flatten_params(config.model_dump(mode="json", exclude={"tracking"}))
    params["config_file"] = str(config_file) if config_file else "(embedded defaults)"
    return params


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _log_files(client: Any, run_id: str, out_dir: Path, paths: list[str]) -> None:
    """Log files and folders (relative to `out_dir`) under the same relative artifact paths."""
    for relative in paths:
        path = out_dir / relative
        parent = str(Path(relative).parent) if Path(relative).parent != Path(".") else None
        if path.is_dir():
            client.log_artifacts(run_id, str(path), relative)
        elif path.is_file():
            client.log_artifact(run_id, str(path), parent)


def verify_outputs(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Metrics per unit test, the certified-accuracy-against-range curve per unit test, and tags (verdict, weight hashes)."""
    metrics, curves = {}, {}
    for test in summary["unit_tests"]:
        for key in SUMMARY_METRICS:
            if test.get(key) is not None:
                metrics[f"{test['name']}.{key}"] = test[key]
        if test.get("range_curve"):
            curves[f"{test['name']}.certified_accuracy_vs_range"] = [(round(CURVE_STEPS * p["fraction"]), p["certified_accuracy"]) for p in test["range_curve"]]
    metrics["unit_tests_passed"] = float(sum(t["verdict"] == "pass" for t in summary["unit_tests"]))
    metrics["unit_tests"] = float(len(summary["unit_tests"]))
    tags = {"auditai.verdict": summary["verdict"], **{f"auditai.weights.{key}": value for key, value in summary.get("models", {}).items()}}
    return metrics, curves, tags


def log_step_outputs(audit: AuditRun, run_id: str, step: str, out_dir: Path) -> None:
    """Log what `step` wrote in `out_dir` to its run; the audit's record (metrics, certificates, report) also to the parent."""
    client = audit.client
    if step == "map-latents":
        record = _read_json(out_dir / LATENT_DIR / "vae.json") or {}
        log_metrics(client, run_id, record.get("metrics", {}))
        _log_files(client, run_id, out_dir, [f"{LATENT_DIR}/{RECONSTRUCTIONS_PNG}", f"{LATENT_DIR}/vae.json"])
    elif step == "discover-directions":
        record = _read_json(out_dir / DIRECTIONS_DIR / DIRECTIONS_JSON) or {"directions": {}}
        metrics = {}
        for name, entry in record["directions"].items():
            effect = entry.get("effect", {})
            values = {
                "calibration": entry.get("calibration"),
                "probe_r2_valid": entry.get("probe", {}).get("r2_valid"),
                "disentanglement": effect.get("disentanglement"),
                "monotonic": None if "monotonic" not in effect else float(effect["monotonic"]),
                "explained_variance_ratio": entry.get("explained_variance_ratio"),
            }
            metrics.update({f"direction.{name}.{key}": value for key, value in values.items() if value is not None})
        log_metrics(client, run_id, metrics)
        _log_files(client, run_id, out_dir, [DIRECTIONS_DIR])
    elif step == "train-classifier":
        record = _read_json(out_dir / CLASSIFIER_DIR / "head.json") or {}
        log_metrics(client, run_id, record.get("metrics", {}))
        _log_files(client, run_id, out_dir, [f"{CLASSIFIER_DIR}/head.json"])
    elif step == "verify":
        summary = _read_json(out_dir / SUMMARY_FILE)
        if summary is None:
            return
        metrics, curves, tags = verify_outputs(summary)
        tags[NOTE_TAG] = audit_note_markdown(summary, MAX_NOTE_LENGTH)
        for target in (run_id, audit.run_id):
            log_metrics(client, target, metrics, curves)
            for key, value in tags.items():
                client.set_tag(target, key, value)
            _log_files(client, target, out_dir, [CERTIFICATES_DIR, SUMMARY_FILE, JUNIT_FILE])
        _log_files(client, run_id, out_dir, [COUNTEREXAMPLES_DIR])
    elif step == "report":
        for target in (run_id, audit.run_id):
            _log_files(client, target, out_dir, [REPORT_FILE])


class StepTracking:
    """The MLflow side of one step; `audit` is None when tracking is off or failed (the step goes on untracked)."""

    def __init__(self, audit: AuditRun | None, run_id: str | None) -> None:
        self.audit, self.run_id = audit, run_id


DEFAULTS_RUN_NAME = "audit defaults"
"""The parent run's name when no config file is given (the embedded defaults)."""


def audit_run_name(config_file: Path | str | None) -> str:
    """The parent run's name: 'audit <config file stem>' (examples/mnist/audit-failing.yaml: 'audit audit-failing').

    A file named just 'audit' is named by its folder instead (examples/mnist/audit.yaml: 'audit mnist', not 'audit audit');
    no file: 'audit defaults'.
    """
    if not config_file:
        return DEFAULTS_RUN_NAME
    path = Path(config_file)
    stem = path.stem
    if stem.lower() == "audit":
        folder = path.resolve().parent.name
        stem = folder if folder and folder.lower() != "audit" else stem
    return f"audit {stem}"


def _warn(step: str, error: BaseException) -> None:
    _LOGGER.warning("tracking: step '%s' is not logged to MLflow (%s: %s)", step, type(error).__name__, str(error).splitlines()[0] if str(error) else "")


@contextmanager
def track_step(
    settings: TrackingConfig, out_dir: Path, step: str, config: AuditConfig, config_file: Path | None = None, parent_run_id: str | None = None
) -> Iterator[StepTracking]:
    """Run a step inside a nested MLflow run: params before, outputs and status after (FAILED when the step raises).

    The parent is `parent_run_id` when given (a pipeline passes the run its first task began), else as `audit_run` finds it.
    """
    out_dir = Path(out_dir)
    tracking = StepTracking(None, None)
    if settings.enabled:
        try:
            audit = audit_run(settings, out_dir, run_name=audit_run_name(config_file), params=audit_params(config, config_file), parent_run_id=parent_run_id)
            run_id = start_child_run(audit, step)
            dumped = config.model_dump(mode="json")
            log_params(audit.client, run_id, flatten_params({section: dumped[section] for section in STEP_SECTIONS.get(step, ())}))
            audit.client.update_run(audit.run_id, status="RUNNING")
            tracking = StepTracking(audit, run_id)
        except Exception as error:  # tracking must not take the audit down with it
            _warn(step, error)
    status = "FAILED"
    try:
        yield tracking
        status = "FINISHED"
    finally:
        if tracking.audit is not None and tracking.run_id is not None:
            try:
                if status == "FINISHED":
                    log_step_outputs(tracking.audit, tracking.run_id, step, out_dir)
                tracking.audit.client.set_terminated(tracking.run_id, status)
                tracking.audit.client.set_terminated(tracking.audit.run_id, status)
            except Exception as error:  # as above: the step's own result stands
                _warn(step, error)


def begin_audit(config: AuditConfig, out_dir: Path, config_file: Path | None = None, run_name: str | None = None) -> str | None:
    """Start a new parent run for the audit in `out_dir` (`auditai run`, a pipeline's first task); later steps nest under it.

    Returns its id; None when that failed (a warning: tracking must not take the audit down).
    """
    try:
        name = run_name or audit_run_name(config_file)
        return audit_run(config.tracking, Path(out_dir), new=True, run_name=name, params=audit_params(config, config_file)).run_id
    except Exception as error:  # as in track_step: tracking must not take the audit down
        _warn("run", error)
        return None
