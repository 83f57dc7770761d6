"""Environment names: those auditai_ops reads (scanned from its source) and those its libraries read
(MLflow, boto) are exactly the ones infra/runtime.yaml declares, and the ones compose and Kubernetes give."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_checks import COMPOSE_FILE, KUSTOMIZATIONS, REPO, containers, env_names_read, pod_spec, render_kustomization

from infra.images import images
from infra.runtime import runtime

NAMES = runtime()
STEP_IMAGES = {images()[kind].reference for kind in ("cpu", "cuda", "airflow")}


def code_env_names() -> dict[str, list[str]]:
    reads: dict[str, list[str]] = {}
    for read in env_names_read(REPO / "auditai_ops"):
        reads.setdefault(read.name, []).append(read.location)
    return reads


def test_every_name_auditai_ops_reads_is_declared_in_runtime_yaml() -> None:
    undeclared = {name: where for name, where in code_env_names().items() if name not in (*NAMES.step_env, *NAMES.per_run_env, *NAMES.local_env)}
    assert undeclared == {}, "declare these in infra/runtime.yaml (config_map, a secret, or per_run_env) so compose and Kubernetes provide them"


def test_every_step_name_is_read_by_auditai_ops_or_by_a_library_it_calls() -> None:
    read_here = set(code_env_names())
    unread = [name for name in NAMES.step_env if name not in read_here and name not in NAMES.third_party_env]
    assert unread == [], "no code reads these: remove them from infra/runtime.yaml"
    assert len(set(NAMES.step_env)) == len(NAMES.step_env), "a name comes from one place only"
    assert not set(NAMES.per_run_env) & set(NAMES.step_env)
    assert not set(NAMES.local_env) & (set(NAMES.step_env) | set(NAMES.per_run_env)), "a local name is never deployed"


@pytest.mark.parametrize("name", sorted(runtime().third_party_env))
def test_third_party_names_are_read_by_the_library_named(name: str) -> None:
    module = NAMES.third_party_env[name]
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level find_spec imports nothing
    assert spec is not None and spec.submodule_search_locations, f"{top} is not installed"
    source = Path(spec.submodule_search_locations[0]).joinpath(*rest).with_suffix(".py").read_text()
    assert f'"{name}"' in source or f"'{name}'" in source, f"{module} no longer reads {name}"


def test_the_scan_finds_reads_through_constants_and_refuses_computed_names(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "names.py").write_text('KEY_ENV = "PKG_KEY"\n')
    (package / "use.py").write_text(
        "import os\nfrom os import environ, getenv\nfrom pkg import names\nfrom pkg.names import KEY_ENV\n"
        "a = os.environ.get(KEY_ENV, '')\nb = environ['PKG_DIR']\nc = getenv('PKG_FLAG')\nd = 'PKG_SET' in os.environ\n"
        "os.environ.setdefault(names.KEY_ENV, 'x')\nenv = dict(os.environ)\n"
    )
    assert sorted({read.name for read in env_names_read(package)}) == ["PKG_DIR", "PKG_FLAG", "PKG_KEY", "PKG_SET"]
    (package / "bad.py").write_text("import os\nprefix = 'PKG'\nvalue = os.environ[f'{prefix}_X']\n")
    with pytest.raises(ValueError, match=r"pkg/bad.py:3: cannot resolve"):
        env_names_read(package)


# --- compose -------------------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def dag_variables() -> set[str]:
    """AIRFLOW_VAR_<NAME> for every Airflow Variable the DAGs read (module constants *_VARIABLE in dags/): Airflow's environment secrets backend."""
    names = set()
    for path in (REPO / "dags").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(isinstance(t, ast.Name) and t.id.endswith("_VARIABLE") for t in node.targets):
                names.add("AIRFLOW_VAR_" + node.value.value.upper())
    return names


def test_compose_gives_every_step_container_the_step_environment_and_nothing_unknown() -> None:
    step_services = {name: service for name, service in compose_services().items() if service["image"] in STEP_IMAGES}
    assert {"auditai", "airflow-scheduler", "airflow-apiserver", "airflow-dag-processor"} <= set(step_services)
    for name, service in step_services.items():
        environment = set(service["environment"])
        assert set(NAMES.step_env) <= environment, f"{name} lacks {set(NAMES.step_env) - environment}"
        unknown = {variable for variable in environment - set(NAMES.step_env) if not variable.startswith("AIRFLOW__") and variable not in dag_variables()}
        assert unknown == set(), f"{name}: no code reads {unknown}"
        assert not environment & set(NAMES.per_run_env), f"{name}: per-run names are set by the orchestrator, not the deployment"


