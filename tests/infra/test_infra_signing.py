"""Signatures in the deployed setups: their audit configs set gate.require_signature, and every step that writes,
verifies or gates certificates gets AUDITAI_SIGNING_KEY from a secret (a Kubernetes Secret; in compose, the
environment or the git-ignored infra/compose/.env), never a literal in git."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_checks import COMPOSE_FILE, K8S, KUSTOMIZATIONS, REPO, containers, pod_spec, render_kustomization

from auditai_ops.config import parse_config
from infra.images import images
from infra.runtime import runtime

NAMES = runtime()
KEY = "AUDITAI_SIGNING_KEY"
SIGNING = NAMES.secrets["signing"]
COMPOSE_AUDIT_CONFIG = COMPOSE_FILE.parent / "audit.yaml"
STEP_IMAGES = {images()[kind].reference for kind in ("cpu", "cuda", "airflow")}
REQUIRED_FROM_ENVIRONMENT = re.compile(r"^\$\{" + KEY + r":\?[^}]+\}$")  # ${AUDITAI_SIGNING_KEY:?message}: no default, no literal


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def kubernetes_audit_config(directory: Path) -> str:
    (config_map,) = [r for r in render_kustomization(directory) if r["kind"] == "ConfigMap" and r["metadata"]["name"] == NAMES.audit_config.config_map]
    return config_map["data"][NAMES.audit_config.key]


def dag_variable(name: str) -> str:
    """The value of the module-level constant `name` in dags/ (read from the source: importing a DAG file imports Airflow)."""
    values = set()
    for path in (REPO / "dags").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == name for target in node.targets):
                values.add(ast.literal_eval(node.value))
    (value,) = values
    return value


# --- the audit configs --------------------------------------------------------------------


@pytest.mark.parametrize("setup", ["compose", "kubernetes", "kubernetes-profile"])
def test_the_deployed_audit_config_requires_signatures_and_is_the_mnist_audit(setup: str) -> None:
    text = {
        "compose": lambda: COMPOSE_AUDIT_CONFIG.read_text(),
        "kubernetes": lambda: kubernetes_audit_config(KUSTOMIZATIONS[0]),
        "kubernetes-profile": lambda: kubernetes_audit_config(K8S / "overlays" / "profile"),
    }[setup]()
    raw = yaml.safe_load(text)
    config = parse_config(raw, setup)
    assert config.gate.require_signature is True
    # Apart from the gate's setting, the MNIST audit the README documents (so the copy cannot drift from it).
    mnist = yaml.safe_load((REPO / "examples" / "mnist" / "audit.yaml").read_text())
    assert config == parse_config({**mnist, "gate": {"require_signature": True}}, "examples/mnist/audit.yaml + require_signature")
    assert set(raw["gate"]) == {"require_signature"}


def test_compose_and_kubernetes_audit_with_the_same_config() -> None:
    assert COMPOSE_AUDIT_CONFIG.read_text().split("\ndata:", 1)[1] == kubernetes_audit_config(KUSTOMIZATIONS[0]).split("\ndata:", 1)[1]


def test_compose_mounts_the_config_where_the_dags_and_the_cli_read_it() -> None:
    services = compose_services()
    mount = f"./{COMPOSE_AUDIT_CONFIG.name}:{NAMES.audit_config.path}:ro"
    variable = "AIRFLOW_VAR_" + dag_variable("CONFIG_VARIABLE").upper()  # Airflow's environment-variable secrets backend
    airflow = [name for name in services if name.startswith("airflow-")]
    assert len(airflow) == 4
    for name in airflow:
        assert mount in services[name]["volumes"], name
        assert services[name]["environment"][variable] == NAMES.audit_config.path, name
    assert mount in services["auditai"]["volumes"]
    assert f"run --rm auditai run {NAMES.audit_config.path} " in (REPO / "README.md").read_text(), "the README's compose audit uses the stack's config"


def test_the_gpu_check_job_audits_with_the_configmap() -> None:
    (job,) = render_kustomization(K8S / "gpu-check")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == NAMES.audit_config.mount_path]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == NAMES.audit_config.config_map
    assert [item["key"] for item in volume["configMap"]["items"]] == [NAMES.audit_config.key]
    assert container["args"][1] == NAMES.audit_config.path
    assert kubernetes_audit_config(KUSTOMIZATIONS[0]).strip(), "infra/k8s/base generates the ConfigMap the Job mounts"


def test_the_readme_submits_the_pipeline_with_the_clusters_config() -> None:
    base_config = (KUSTOMIZATIONS[0] / "audit.yaml").relative_to(REPO).as_posix()
    commands = [line for line in (REPO / "README.md").read_text().splitlines() if re.search(r"auditai kfp (submit|schedule) --host", line)]
    cluster = [line for line in commands if "localhost:8080" in line]  # the port-forward of "Deploy on a cluster"
    assert cluster and all(f"--config {base_config}" in line for line in cluster), cluster


# --- the signing key ----------------------------------------------------------------------


def test_every_compose_step_container_requires_the_key_from_the_environment() -> None:
    step_services = {name: service for name, service in compose_services().items() if service["image"] in STEP_IMAGES}
    assert {"auditai", "airflow-scheduler"} <= set(step_services)  # the CLI, and the LocalExecutor that runs the DAG tasks
    for name, service in step_services.items():
        assert REQUIRED_FROM_ENVIRONMENT.match(service["environment"][KEY]), f"{name}: {KEY} must be ${{{KEY}:?...}}"
    text = COMPOSE_FILE.read_text()
    assert [line.strip() for line in text.splitlines() if re.match(rf"\s*{KEY}\s*:", line)] == [f"{KEY}: {step_services['auditai']['environment'][KEY]}"]


def test_the_compose_env_file_stays_out_of_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_FILE.parent / ".env")], cwd=REPO)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, "infra/compose/.env holds the signing key: it must be git-ignored"


def test_the_signing_secret_is_required_in_kubernetes() -> None:
    assert SIGNING.keys == (KEY,) and SIGNING.optional is False


def test_every_kubernetes_step_gets_the_key_from_the_secret() -> None:
    steps = 0
    for directory in KUSTOMIZATIONS:
        for resource in render_kustomization(directory):
            for container in containers(resource):
                if container["image"] not in STEP_IMAGES:
                    continue  # MLflow, PostgreSQL, SeaweedFS never see certificates
                steps += 1
                sources = [source["secretRef"] for source in container.get("envFrom", []) if "secretRef" in source]
                assert {"name": SIGNING.name} in sources, f"{resource['metadata']['name']}: {SIGNING.name} must be a required envFrom"
                assert not any(variable["name"] == KEY and "value" in variable for variable in container.get("env", [])), "a literal key"
    assert steps >= 1


def test_every_pipeline_task_that_verifies_or_gates_gets_the_key_from_the_secret() -> None:
    spec, platform = yaml.safe_load_all((REPO / "pipelines" / "audit_pipeline.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"exec-verify-shard", "exec-merge", "exec-gate", "exec-verify-shard-2", "exec-merge-2", "exec-gate-2"} <= set(executors)
    for name in spec["deploymentSpec"]["executors"]:  # every task: each writes, verifies or gates certificates, or may
        (secret,) = [s for s in executors[name]["secretAsEnv"] if s["secretName"] == SIGNING.name]
        assert secret["keyToEnv"] == [{"envVar": KEY, "secretKey": KEY}] and secret["optional"] is False, name
    for container in (e["container"] for e in spec["deploymentSpec"]["executors"].values()):
        assert KEY not in str(container.get("env", "")), "a literal key in the pipeline"
