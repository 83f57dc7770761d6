"""The compose stack validates against the Compose specification's schema and its services agree with each other and with infra/runtime.yaml."""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from infra_checks import COMPOSE_FILE, KUSTOMIZATIONS, REPO, containers, render_kustomization

from infra.runtime import runtime

NAMES = runtime()


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_schema_errors(document: dict[str, Any]) -> list[str]:
    """Errors against the compose-spec JSON schema that check-jsonschema ships (vendored, no download)."""
    schema = json.loads((importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_specification() -> None:
    assert compose_schema_errors(compose()) == []


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["mlflow"]["depends_on"]["postgres"] = {"condition": "service_ready"}
    broken["services"]["postgres"]["healtcheck"] = broken["services"]["postgres"].pop("healthcheck")
    assert len(compose_schema_errors(broken)) >= 2


def test_compose_mounts_the_repository_dags_and_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert (COMPOSE_FILE.parent / "../../dags").resolve() == REPO / "dags"
        assert "../../dags:/opt/airflow/dags:ro" in compose()["services"][name]["volumes"]


def option(arguments: list[str], name: str) -> str:
    (value,) = [argument.split("=", 1)[1] for argument in arguments if argument.startswith(f"{name}=")]
    return value


def test_the_s3_store_creates_the_bucket_mlflow_writes_to_in_compose_and_kubernetes() -> None:
    services = compose()["services"]
    weed_compose = services["seaweedfs"]["command"]
    (weed_k8s,) = [container["args"] for resource in render_kustomization(KUSTOMIZATIONS[0]) for container in containers(resource) if container["name"] == "seaweedfs"]
    assert weed_compose == weed_k8s, "one SeaweedFS command line for both stacks"
    assert option(weed_compose, "-bucket") == NAMES.s3.bucket
    (mlflow_k8s,) = [container["args"] for resource in render_kustomization(KUSTOMIZATIONS[0]) for container in containers(resource) if container["name"] == "mlflow"]
    for arguments in (services["mlflow"]["command"], mlflow_k8s):
        assert urlsplit(option(arguments, "--default-artifact-root")).netloc == NAMES.s3.bucket
    assert urlsplit(services["auditai"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]).port == NAMES.s3.port


def test_step_containers_reach_the_mlflow_and_s3_services_of_the_stack() -> None:
    services = compose()["services"]
    environment = services["auditai"]["environment"]
    tracking = urlsplit(environment["MLFLOW_TRACKING_URI"])
    assert tracking.hostname in services and tracking.port == int(option(services["mlflow"]["command"], "--port"))
    assert urlsplit(environment["MLFLOW_S3_ENDPOINT_URL"]).hostname in services
    assert environment["AWS_DEFAULT_REGION"] == NAMES.s3.region
    for name in ("airflow-scheduler", "auditai"):
        assert services[name]["depends_on"]["mlflow"] == {"condition": "service_healthy"}


@pytest.fixture(scope="module")
def mlflow_server_command() -> Any:
    """The click command behind `mlflow server` (importing mlflow's CLI takes seconds)."""
    from mlflow.cli import server

    return server


def mlflow_arguments() -> dict[str, list[str]]:
    (k8s,) = [container["args"] for resource in render_kustomization(KUSTOMIZATIONS[0]) for container in containers(resource) if container["name"] == "mlflow"]
    return {"compose": compose()["services"]["mlflow"]["command"], "kubernetes": k8s}


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["compose", "kubernetes"])
def test_mlflow_server_accepts_the_arguments_and_the_host_headers_its_clients_send(stack: str, mlflow_server_command: Any) -> None:
    """The server image's entrypoint is `mlflow`: its arguments parse with MLflow's own CLI, and its Host-header
    allow-list (DNS-rebinding protection) admits the clients' MLFLOW_TRACKING_URI and a browser on localhost."""
    from mlflow.server.security_utils import is_allowed_host_header

    arguments = mlflow_arguments()[stack]
    assert arguments[0] == "server"
    parameters = mlflow_server_command.make_context("server", arguments[1:]).params
    assert parameters["serve_artifacts"] is False and parameters["default_artifact_root"].startswith("s3://")
    allowed = [host.strip() for host in parameters["allowed_hosts"].split(",")]
    if stack == "compose":
        tracking_uri = compose()["services"]["auditai"]["environment"]["MLFLOW_TRACKING_URI"]
    else:
        tracking_uri = f"http://{NAMES.mlflow.service}:{NAMES.mlflow.port}"
    for host in (urlsplit(tracking_uri).netloc, f"localhost:{NAMES.mlflow.port}", f"{NAMES.mlflow.service}.{NAMES.namespace}.svc.cluster.local:{NAMES.mlflow.port}"):
        if stack == "compose" and "svc.cluster" in host:
            continue
        assert is_allowed_host_header(allowed, host), f"{stack}: MLflow would reject Host: {host}"
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


@pytest.mark.slow
def test_airflow_services_run_commands_of_the_installed_airflow_cli(tmp_path: Path) -> None:
    """The Airflow image's entrypoint prefixes `airflow`: each service's command parses with Airflow's own parser."""
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("apache-airflow is not installed (the `airflow` extra)")
    commands = [service["command"] for name, service in compose()["services"].items() if name.startswith("airflow-")]
    assert len(commands) == 4
    script = (
        "import json, sys\nfrom airflow.cli.cli_parser import get_parser\nparser = get_parser()\n"
        "for command in json.loads(sys.argv[1]):\n    parser.parse_args(command)\n"
    )
    environment = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
