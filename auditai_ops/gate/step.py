"""The `gate` and `promote` steps: register the audited model and move aliases only past a passing, matching certificate.

gate: package the audit (auditai_ops.gate.package), register it once as a model version
(tags: verdict, certificates digest, weight hashes), download that version back, run every
check on what the registry holds (auditai_ops.gate.checks), log the decision with its
reasons, and only then, on PASS, move the alias. promote: the same checks on an existing
version, then the target alias. Both fail closed: an exception, a tracking error, the time
limit or a missing certificate is a refusal, and the alias write is always the last act.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from auditai_ops.config import AuditConfig, GateConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_json
from auditai_ops.gate.checks import Check, package_certificates_digest, package_checks
from auditai_ops.gate.decision import CHECK, ERROR, FAIL, PASS, GateDecision
from auditai_ops.gate.package import build_package, package_hashes
from auditai_ops.gate.registry import GATE_TAG, Deadline, alias_version, audit_key, converge_alias, download_version, model_version_url, register_once
from auditai_ops.layout import GATE_FILE
from auditai_ops.tracking.steps import audit_params
from auditai_ops.tracking.store import audit_run, experiment_id, flatten_params, log_metrics, log_params, resolve_target, start_child_run, tracking_client

TIMEOUT_GRACE_SECONDS = 5.0
MAX_TAG_LENGTH = 5000


def _with_time_limit(seconds: float, work: Callable[[Deadline], GateDecision], refused: Callable[[str], GateDecision]) -> GateDecision:
    """Run `work` in a thread; past the limit (plus a grace for the deadline checks inside) the decision is a refusal."""
    deadline, outcome = Deadline(seconds), {}

    def target() -> None:
        try:
            outcome["decision"] = work(deadline)
        except Exception as error:  # fail closed: anything unexpected is a refusal with its reason
            outcome["decision"] = refused(_one_line(error))

    thread = threading.Thread(target=target, name="auditai-gate", daemon=True)
    thread.start()
    thread.join(seconds + TIMEOUT_GRACE_SECONDS)
    return outcome.get("decision") or refused(f"timed out after {seconds:g} s")


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _failed_reasons(checks: list[Any]) -> tuple[str, ...]:
    return tuple(f"{check.name}: {check.detail}" for check in checks if not check.passed)


def _log_decision(client: Any, run_id: str, decision: GateDecision) -> None:
    """The decision and its reasons on the step's run: tags, a 0/1 metric and the full record as JSON."""
    client.set_tag(run_id, "auditai.decision", decision.decision)
    client.set_tag(run_id, "auditai.reasons", "; ".join(decision.reasons)[:MAX_TAG_LENGTH] or "all checks passed")
    if decision.version:
        client.set_tag(run_id, "auditai.model_version", f"{decision.model_name}/{decision.version}")
    log_metrics(client, run_id, {"gate_passed": float(decision.decision == PASS)})
    client.log_dict(run_id, decision.as_dict(), GATE_FILE)


def gate_audit(config: AuditConfig, out_dir: Path, base_dir: Path | None = None, parent_run_id: str | None = None) -> GateDecision:
    """Register the audit in `out_dir` as a model version; set `gate.alias` only if every check passes. Writes `<out>/gate.json`.

    The gate's MLflow run nests under `parent_run_id` when given, else under the audit's parent run as `audit_run` finds it.
    """
    out_dir, settings = Path(out_dir), config.gate
    if not config.tracking.enabled:
        raise AuditInputError("gate: tracking.enabled is false, but the gate needs the MLflow model registry")

    def refused(reason: str) -> GateDecision:
        return GateDecision("gate", ERROR, settings.model_name, settings.alias, reasons=(reason,))

    decision = _with_time_limit(settings.timeout_seconds, lambda deadline: _gate(config, out_dir, base_dir, deadline, refused, parent_run_id), refused)
    write_json(out_dir / GATE_FILE, decision.as_dict())
    return decision


