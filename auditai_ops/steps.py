"""The pipeline steps as functions of a config text and artifact folders: what a KFP component or an Airflow task calls.

Each step writes its outputs into its own folder with the audit-folder layout (`latent/`,
`directions/`, `classifier/`, `shards/`, or certificates plus `summary.json`), so one
orchestrator artifact is one folder, and later steps read earlier ones through `StepInputs`.
The config arrives as YAML text: relative paths in it are relative to `base_dir` when a step
is given one (an orchestrator passes the config file's folder), else to the working directory.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from auditai_ops.config import AuditConfig, InputsConfig, VerifyConfig, load_config, parse_config, parse_yaml, read_config_text
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import CLASSIFIER_DIR, DIRECTIONS_DIR, HEAD_FILE, LATENT_DIR, LATENTS_FILE, SHARDS_DIR, TRACKING_FILE, VAE_FILE, StepInputs, resolve_inputs
from auditai_ops.preflight import DISCOVER_DIRECTIONS, MAP_LATENTS, TRAIN_CLASSIFIER, preflight


def config_from_text(config_yaml: str) -> AuditConfig:
    """Validate a config given as YAML text (an empty text gives the embedded defaults)."""
    return parse_config(parse_yaml(config_yaml, "config_yaml"), source="config_yaml")


def config_file_text(path: Path) -> str:
    """The text of a config file, validated (errors name the file and the field)."""
    text = read_config_text(Path(path))
    load_config(Path(path))
    return text


_REGISTERED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def registered_model_uri(model_name: str, version_or_alias: str) -> str:
    """The MLflow URI of a registered model version: `models:/name/3` for a version number, `models:/name@alias` for an alias."""
    name, chosen = model_name.strip(), version_or_alias.strip()
    if not _REGISTERED_NAME.match(name):
        raise AuditInputError(f"model_name: '{model_name}' is not a registered model name (letters, digits, '_', '.', '-')")
    if chosen.isdigit():
        return f"models:/{name}/{int(chosen)}"
    if not _ALIAS.match(chosen):
        raise AuditInputError(f"model_version: '{version_or_alias}' is neither a version number nor an alias")
    return f"models:/{name}@{chosen}"


def override_config_text(config_yaml: str, overrides: dict[str, dict[str, Any]]) -> str:
    """The config text with fields replaced section by section (`{"model": {"classifier": ...}}`), validated like the file."""
    config_from_text(config_yaml)  # the original's own errors first: past this, it is a mapping of mappings
    raw = parse_yaml(config_yaml, "config_yaml") or {}
    for section, fields in overrides.items():
        raw[section] = {**(raw.get(section) or {}), **fields}
    text = yaml.safe_dump(raw, sort_keys=False)
    config_from_text(text)
    return text


def with_device(config: AuditConfig, device: str | None) -> AuditConfig:
    """The config with `verify.device` replaced (validated like the YAML field) when a device is given."""
    if not device:
        return config
    try:
        verify = VerifyConfig.model_validate({**config.verify.model_dump(), "device": device})
    except ValidationError as error:
        raise AuditInputError(f"device: {error.errors()[0]['msg']}") from None
    return config.model_copy(update={"verify": verify})


def folder_inputs(latent_dir: Path, directions_dir: Path | None = None, head_dir: Path | None = None) -> StepInputs:
    """The inputs of a later step from the folders the earlier steps wrote."""
    empty = Path(latent_dir)  # stands in for outputs not produced yet; no step reads them
    return resolve_inputs(
        empty,
        InputsConfig(
            vae=str(Path(latent_dir) / LATENT_DIR / VAE_FILE),
            latents=str(Path(latent_dir) / LATENT_DIR / LATENTS_FILE),
            directions=str(Path(directions_dir or empty) / DIRECTIONS_DIR),
            head=str(Path(head_dir or empty) / CLASSIFIER_DIR / HEAD_FILE),
        ),
    )


def audit_generator(config: AuditConfig, inputs: StepInputs, base_dir: Path | None = None) -> Generator:
    """The generator the audit decodes with: the team's own (config `generator`) or the trained VAE."""
    from auditai_ops.models.generator import load_generator

    return load_generator(config.generator, inputs.vae, base_dir)