def test_compose_airflow_settings_are_options_of_the_installed_airflow() -> None:
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("apache-airflow is not installed (the `airflow` extra)")
    template = yaml.safe_load((Path(spec.submodule_search_locations[0]) / "config_templates" / "config.yml").read_text())
    for name, service in compose_services().items():
        for variable in service.get("environment", {}):
            if variable.startswith("AIRFLOW__"):
                section, option = variable.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert option in template.get(section, {}).get("options", {}), f"{name}: {variable} is not an Airflow option"


def test_compose_servers_get_only_names_they_read() -> None:
    services = compose_services()
    s3_keys = set(NAMES.secrets["s3"].keys)
    assert set(services["seaweedfs"]["environment"]) == s3_keys, "weed reads its S3 admin identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    mlflow_env = set(services["mlflow"]["environment"])
    assert mlflow_env - {"MLFLOW_BACKEND_STORE_URI"} <= set(NAMES.step_env)
    assert s3_keys <= mlflow_env
    credentials = {name: services[name]["environment"] for name in ("seaweedfs", "mlflow", "auditai")}
    for key in s3_keys:
        assert len({environment[key] for environment in credentials.values()}) == 1, f"{key} differs between the S3 store and its clients"


# --- Kubernetes ----------------------------------------------------------------------------


def env_references(resource: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(kind, object name, key or None for a whole envFrom) of every ConfigMap/Secret a workload's containers read."""
    references = []
    for container in containers(resource):
        for variable in container.get("env", []):
            source = variable.get("valueFrom", {})
            for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if field in source:
                    references.append((kind, source[field]["name"], source[field]["key"]))
                    assert variable["name"] == source[field]["key"], f"env {variable['name']} reads key {source[field]['key']}: key == env name"
        for source in container.get("envFrom", []):
            for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if field in source:
                    references.append((kind, source[field]["name"], None))
    return references


def test_kubernetes_reads_only_the_configmap_and_secrets_of_runtime_yaml_with_their_keys() -> None:
    declared = {("ConfigMap", NAMES.config_map.name): set(NAMES.config_map.keys)}
    declared |= {("Secret", secret.name): set(secret.keys) for secret in NAMES.secrets.values()}
    for directory in KUSTOMIZATIONS:
        resources = render_kustomization(directory)
        assert not [resource for resource in resources if resource["kind"] == "Secret"], "secrets are created by hand, never kept in git"
        for resource in resources:
            for kind, name, key in env_references(resource):
                assert (kind, name) in declared, f"{directory}: {resource['metadata']['name']} reads {kind} {name}, not in infra/runtime.yaml"
                assert key is None or key in declared[(kind, name)], f"{directory}: {kind} {name} has no key {key} in infra/runtime.yaml"


def test_the_gpu_check_job_gets_the_step_environment() -> None:
    (job,) = render_kustomization(KUSTOMIZATIONS[1])
    whole_sources = {name for kind, name, key in env_references(job) if key is None}
    assert whole_sources == {NAMES.config_map.name, NAMES.secrets["s3"].name, NAMES.secrets["signing"].name}
    (container,) = pod_spec(job)["containers"]
    optional = {source["secretRef"]["name"] for source in container["envFrom"] if source.get("secretRef", {}).get("optional")}
    assert optional == {secret.name for secret in NAMES.secrets.values() if secret.optional}


def test_the_configmap_holds_exactly_its_declared_keys_pointing_at_the_in_cluster_services() -> None:
    resources = render_kustomization(KUSTOMIZATIONS[0])
    (config_map,) = [resource for resource in resources if resource["kind"] == "ConfigMap" and resource["metadata"]["name"] == NAMES.config_map.name]
    data = config_map["data"]
    assert set(data) == set(NAMES.config_map.keys)
    assert data["MLFLOW_TRACKING_URI"] == f"http://{NAMES.mlflow.service}:{NAMES.mlflow.port}"
    assert data["MLFLOW_S3_ENDPOINT_URL"] == f"http://{NAMES.s3.service}:{NAMES.s3.port}"
    assert data["AWS_DEFAULT_REGION"] == NAMES.s3.region
    services = {resource["metadata"]["name"]: resource for resource in resources if resource["kind"] == "Service"}
    for service in (NAMES.mlflow, NAMES.s3):
        assert service.port in [port["port"] for port in services[service.service]["spec"]["ports"]]