def _gate(
    config: AuditConfig, out_dir: Path, base_dir: Path | None, deadline: Deadline, refused: Callable[[str], GateDecision], parent_run_id: str | None
) -> GateDecision:
    settings = config.gate
    audit = audit_run(config.tracking, out_dir, params=audit_params(config, None), parent_run_id=parent_run_id)
    client, uri = audit.client, audit.target.tracking_uri
    run_id = start_child_run(audit, "gate")
    log_params(client, run_id, flatten_params({"gate": settings.model_dump(mode="json")}))
    try:
        decision = _register_and_check(config, out_dir, base_dir, deadline, client, uri, run_id, audit.run_id)
        _log_decision(client, run_id, decision)
        if decision.decision == PASS:
            alias_target = converge_alias(client, settings.model_name, settings.alias, deadline)
            promoted = alias_target is not None and int(alias_target) >= int(decision.version or 0)
            decision = replace(decision, promoted=promoted, alias_version=alias_target)
            client.set_tag(run_id, "auditai.alias", f"{settings.alias} -> {alias_target}")
        client.set_terminated(run_id, "FINISHED")
        client.set_terminated(audit.run_id, "FINISHED")
        return replace(decision, run_id=run_id)
    except Exception as error:
        failure = replace(refused(_one_line(error)), run_id=run_id)
        try:
            _log_decision(client, run_id, failure)
            client.set_terminated(run_id, "FAILED")
        except Exception:  # the tracking server itself may be what failed; the refusal stands either way
            pass
        return failure


def _register_and_check(config: AuditConfig, out_dir: Path, base_dir: Path | None, deadline: Deadline, client: Any, uri: str, run_id: str, parent_id: str) -> GateDecision:
    settings = config.gate
    name, alias = settings.model_name, settings.alias
    with tempfile.TemporaryDirectory(prefix="auditai-gate-") as folder:
        package = Path(folder) / "audit"
        try:
            build_package(config, out_dir, base_dir, package)
        except AuditInputError as error:
            return GateDecision("gate", FAIL, name, alias, reasons=(f"nothing to register: {error}",))
        weights = package_hashes(package)
        digest = package_certificates_digest(package)
        summary_verdict = _summary_verdict(package)
        tags = {
            "auditai.verdict": summary_verdict,
            "auditai.certificates_digest": digest,
            "auditai.audit_run_id": parent_id,
            **{f"auditai.weights.{key}": value for key, value in weights.items()},
        }
        key = audit_key(weights, digest)
        version = register_once(client, name, package, key, tags, run_id, deadline)
        registered = download_version(client, uri, version, Path(folder) / "registered")
        checks, _ = package_checks(registered, tuple(test.name for test in config.unit_tests))
    same_audit = version.tags.get("auditai.certificates_digest") == digest
    checks.append(Check("version carries this audit", same_audit, f"version {version.version} certificates digest {version.tags.get('auditai.certificates_digest')}"))
    decision = _checked_decision("gate", checks, weights, digest, uri, name, alias, version)
    client.set_model_version_tag(name, version.version, GATE_TAG, decision.decision)
    client.set_model_version_tag(name, version.version, "auditai.gate_reasons", "; ".join(decision.reasons)[:MAX_TAG_LENGTH] or "all checks passed")
    if decision.decision == FAIL and alias_version(client, name, alias) == str(version.version):
        client.delete_registered_model_alias(name, alias)
    return decision


def _summary_verdict(package: Path) -> str:
    try:
        return str(json.loads((package / "summary.json").read_text()).get("verdict", "missing"))
    except (FileNotFoundError, json.JSONDecodeError):
        return "missing"


def version_checks(client: Any, tracking_uri: str, version: Any) -> tuple[list[Check], dict[str, str], str | None]:
    """Every check of a registered version's own package, that its tags name those certificates, its weight hashes and certificates digest."""
    with tempfile.TemporaryDirectory(prefix="auditai-version-") as folder:
        try:
            package = download_version(client, tracking_uri, version, Path(folder))
        except AuditInputError as error:  # not an auditai package: no certificate to rely on
            checks, weights, digest = [Check("certificates", False, f"version {version.version} carries no audit ({error})")], {}, None
        else:
            checks, weights = package_checks(package)
            digest = package_certificates_digest(package)
    tagged = version.tags.get("auditai.certificates_digest")
    checks.append(Check("version tags name these certificates", tagged == digest, f"tag {tagged}, certificates {digest}"))
    return checks, weights, digest


def check_version(config: AuditConfig, out_dir: Path, model_name: str, version: str | None, alias: str | None) -> GateDecision:
    """Whether a registered version (by number or alias) may be deployed: the checks of `promote`, read-only (nothing is written to the registry)."""
    if not config.tracking.enabled:
        raise AuditInputError("check: tracking.enabled is false, but checking a version needs the MLflow model registry")
    _validate_choice("check", model_name, version, alias)
    shown = alias or ""

    def refused(reason: str) -> GateDecision:
        return GateDecision(CHECK, ERROR, model_name, shown, version, reasons=(reason,))

    def work(deadline: Deadline) -> GateDecision:
        target = resolve_target(config.tracking, out_dir)
        client = tracking_client(target.tracking_uri)
        chosen = _registered_version(client, model_name, version, alias)
        if chosen is None:
            missing = f"version {version}" if version is not None else f"alias '{alias}'"
            return GateDecision(CHECK, FAIL, model_name, shown, version, reasons=(f"{model_name} {missing}: not in the registry",))
        return _version_decision(CHECK, client, target.tracking_uri, model_name, shown, chosen)

    return _with_time_limit(config.gate.timeout_seconds, work, refused)


