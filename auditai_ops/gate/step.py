"""The `gate` and `promote` steps: register the audited model and move aliases only past a passing, matching certificate.

gate: package the audit (auditai_ops.gate.package), register it once as a model version
(tags: verdict, certificates digest, weight hashes), download that version back, run every
check on what the registry holds (auditai_ops.gate.checks), log the decision with its
reasons, and only then, on PASS, move the alias. promote: the same checks on an existing
version, then the target alias. Both fail closed: an exception, a tracking error, the time
limit or a missing certificate is a refusal, and the alias write is always the last act.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from auditai_ops.audit_files import folder_audit_digest, read_summary
from auditai_ops.config import AuditConfig, GateConfig, ModelConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_json
from auditai_ops.gate.checks import AuditEvidence, Check, audit_checks
from auditai_ops.gate.decision import CHECK, ERROR, FAIL, PASS, GateDecision
from auditai_ops.gate.package import build_package, certificates_digest, package_digest, package_hashes, package_inputs, read_manifest
from auditai_ops.gate.registry import AUDIT_TAG, GATE_TAG, PACKAGE_TAG, Deadline, alias_version, audit_key, converge_alias, download_version, model_version_url, register_once
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import GATE_FILE, SUMMARY_FILE, StepInputs, resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.tracking.description import audit_table_markdown
from auditai_ops.tracking.steps import audit_params, audit_run_name
from auditai_ops.tracking.store import audit_run, experiment_id, flatten_params, log_metrics, log_params, resolve_target, start_child_run, tracking_client
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.binding import expected_specs
from auditai_ops.verify.step import load_test_samples

TIMEOUT_GRACE_SECONDS = 5.0
MAX_TAG_LENGTH = 5000
MAX_DESCRIPTION_LENGTH = 5000


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


def gate_audit(config: AuditConfig, out_dir: Path, base_dir: Path | None = None, parent_run_id: str | None = None, config_file: Path | None = None) -> GateDecision:
    """Register the audit in `out_dir` as a model version; set `gate.alias` only if every check passes. Writes `<out>/gate.json`.

    The gate's MLflow run nests under `parent_run_id` when given, else under the audit's parent run as `audit_run` finds it
    (a new one named after `config_file` when there is none).
    """
    out_dir, settings = Path(out_dir), config.gate
    if not config.tracking.enabled:
        raise AuditInputError("gate: tracking.enabled is false, but the gate needs the MLflow model registry")

    def refused(reason: str) -> GateDecision:
        return GateDecision("gate", ERROR, settings.model_name, settings.alias, reasons=(reason,))

    decision = _with_time_limit(settings.timeout_seconds, lambda deadline: _gate(config, out_dir, base_dir, deadline, refused, parent_run_id, config_file), refused)
    write_json(out_dir / GATE_FILE, decision.as_dict())
    return decision


def _gate(
    config: AuditConfig,
    out_dir: Path,
    base_dir: Path | None,
    deadline: Deadline,
    refused: Callable[[str], GateDecision],
    parent_run_id: str | None,
    config_file: Path | None,
) -> GateDecision:
    settings = config.gate
    audit = audit_run(config.tracking, out_dir, run_name=audit_run_name(config_file), params=audit_params(config, config_file), parent_run_id=parent_run_id)
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


def _evidence(config: AuditConfig, folder: Path, model: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None) -> tuple[AuditEvidence, dict[str, str]]:
    """The checks of the audit in `folder` against the config's unit tests, with the specs re-derived from `inputs`' directions and latents; and the weight hashes."""
    try:
        audited = build_audited_model(model, generator, inputs, base_dir)
        samples = load_test_samples(inputs.latents, config.verify.seed)
        expected = expected_specs(config.unit_tests, config.verify, load_directions(inputs.directions), samples)
    except AuditInputError as error:
        return AuditEvidence([Check("audit inputs", False, str(error))]), {}
    return audit_checks(folder, expected, audited, config.gate.require_signature), audited.hashes


def _register_and_check(config: AuditConfig, out_dir: Path, base_dir: Path | None, deadline: Deadline, client: Any, uri: str, run_id: str, parent_id: str) -> GateDecision:
    """Check the folder in front of the gate; register it only when it is a genuine audit of the config; pass only when every check holds for the registered copy too."""
    settings = config.gate
    name, alias = settings.model_name, settings.alias
    inputs = resolve_inputs(out_dir, config.inputs, base_dir)
    try:
        generator = load_generator(config.generator, inputs.vae, base_dir)
    except AuditInputError as error:
        return GateDecision("gate", FAIL, name, alias, reasons=(f"nothing registered: {error}",))
    evidence, weights = _evidence(config, out_dir, config.model, generator, inputs, base_dir)
    digest = evidence.digest
    if not evidence.genuine:
        reasons = ("nothing registered: the audit folder is not a genuine audit of this config and model", *_failed_reasons(evidence.checks))
        return GateDecision("gate", FAIL, name, alias, reasons=reasons, checks=tuple(evidence.checks), audit_digest=digest)
    certificates = certificates_digest({test: certificate["content_sha256"] for test, certificate in evidence.certificates.items()})
    with tempfile.TemporaryDirectory(prefix="auditai-gate-") as folder:
        package = Path(folder) / "audit"
        build_package(config, out_dir, base_dir, package)
        tags = {
            "auditai.verdict": evidence.verdict,
            AUDIT_TAG: digest,
            PACKAGE_TAG: package_digest(package),
            "auditai.certificates_digest": certificates,
            "auditai.audit_run_id": parent_id,
            **{f"auditai.weights.{key}": value for key, value in weights.items()},
        }
        version = register_once(client, name, package, audit_key(weights, digest), tags, run_id, deadline)
        registered = download_version(client, uri, version, Path(folder) / "registered")
        stored = (package_digest(registered), folder_audit_digest(registered), package_hashes(registered))
    expected = (version.tags.get(PACKAGE_TAG), digest, weights)
    same = stored == expected and version.tags.get(AUDIT_TAG) == digest
    detail = f"version {version.version} holds these files and weights" if same else f"version {version.version} differs from the audit folder and its tags"
    checks = [*evidence.checks, Check("registered version", same, detail)]
    decision = _checked_decision("gate", checks, weights, certificates, uri, name, alias, version, audit_digest=digest)
    client.set_model_version_tag(name, version.version, GATE_TAG, decision.decision)
    client.set_model_version_tag(name, version.version, "auditai.gate_reasons", "; ".join(decision.reasons)[:MAX_TAG_LENGTH] or "all checks passed")
    client.update_model_version(name, version.version, description=audit_table_markdown(read_summary(out_dir), max_length=MAX_DESCRIPTION_LENGTH))
    if decision.decision == FAIL and alias_version(client, name, alias) == str(version.version):
        client.delete_registered_model_alias(name, alias)
    return decision


def _local_audit_check(out_dir: Path, digest: str | None) -> Check:
    """When `out_dir` holds an audit, its summary and certificates must be byte for byte the registered ones."""
    if not (Path(out_dir) / SUMMARY_FILE).exists() and not (Path(out_dir) / SUMMARY_FILE).is_symlink():
        return Check("local audit", True, f"no audit folder at '{out_dir}': the registered package is checked on its own")
    try:
        local = folder_audit_digest(out_dir)
    except AuditInputError as error:
        return Check("local audit", False, f"the audit folder '{out_dir}' cannot be read: {error}")
    same = local == digest
    detail = f"'{out_dir}' holds the registered audit" if same else f"the summary or certificates in '{out_dir}' differ from the registered version's (edited, or another audit)"
    return Check("local audit", same, detail)


def version_checks(config: AuditConfig, out_dir: Path, client: Any, tracking_uri: str, version: Any) -> tuple[list[Check], dict[str, str], str | None]:
    """Every check of a registered version's own package against the config, the tags it was registered with, and the local audit folder; its weights and certificates digest."""
    with tempfile.TemporaryDirectory(prefix="auditai-version-") as folder:
        try:
            package = download_version(client, tracking_uri, version, Path(folder))
            model, generator_settings, inputs = package_inputs(package, read_manifest(package))
            generator = load_generator(generator_settings, inputs.vae, package)
        except AuditInputError as error:  # not an auditai package: no certificate to rely on
            return [Check("certificates", False, f"version {version.version} carries no audit ({error})")], {}, None
        packaged = package_digest(package)
        evidence, weights = _evidence(config, package, model, generator, inputs, package)
    tagged = version.tags.get(PACKAGE_TAG)
    unchanged = tagged == packaged
    checks = [Check("registered package", unchanged, "unchanged since the gate registered it" if unchanged else f"its files differ from those registered (tag {tagged})")]
    checks += evidence.checks
    digest = evidence.digest
    checks.append(Check("version tags name this audit", version.tags.get(AUDIT_TAG) == digest, f"tag {version.tags.get(AUDIT_TAG)}, audit {digest}"))
    checks.append(_local_audit_check(out_dir, digest))
    certificates = certificates_digest({test: certificate["content_sha256"] for test, certificate in evidence.certificates.items()})
    return checks, weights, certificates


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
        return _version_decision(CHECK, config, out_dir, client, target.tracking_uri, model_name, shown, chosen)

    return _with_time_limit(config.gate.timeout_seconds, work, refused)


def _version_decision(
    action: str, config: AuditConfig, out_dir: Path, client: Any, tracking_uri: str, name: str, alias: str, chosen: Any, run_id: str | None = None
) -> GateDecision:
    """The decision on the registered version `chosen` from the checks of its own package against the config."""
    checks, weights, digest = version_checks(config, out_dir, client, tracking_uri, chosen)
    return _checked_decision(action, checks, weights, digest, tracking_uri, name, alias, chosen, run_id, chosen.tags.get(AUDIT_TAG))


def _checked_decision(
    action: str,
    checks: list[Check],
    weights: dict[str, str],
    digest: str | None,
    tracking_uri: str,
    name: str,
    alias: str,
    version: Any,
    run_id: str | None = None,
    audit_digest: str | None = None,
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
        audit_digest=audit_digest,
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
        decision = _version_decision("promote", config, out_dir, client, target.tracking_uri, name, target_alias, chosen, run_id)
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
