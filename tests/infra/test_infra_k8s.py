"""The Kubernetes manifests validate against the Kubernetes OpenAPI schemas (kubernetes-validate, schemas
bundled in the wheel) and carry the names and GPU scheduling of infra/runtime.yaml; the README creates the Secrets they read."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kubernetes_validate
import pytest
import yaml
from infra_checks import K8S, KUSTOMIZATIONS, REPO, containers, generated_config_map_files, pod_spec, render_kustomization

from infra.runtime import runtime

NAMES = runtime()
# An older release still common on managed clusters, and the newest schema the package bundles.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.major_minor(kubernetes_validate.latest_version())]


def test_every_manifest_file_is_referenced_by_a_kustomization() -> None:
    referenced = set()
    for directory in KUSTOMIZATIONS:
        for resource in render_kustomization(directory):
            referenced.add((resource["kind"], resource["metadata"]["name"]))
    files = [path for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"]
    listed = {(directory / entry).resolve() for directory in KUSTOMIZATIONS for entry in kustomization(directory).get("resources", [])}
    listed |= {path for directory in KUSTOMIZATIONS for files in generated_config_map_files(directory).values() for path in files.values()}
    assert {path.resolve() for path in files} <= listed
    assert ("Deployment", "auditai-mlflow") in referenced and ("Job", "auditai-gpu-check") in referenced


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.relative_to(K8S).as_posix())
def test_rendered_manifests_validate_strictly_against_the_kubernetes_schemas(directory: Path, version: str) -> None:
    resources = render_kustomization(directory)
    assert resources
    for resource in resources:
        validated = kubernetes_validate.validate(resource, version, strict=True)
        assert validated == version, f"{resource['kind']} validated against {validated}"


def test_strict_validation_rejects_an_unknown_field_and_a_wrong_type() -> None:
    deployment = next(resource for resource in render_kustomization(KUSTOMIZATIONS[0]) if resource["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_base_runs_in_the_runtime_namespace_under_the_pipeline_service_account() -> None:
    resources = render_kustomization(KUSTOMIZATIONS[0])
    assert {resource["metadata"]["namespace"] for resource in resources} == {NAMES.namespace}
    by_kind = {(resource["kind"], resource["metadata"]["name"]): resource for resource in resources}
    assert ("ServiceAccount", NAMES.service_account) in by_kind
    binding = by_kind[("RoleBinding", NAMES.service_account)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAMES.service_account}]
    assert ("Role", binding["roleRef"]["name"]) in by_kind
    rules = by_kind[("Role", binding["roleRef"]["name"])]["rules"]
    assert any("workflowtaskresults" in rule["resources"] and "create" in rule["verbs"] for rule in rules), "Argo's executor reports outputs"


def test_the_profile_overlay_moves_everything_to_the_profile_namespace() -> None:
    resources = render_kustomization(K8S / "overlays" / "profile")
    assert len({resource["metadata"]["namespace"] for resource in resources}) == 1
    assert resources[0]["metadata"]["namespace"] != NAMES.namespace


def test_pods_run_as_non_root_with_memory_limits() -> None:
    for directory in KUSTOMIZATIONS:
        for resource in render_kustomization(directory):
            spec = pod_spec(resource)
            if spec is None:
                continue
            assert spec["securityContext"]["runAsNonRoot"] is True, resource["metadata"]["name"]
            for container in containers(resource):
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert "memory" in container["resources"]["limits"]


def test_the_gpu_check_job_is_scheduled_like_a_verification_pod() -> None:
    (job,) = render_kustomization(K8S / "gpu-check")
    spec = pod_spec(job)
    assert spec["nodeSelector"] == NAMES.gpu.node_selector
    assert spec["tolerations"] == list(NAMES.gpu.tolerations)
    assert spec["serviceAccountName"] == NAMES.service_account
    (container,) = spec["containers"]
    assert container["resources"]["limits"][NAMES.gpu.resource] == 1
    assert container["args"][:2] == ["run", NAMES.audit_config.path] and container["args"][container["args"].index("--device") + 1] == "cuda"


def readme_secret_commands() -> dict[str, set[str]]:
    """`kubectl create secret generic NAME --from-literal=KEY=...` commands of the README: secret name -> keys."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        if "create secret generic" not in line:
            continue
        tokens = shlex.split(line, comments=True)
        name = tokens[tokens.index("generic") + 1]
        keys = {match.group(1) for token in tokens if (match := re.fullmatch(r"--from-(?:literal|file)=([A-Z0-9_]+)=.*", token))}
        secrets[name] = keys
    return secrets


def test_the_readme_creates_exactly_the_secrets_and_keys_the_manifests_read() -> None:
    assert readme_secret_commands() == {secret.name: set(secret.keys) for secret in NAMES.secrets.values()}
