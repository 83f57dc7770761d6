"""Where audits are tracked, and the parent run that every step of one audit nests under.

The tracking URI is `tracking.uri`, else $MLFLOW_TRACKING_URI, else the embedded default: a
sqlite store `<out>/mlflow/mlflow.db` with artifacts in `<out>/mlflow/artifacts`, so a laptop
run needs no server. One audit is one parent run. Its id is kept in `<out>/tracking.json`
(with the tracking URI and experiment), so steps that run as separate processes or
containers on the same folder nest under it; $AUDITAI_MLFLOW_PARENT_RUN_ID names it
explicitly (an orchestrator passes it to pods that do not share the folder).

An http(s) tracking URI is probed before use (about 10 s at most), so a server that does
not answer is one clear error instead of MLflow's own retries (about 4 minutes per call).
The experiment carries `mlflow.experimentKind: custom_model_development`, MLflow 3's mark
of a model-training (not GenAI) experiment.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditai_ops.config import TrackingConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_json
from auditai_ops.layout import TRACKING_FILE

_LOGGER = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_RUN_ENV = "AUDITAI_MLFLOW_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EMBEDDED_DIR = "mlflow"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
AUDIT_TAG = "auditai.audit"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's experiment kinds are "genai_development" and "custom_model_development" (its UI calls the latter "Machine learning")."""
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
"""MLflow 3.17's UI picks its GenAI or machine-learning view from a per-browser toggle (GenAI by default) or this query of a link."""
PROBE_SECONDS = 10.0
PROBE_ATTEMPT_SECONDS = 4.0
PROBE_PAUSE_SECONDS = 1.0
PROXY_DOWN_STATUSES = frozenset({502, 503, 504})
"""A proxy's answer when the MLflow server behind it does not answer."""


@dataclass(frozen=True)
class TrackingTarget:
    """A tracking URI, the experiment's name, and where a newly created experiment keeps its artifacts (None: the server decides)."""

    tracking_uri: str
    experiment: str
    artifact_location: str | None


def resolve_target(settings: TrackingConfig, out_dir: Path) -> TrackingTarget:
    """The tracking URI from the config, else the environment, else the embedded sqlite store in `out_dir`."""
    if settings.uri:
        return TrackingTarget(settings.uri, settings.experiment, settings.artifact_location)
    if os.environ.get(TRACKING_URI_ENV):
        return TrackingTarget(os.environ[TRACKING_URI_ENV], settings.experiment, settings.artifact_location)
    folder = Path(out_dir).resolve() / EMBEDDED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return TrackingTarget(f"sqlite:///{folder / 'mlflow.db'}", settings.experiment, settings.artifact_location or (folder / "artifacts").as_uri())


def require_mlflow() -> None:
    """Bad input (exit 2) when mlflow is missing: tracking is an optional extra."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise AuditInputError("tracking: mlflow is not installed (pip install auditai-ops[tracking]), or set tracking.enabled: false") from None


def shown_uri(tracking_uri: str) -> str:
    """The URI for messages: any user name and password in it replaced by '***'."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if "@" not in parts.netloc:
        return tracking_uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _uri_source(tracking_uri: str) -> str:
    """The setting the URI came from, to name it in an error."""
    return f"${TRACKING_URI_ENV}" if os.environ.get(TRACKING_URI_ENV) == tracking_uri else "tracking.uri"


def _no_answer_reason(error: Exception, waited: float) -> str:
    """Why a request got no answer after `waited` seconds of trying, in a few words (never the request's headers or credentials)."""
    import requests

    text = str(error)
    if isinstance(error, requests.exceptions.Timeout):
        return f"no answer within {round(waited, 1):g} s"
    if "refused" in text.lower():
        return "connection refused"
    if any(marker in text for marker in ("NameResolutionError", "Name or service not known", "nodename nor servname", "name resolution", "getaddrinfo")):
        return "host name not found"
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def probe_server(tracking_uri: str) -> None:
    """Raise AuditInputError naming the URI when an http(s) tracking server does not answer within about PROBE_SECONDS.

    Any HTTP answer (even 401 or 404, or a TLS error: something listens) counts as an answer,
    except a proxy's 502/503/504; refused connections and timeouts are retried until the
    deadline, so a server that restarts for a few seconds is waited for. Other URIs pass.
    """
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return
    import requests

    url = tracking_uri.rstrip("/") + "/health"
    started = time.monotonic()
    deadline = started + PROBE_SECONDS
    while True:
        timeout = max(0.5, min(PROBE_ATTEMPT_SECONDS, deadline - time.monotonic()))
        try:
            response = requests.get(url, timeout=timeout, allow_redirects=False)
        except requests.exceptions.SSLError:
            return
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            reason = _no_answer_reason(error, time.monotonic() - started)
        except requests.exceptions.RequestException as error:
            raise AuditInputError(f"{_uri_source(tracking_uri)} '{shown_uri(tracking_uri)}': not a usable MLflow server URI ({_no_answer_reason(error, 0.0)})") from None
        else:
            if response.status_code not in PROXY_DOWN_STATUSES:
                return
            reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
        if time.monotonic() + PROBE_PAUSE_SECONDS >= deadline:
            raise AuditInputError(f"{_uri_source(tracking_uri)} '{shown_uri(tracking_uri)}': the MLflow server does not answer ({reason})")
        time.sleep(PROBE_PAUSE_SECONDS)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """The client for `tracking_uri`, after checking that an http(s) server answers (AuditInputError naming the URI if not)."""
    require_mlflow()
    probe_server(tracking_uri)
    return _client(tracking_uri)