def _parent_run(config: AuditConfig, mlflow_run_dir: Path | None) -> str | None:
    """The parent run id that `begin_audit_step` recorded in `mlflow_run_dir`; None without one (or with tracking off)."""
    from auditai_ops.tracking.store import read_tracking_record

    record = read_tracking_record(Path(mlflow_run_dir)) if mlflow_run_dir is not None and config.tracking.enabled else None
    return str(record["parent_run_id"]) if record and record.get("parent_run_id") else None


@contextmanager
def _tracked(config: AuditConfig, out_dir: Path, step: str, parent: str | None) -> Iterator[None]:
    """The step inside a nested MLflow run of `parent` (from `_parent_run`); untracked without one."""
    if parent is None:
        yield
        return
    from auditai_ops.tracking.steps import track_step

    with track_step(config.tracking, Path(out_dir), step, config, parent_run_id=parent):
        yield


def begin_audit_step(config_yaml: str, run_dir: Path, run_name: str = "audit") -> str:
    """Start an audit's parent MLflow run (the whole config as params), recorded in `run_dir/tracking.json` for the later steps; its id ("" when tracking is off or failed)."""
    config = config_from_text(config_yaml)
    if not config.tracking.enabled:
        return ""
    from auditai_ops.tracking.steps import begin_audit

    return begin_audit(config, Path(run_dir), run_name=run_name) or ""


def map_latents_step(config_yaml: str, latent_dir: Path, base_dir: Path | None = None, mlflow_run_dir: Path | None = None) -> dict[str, float]:
    """Train the VAE (or use the team's generator) and encode the dataset into `latent_dir/latent/`; returns the metrics."""
    from auditai_ops.latent.mapping import map_latents

    config = config_from_text(config_yaml)
    checked = preflight(config, base_dir, Path(latent_dir), (MAP_LATENTS,), folder_inputs(latent_dir), out_field="latent_dir")
    with _tracked(config, latent_dir, "map-latents", _parent_run(config, mlflow_run_dir)):
        return map_latents(config.data, config.latent, Path(latent_dir), base_dir, checked.generator, config.directions).metrics


def discover_directions_step(config_yaml: str, latent_dir: Path, directions_dir: Path, base_dir: Path | None = None, mlflow_run_dir: Path | None = None) -> list[str]:
    """Find the calibrated semantic directions into `directions_dir/directions/`; returns their names."""
    from auditai_ops.directions.discover import discover_directions

    config = config_from_text(config_yaml)
    inputs = folder_inputs(latent_dir)
    checked = preflight(config, base_dir, Path(directions_dir), (DISCOVER_DIRECTIONS,), inputs, out_field="directions_dir")
    generator = checked.generator if checked.generator is not None else audit_generator(config, inputs, base_dir)
    with _tracked(config, directions_dir, "discover-directions", _parent_run(config, mlflow_run_dir)):
        return sorted(discover_directions(config.directions, generator, inputs.latents, Path(directions_dir)))


def train_classifier_step(config_yaml: str, latent_dir: Path, head_dir: Path, mlflow_run_dir: Path | None = None) -> dict[str, float]:
    """Train the classifier head on the latents into `head_dir/classifier/`; returns its accuracies."""
    from auditai_ops.classifier.head import train_classifier

    config = config_from_text(config_yaml)
    inputs = folder_inputs(latent_dir)
    preflight(config, None, Path(head_dir), (TRAIN_CLASSIFIER,), inputs, out_field="head_dir")
    with _tracked(config, head_dir, "train-classifier", _parent_run(config, mlflow_run_dir)):
        return train_classifier(config.classifier, inputs.latents, Path(head_dir)).metrics