def _version_decision(action: str, client: Any, tracking_uri: str, name: str, alias: str, chosen: Any, run_id: str | None = None) -> GateDecision:
    """The decision on the registered version `chosen` from the checks of its own certificates and weights."""
    checks, weights, digest = version_checks(client, tracking_uri, chosen)
    return _checked_decision(action, checks, weights, digest, tracking_uri, name, alias, chosen, run_id)


def _checked_decision(
    action: str, checks: list[Check], weights: dict[str, str], digest: str | None, tracking_uri: str, name: str, alias: str, version: Any, run_id: str | None = None
) -> GateDecision:
    """PASS when every check passes, else FAIL with the failed checks as reasons, for registered `version`."""
    reasons = _failed_reasons(checks)
    return GateDecision(
        action,
        PASS if not reasons else FAIL,
        name,
        alias,
        str(version.version),
        reasons=reasons,
        checks=tuple(checks),
        certificates_digest=digest,
        weights=weights,
        run_id=run_id,
        model_version_url=model_version_url(tracking_uri, name, str(version.version)),
    )


def _registered_version(client: Any, name: str, version: str | None, alias: str | None) -> Any | None:
    """The version given by number or alias; None when the model, the version or the alias does not exist (other registry errors raise)."""
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            version = client.get_registered_model(name).aliases.get(alias)
            if version is None:
                return None
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _validate_choice(action: str, model_name: str, version: str | None, alias: str | None, target_alias: str | None = None) -> None:
    """Bad input before any registry call: the model name and target alias as the config would accept them, and exactly one of version and alias."""
    try:
        GateConfig(model_name=model_name, **({"alias": target_alias} if target_alias else {}))
    except ValidationError:
        raise AuditInputError(f"{action}: '{model_name}' is not a valid model name or '{target_alias}' not a valid alias (letters, digits, '_', '.', '-')") from None
    if (version is None) == (alias is None):
        raise AuditInputError(f"{action}: give exactly one of --version and --alias")


def promote_version(config: AuditConfig, out_dir: Path, model_name: str, version: str | None, alias: str | None, target_alias: str) -> GateDecision:
    """Set `target_alias` on a version (given by number or alias) only if its own package passes every check."""
    if not config.tracking.enabled:
        raise AuditInputError("promote: tracking.enabled is false, but promotion needs the MLflow model registry")
    _validate_choice("promote", model_name, version, alias, target_alias)

    def refused(reason: str) -> GateDecision:
        return GateDecision("promote", ERROR, model_name, target_alias, version, reasons=(reason,))

    return _with_time_limit(config.gate.timeout_seconds, lambda deadline: _promote(config, out_dir, model_name, version, alias, target_alias, deadline, refused), refused)


def _promote(
    config: AuditConfig, out_dir: Path, name: str, version: str | None, alias: str | None, target_alias: str, deadline: Deadline, refused: Callable[[str], GateDecision]
) -> GateDecision:
    target = resolve_target(config.tracking, out_dir)
    client = tracking_client(target.tracking_uri)
    chosen = client.get_model_version(name, version) if version is not None else client.get_model_version_by_alias(name, alias)
    run = client.create_run(
        experiment_id(client, target), run_name=f"promote {name} v{chosen.version} -> {target_alias}", tags={"auditai.model_version": f"{name}/{chosen.version}"}
    )
    run_id = run.info.run_id
    try:
        decision = _version_decision("promote", client, target.tracking_uri, name, target_alias, chosen, run_id)
        client.set_model_version_tag(name, chosen.version, f"auditai.promote.{target_alias}", decision.decision)
        client.set_model_version_tag(name, chosen.version, f"auditai.promote.{target_alias}.reasons", "; ".join(decision.reasons)[:MAX_TAG_LENGTH] or "all checks passed")
        _log_decision(client, run_id, decision)
        if decision.decision == PASS:
            deadline.check(f"setting alias '{target_alias}'")
            client.set_registered_model_alias(name, target_alias, chosen.version)
            decision = replace(decision, promoted=True, alias_version=str(chosen.version))
        client.set_terminated(run_id, "FINISHED")
        return decision
    except Exception as error:
        failure = replace(refused(_one_line(error)), run_id=run_id)
        try:
            _log_decision(client, run_id, failure)
            client.set_terminated(run_id, "FAILED")
        except Exception:  # as in the gate: the refusal stands even when it cannot be logged
            pass
        return failure