@lru_cache(maxsize=8)
def _client(tracking_uri: str) -> MlflowClient:
    """One client per URI and process (opening a sqlite store checks its schema once)."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in step logs
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # nor a run link after every status change
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # store migrations and run links are noise in step logs

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, target: TrackingTarget) -> str:
    """The experiment's id, created on first use; safe when two processes create it at once."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(target.experiment)
    if found is None:
        try:
            return str(client.create_experiment(target.experiment, artifact_location=target.artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except MlflowException:
            found = client.get_experiment_by_name(target.experiment)
            if found is None:
                raise
    mark_experiment_kind(client, found)
    return str(found.experiment_id)


def mark_experiment_kind(client: MlflowClient, experiment: Any) -> None:
    """Tag an experiment that has no kind yet as model training; one the user already tagged keeps its kind.

    A refused tag (say, no edit permission) is a warning: it only changes how the UI shows the experiment.
    """
    from mlflow.exceptions import MlflowException

    if (experiment.tags or {}).get(EXPERIMENT_KIND_TAG):
        return
    try:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except MlflowException as error:
        _LOGGER.warning("tracking: experiment '%s' keeps no %s tag (%s)", experiment.name, EXPERIMENT_KIND_TAG, str(error).splitlines()[0] if str(error) else type(error).__name__)


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or of one of its runs) in the machine-learning view, when the URI is a server."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    route = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{shown_uri(tracking_uri).rstrip('/')}/{route}?{UI_WORKFLOW_QUERY}"


@dataclass(frozen=True)
class AuditRun:
    """The parent run of one audit."""

    client: Any
    target: TrackingTarget
    experiment_id: str
    run_id: str


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the audit folder's tracking record, across processes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".tracking.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_tracking_record(out_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(out_dir) / TRACKING_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def audit_run(
    settings: TrackingConfig, out_dir: Path, new: bool = False, run_name: str = "audit", params: dict[str, str] | None = None, parent_run_id: str | None = None
) -> AuditRun:
    """The audit's parent run: `parent_run_id`, else $AUDITAI_MLFLOW_PARENT_RUN_ID, else the one in `tracking.json` (same URI), else a new one.

    `new=True` (used by `auditai run`) starts a new parent run unless the environment names
    one. A new parent run gets `params` (the whole audit config) and is recorded in
    `tracking.json`.
    """
    out_dir = Path(out_dir)
    target = resolve_target(settings, out_dir)
    client = tracking_client(target.tracking_uri)
    with _locked(out_dir):
        record = read_tracking_record(out_dir)
        run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
        if run_id is None and not new and record and record.get("tracking_uri") == target.tracking_uri:
            run_id = record.get("parent_run_id")
        if run_id is not None:
            run = client.get_run(run_id)
            experiment = str(run.info.experiment_id)
        else:
            experiment = experiment_id(client, target)
            run = client.create_run(experiment, run_name=run_name, tags={AUDIT_TAG: "true"})
            run_id = run.info.run_id
            log_params(client, run_id, params or {})
        if not record or record.get("parent_run_id") != run_id or record.get("tracking_uri") != target.tracking_uri:
            write_json(
                out_dir / TRACKING_FILE,
                {"tracking_uri": target.tracking_uri, "experiment_id": experiment, "parent_run_id": run_id, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")},
            )
    return AuditRun(client, target, experiment, run_id)


def start_child_run(audit: AuditRun, name: str) -> str:
    """A nested run under the audit's parent run; returns its id."""
    run = audit.client.create_run(audit.experiment_id, run_name=name, tags={PARENT_TAG: audit.run_id})
    return str(run.info.run_id)


MAX_PARAM_LENGTH = 6000
PARAMS_PER_BATCH = 100


def flatten_params(payload: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted MLflow params; lists of named entries (unit tests) are keyed by name."""
    if isinstance(payload, dict):
        items = payload.items()
    elif isinstance(payload, list | tuple) and payload and all(isinstance(v, dict) and "name" in v for v in payload):
        items = ((str(v["name"]), {k: x for k, x in v.items() if k != "name"}) for v in payload)
    else:
        text = json.dumps(payload) if isinstance(payload, list | tuple) else str(payload)
        return {prefix: text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."}
    flat: dict[str, str] = {}
    for key, value in items:
        flat.update(flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(key, value) for key, value in sorted(params.items())]
    for start in range(0, len(entries), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=entries[start : start + PARAMS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], curves: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Finite metrics at step 0, and curves as (step, value) points, in batches (MLflow takes up to 1000 per call)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    points = [(key, 0, value) for key, value in metrics.items()] + [(key, step, value) for key, curve in (curves or {}).items() for step, value in curve]
    entries = [Metric(key, float(value), stamp, step) for key, step, value in sorted(points) if value is not None and math.isfinite(float(value))]
    for start in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[start : start + 1000])