def verify_shard_step(
    config_yaml: str,
    latent_dir: Path,
    directions_dir: Path,
    head_dir: Path,
    shard_index: int,
    shard_count: int,
    shard_dir: Path,
    device: str | None = None,
    base_dir: Path | None = None,
    mlflow_run_dir: Path | None = None,
) -> Path:
    """Verify shard `shard_index` of `shard_count` of every unit test into `shard_dir/shards/` (on `device` when given: cpu, cuda, cuda:N)."""
    from auditai_ops.verify.step import verify_shard
    from auditai_ops.verify.unit_tests import Shard

    config = with_device(config_from_text(config_yaml), device)
    inputs = folder_inputs(latent_dir, directions_dir, head_dir)
    generator = audit_generator(config, inputs, base_dir)
    with _tracked(config, shard_dir, f"verify-shard-{shard_index}-of-{shard_count}", _parent_run(config, mlflow_run_dir)):
        return verify_shard(config.unit_tests, config.verify, config.model, generator, inputs, Shard(shard_index, shard_count), Path(shard_dir), base_dir)


def merge_step(
    config_yaml: str,
    latent_dir: Path,
    directions_dir: Path,
    head_dir: Path,
    shard_dirs: list[Path],
    audit_dir: Path,
    base_dir: Path | None = None,
    mlflow_run_dir: Path | None = None,
) -> dict[str, Any]:
    """Merge the shards into certificates, `summary.json` and `junit.xml` in `audit_dir`; returns the summary (logged as the verify step)."""
    from auditai_ops.verify.step import find_shard_files, merge_shards

    config = config_from_text(config_yaml)
    inputs = folder_inputs(latent_dir, directions_dir, head_dir)
    generator = audit_generator(config, inputs, base_dir)
    with _tracked(config, audit_dir, "verify", _parent_run(config, mlflow_run_dir)):
        return merge_shards(config.unit_tests, config.verify, config.model, generator, inputs, find_shard_files([Path(d) for d in shard_dirs]), Path(audit_dir), base_dir)


def finetune_step(
    config_yaml: str, latent_dir: Path, directions_dir: Path, head_dir: Path, audit_dir: Path, candidate_dir: Path, base_dir: Path | None = None, mlflow_run_dir: Path | None = None
) -> dict[str, Any]:
    """Certified fine-tuning of the head for the audit's failing unit tests (the repair branch of a pipeline).

    With `finetune.repair: false` nothing is trained (status "repair off"). Otherwise the
    candidate head, when one is kept, lands in `candidate_dir/classifier/` (the layout of
    train-classifier's output, so later steps audit it as the head), with the fine-tuning
    record in `candidate_dir/finetune/finetune.json`; when the audit is tracked (a parent run
    in `mlflow_run_dir`), a new parent run "audit candidate" begins for the candidate's own audit, recorded in
    `candidate_dir/tracking.json` (so the candidate folder is also the later steps' run folder). Latent mode only: a pixel-mode candidate
    is a classifier file the config must name (`auditai run` with `finetune.repair: true`).
    Returns the status, whether a candidate was kept, the specs, both weight hashes and the message.
    """
    from auditai_ops.finetune.step import FINETUNE_DIR, FINETUNE_RECORD, finetune_model
    from auditai_ops.layout import SUMMARY_FILE

    config = config_from_text(config_yaml)
    if not config.finetune.repair:
        return {"status": "repair off", "candidate": False, "candidate_run_id": "", "message": "finetune.repair is false: the failing model is not fine-tuned"}
    if config.model.mode != "latent":
        raise AuditInputError("finetune.repair in a pipeline fine-tunes the head (model.mode: latent); for pixel mode run `auditai run` with finetune.repair: true")
    inputs = folder_inputs(latent_dir, directions_dir, head_dir)
    generator = audit_generator(config, inputs, base_dir)
    candidate_dir = Path(candidate_dir)
    parent = _parent_run(config, mlflow_run_dir)
    with tempfile.TemporaryDirectory(prefix="auditai-finetune-") as scratch:
        shutil.copyfile(Path(audit_dir) / SUMMARY_FILE, Path(scratch) / SUMMARY_FILE)  # the failing unit tests
        with _tracked(config, candidate_dir / FINETUNE_DIR, "finetune", parent):
            result = finetune_model(config.finetune, config.unit_tests, config.verify, config.model, generator, inputs, Path(scratch), base_dir)
        (candidate_dir / FINETUNE_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.record_path, candidate_dir / FINETUNE_DIR / FINETUNE_RECORD)
        if result.candidate is not None:
            (candidate_dir / CLASSIFIER_DIR).mkdir(parents=True, exist_ok=True)
            head = candidate_dir / CLASSIFIER_DIR / HEAD_FILE
            shutil.copyfile(result.candidate, head)
            shutil.copyfile(result.candidate.with_suffix(".json"), head.with_suffix(".json"))
    candidate_run_id = begin_audit_step(config_yaml, candidate_dir, "audit candidate") if parent is not None and result.candidate is not None else ""
    return {
        "status": result.status,
        "candidate": result.candidate is not None,
        "candidate_run_id": candidate_run_id,
        "specs": list(result.specs),
        "parent_sha256": result.parent_sha256,
        "candidate_sha256": result.candidate_sha256,
        "message": result.message,
    }


