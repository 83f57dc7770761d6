"""Runtime names from infra/runtime.yaml: namespace, service account, ConfigMap and Secrets of the steps, GPU scheduling.

    from infra.runtime import runtime
    rt = runtime()
    rt.config_map.name, rt.config_map.keys     # 'auditai-tracking', ('MLFLOW_TRACKING_URI', ...)
    rt.secrets["s3"].name                       # 'auditai-s3'
    rt.audit_config.path                        # '/etc/auditai/audit.yaml': the deployed audit config
    rt.gpu.node_selector, rt.gpu.tolerations    # for verification tasks

A secret's keys are the environment variable names it provides (key == env name), so a step
maps `{key: key for key in secret.keys}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

RUNTIME_FILE = Path(__file__).with_name("runtime.yaml")


@dataclass(frozen=True)
class EnvSource:
    """A ConfigMap or Secret whose keys are environment variable names."""

    name: str
    keys: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True)
class Service:
    """An in-cluster service: its name, port and, for S3, the bucket and region."""

    service: str
    port: int
    bucket: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class GpuScheduling:
    """What a verification pod requests (resource), selects (node_selector) and tolerates."""

    resource: str
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class AuditConfigMount:
    """The deployed audit config: the ConfigMap holding it under `key`, mounted in `mount_path` (the file: `path`)."""

    config_map: str
    key: str
    mount_path: str

    @property
    def path(self) -> str:
        return f"{self.mount_path.rstrip('/')}/{self.key}"


@dataclass(frozen=True)
class Runtime:
    namespace: str
    service_account: str
    config_map: EnvSource
    secrets: dict[str, EnvSource]
    audit_config: AuditConfigMount
    per_run_env: tuple[str, ...]
    local_env: tuple[str, ...]
    third_party_env: dict[str, str]
    mlflow: Service
    s3: Service
    gpu: GpuScheduling

    @property
    def step_env(self) -> tuple[str, ...]:
        """Every environment variable a deployment gives a step: the ConfigMap's keys, then the steps' secrets' keys (not the database's)."""
        names = list(self.config_map.keys)
        for role in ("s3", "signing"):
            names.extend(self.secrets[role].keys)
        return tuple(names)


def _field(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in raw or not isinstance(raw[key], kind):
        raise ValueError(f"{RUNTIME_FILE}: {where}{key}: expected {kind.__name__}")
    return raw[key]


def _env_source(raw: Any, where: str) -> EnvSource:
    if not isinstance(raw, dict) or set(raw) - {"name", "keys", "optional"}:
        raise ValueError(f"{RUNTIME_FILE}: {where}: expected keys name, keys and optionally optional")
    return EnvSource(name=_field(raw, "name", str, f"{where}."), keys=tuple(_field(raw, "keys", list, f"{where}.")), optional=bool(raw.get("optional", False)))


@cache
def runtime() -> Runtime:
    """Parse runtime.yaml; a missing or mistyped field raises ValueError naming it."""
    raw = yaml.safe_load(RUNTIME_FILE.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{RUNTIME_FILE}: expected a mapping")
    secrets = _field(raw, "secrets", dict, "")
    for role in ("s3", "signing", "postgres"):
        if role not in secrets:
            raise ValueError(f"{RUNTIME_FILE}: secrets.{role}: missing")
    gpu = _field(raw, "gpu", dict, "")
    audit_config = _field(raw, "audit_config", dict, "")
    if set(audit_config) - {"config_map", "key", "mount_path"}:
        raise ValueError(f"{RUNTIME_FILE}: audit_config: expected keys config_map, key and mount_path")
    return Runtime(
        namespace=_field(raw, "namespace", str, ""),
        service_account=_field(raw, "service_account", str, ""),
        config_map=_env_source(raw.get("config_map"), "config_map"),
        secrets={role: _env_source(entry, f"secrets.{role}") for role, entry in secrets.items()},
        audit_config=AuditConfigMount(**{key: _field(audit_config, key, str, "audit_config.") for key in ("config_map", "key", "mount_path")}),
        per_run_env=tuple(_field(raw, "per_run_env", list, "")),
        local_env=tuple(_field(raw, "local_env", list, "")),
        third_party_env=dict(_field(raw, "third_party_env", dict, "")),
        mlflow=Service(**_field(raw, "mlflow", dict, "")),
        s3=Service(**_field(raw, "s3", dict, "")),
        gpu=GpuScheduling(
            resource=_field(gpu, "resource", str, "gpu."),
            node_selector=dict(_field(gpu, "node_selector", dict, "gpu.")),
            tolerations=tuple(_field(gpu, "tolerations", list, "gpu.")),
        ),
    )