def assemble_audit_folder(target: Path, latent_dir: Path, directions_dir: Path, head_dir: Path, audit_dir: Path) -> Path:
    """Copy the step folders into one audit folder with the standard layout (what `auditai run` leaves), at `target`."""
    target = Path(target)
    for source in (latent_dir, directions_dir, head_dir, audit_dir):
        shutil.copytree(Path(source), target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SHARDS_DIR, TRACKING_FILE, ".tracking.lock", "mlflow"))
    return target


def report_step(config_yaml: str, latent_dir: Path, directions_dir: Path, head_dir: Path, audit_dir: Path, report_path: Path, mlflow_run_dir: Path | None = None) -> Path:
    """The self-contained HTML report of the audit, written to `report_path`."""
    from auditai_ops.report.html import write_html_report

    config = config_from_text(config_yaml)
    with tempfile.TemporaryDirectory(prefix="auditai-report-") as scratch:
        folder = assemble_audit_folder(Path(scratch), latent_dir, directions_dir, head_dir, audit_dir)
        with _tracked(config, folder, "report", _parent_run(config, mlflow_run_dir)):
            written = write_html_report(folder)
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, report_path)
    return Path(report_path)


def gate_step(
    config_yaml: str, latent_dir: Path, directions_dir: Path, head_dir: Path, audit_dir: Path, gate_dir: Path, mlflow_run_dir: Path | None = None
) -> dict[str, Any]:
    """Register the audited model in MLflow and set the gate alias only past passing, matching certificates; the decision (also in `gate_dir/gate.json`).

    With `mlflow_run_dir`, the gate's run nests under the parent run recorded there.
    """
    from auditai_ops.gate.step import gate_audit

    config = config_from_text(config_yaml)
    folder = assemble_audit_folder(Path(gate_dir), latent_dir, directions_dir, head_dir, audit_dir)
    return gate_audit(config.model_copy(update={"inputs": InputsConfig()}), folder, parent_run_id=_parent_run(config, mlflow_run_dir)).as_dict()


def promote_step(config_yaml: str, model_name: str, version: str, target_alias: str, work_dir: Path) -> dict[str, Any]:
    """Set `target_alias` on registered version `version` only if its own certificates pass and match its weights; the decision."""
    from auditai_ops.gate.step import promote_version

    config = config_from_text(config_yaml)
    return promote_version(config, Path(work_dir), model_name, version, None, target_alias).as_dict()
