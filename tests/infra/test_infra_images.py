"""Image names agree everywhere with infra/images.yaml, and the Dockerfiles are multi-stage, pinned, labelled and non-root."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_checks import COMPOSE_FILE, INFRA, KUSTOMIZATIONS, REPO, containers, dockerfile_stages, exec_form, labels, render_kustomization

from infra.images import images

BUILT_HERE = {kind: entry for kind, entry in images().items() if entry.dockerfile}
REFERENCES = {entry.reference for entry in images().values()}
OUR_REPOSITORIES = {entry.repository for entry in BUILT_HERE.values()}


def image_mentions_in_python(path: Path) -> list[tuple[int, str]]:
    """String literals of a Python file that name one of our images (with or without a tag)."""
    mentions = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(node.value == repository or node.value.startswith(f"{repository}:") or node.value.startswith(f"{repository}@") for repository in OUR_REPOSITORIES):
                mentions.append((node.lineno, node.value))
    return mentions


def image_values_in_yaml(document: Any) -> list[str]:
    """Values of every `image` / `base_image` key in a YAML document (compiled KFP pipelines, manifests)."""
    if isinstance(document, dict):
        found = [value for key, value in document.items() if key in ("image", "base_image") and isinstance(value, str)]
        return found + [item for value in document.values() for item in image_values_in_yaml(value)]
    if isinstance(document, list):
        return [item for value in document for item in image_values_in_yaml(value)]
    return []


def mismatched_images(paths: list[Path]) -> list[str]:
    """Every image named in components/, pipelines/ or dags/ that is not exactly a reference of images.yaml."""
    problems = []
    for path in paths:
        if path.suffix == ".py":
            problems += [f"{path}:{line}: {value}" for line, value in image_mentions_in_python(path) if value not in REFERENCES]
        else:
            for document in yaml.safe_load_all(path.read_text()):
                problems += [f"{path}: {value}" for value in image_values_in_yaml(document) if value not in REFERENCES]
    return problems


def test_components_pipelines_and_dags_use_the_images_of_images_yaml() -> None:
    paths = [path for folder in ("components", "pipelines", "dags") for pattern in ("*.py", "*.yaml", "*.yml") for path in sorted((REPO / folder).glob(pattern))]
    assert mismatched_images(paths) == []


def test_the_agreement_check_catches_a_stale_tag_and_a_hard_coded_image(tmp_path: Path) -> None:
    component = tmp_path / "verify_component.py"
    component.write_text('from kfp import dsl\n\n@dsl.component(base_image="ghcr.io/auditai-ops/auditai-cuda:0.0.9")\ndef verify() -> None: ...\n')
    pipeline = tmp_path / "audit_pipeline.yaml"
    pipeline.write_text(f"deploymentSpec:\n  executors:\n    exec-verify:\n      container:\n        image: {images()['cuda'].repository}:0.0.9\n")
    good = tmp_path / "map_component.py"
    good.write_text(f'BASE = "{images()["cpu"].reference}"\n')
    assert len(mismatched_images([component, pipeline, good])) == 2


def test_compose_runs_exactly_the_images_of_images_yaml_and_builds_them_with_their_dockerfile() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    by_reference = {entry.reference: entry for entry in images().values()}
    for name, service in services.items():
        assert service["image"] in by_reference, f"compose service {name}: {service['image']} is not in infra/images.yaml"
        entry = by_reference[service["image"]]
        if entry.dockerfile:
            build = service["build"]
            assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO, name
            assert build["dockerfile"] == entry.dockerfile, name
        else:
            assert "build" not in service, f"compose service {name} builds a third-party image"


def test_kubernetes_manifests_run_exactly_the_images_of_images_yaml() -> None:
    kinds = images()
    for directory in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for override in kustomization.get("images", []):
            entry = kinds[override["name"]]
            assert (override["newName"], override["newTag"]) == (entry.repository, entry.tag), f"{directory}: image {override['name']}"
        for resource in render_kustomization(directory):
            for container in containers(resource):
                assert container["image"] in REFERENCES, f"{directory}: {resource['kind']}/{resource['metadata']['name']} runs {container['image']}"


@pytest.mark.parametrize("kind", sorted(BUILT_HERE))
def test_dockerfile_is_multi_stage_from_pinned_bases_and_labelled_with_its_image(kind: str) -> None:
    entry = BUILT_HERE[kind]
    stages = dockerfile_stages(REPO / entry.dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools and sources stay out of the runtime image"
    stage_names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        assert stage.base in REFERENCES or stage.base in stage_names, f"FROM {stage.base}: not a base image of infra/images.yaml"
        assert not stage.base.endswith(":latest")
    final = stages[-1]
    for instruction in final.all("COPY"):
        source = instruction.arguments.split()
        if source[0].startswith("--from="):
            assert source[0].removeprefix("--from=") in stage_names
    image_labels = labels(final)
    assert image_labels["io.auditai-ops.image"] == entry.reference
    assert image_labels["org.opencontainers.image.version"] == entry.tag


@pytest.mark.parametrize("kind", sorted(BUILT_HERE))
def test_dockerfile_runs_as_a_non_root_user(kind: str) -> None:
    final = dockerfile_stages(REPO / BUILT_HERE[kind].dockerfile)[-1]
    users = final.all("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].arguments.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].arguments}"


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_step_images_run_the_auditai_cli(kind: str) -> None:
    final = dockerfile_stages(REPO / BUILT_HERE[kind].dockerfile)[-1]
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["auditai"]
    assert exec_form(final.all("CMD")[-1]) == ["--help"]


def test_the_build_context_sends_every_file_the_dockerfiles_copy() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    top_level_ignored = {pattern for pattern in ignored if "/" not in pattern and "*" not in pattern}
    for entry in BUILT_HERE.values():
        for stage in dockerfile_stages(REPO / entry.dockerfile):
            for instruction in stage.all("COPY"):
                arguments = [argument for argument in instruction.arguments.split() if not argument.startswith("--")]
                if any(argument.startswith("--from=") for argument in instruction.arguments.split()):
                    continue
                for source in arguments[:-1]:
                    assert (REPO / source).exists(), f"{entry.dockerfile}:{instruction.line}: COPY {source} does not exist"
                    assert Path(source).parts[0] not in top_level_ignored, f"{entry.dockerfile}:{instruction.line}: {source} is in .dockerignore"


def test_the_cuda_image_base_matches_the_cuda_build_of_torch() -> None:
    """The torch wheel index cuXY and the nvidia/cuda base X.Y name the same CUDA release."""
    stages = dockerfile_stages(INFRA / "docker" / "Dockerfile.cuda")
    cuda_version = images()["cuda-base"].tag.split("-")[0]
    major, minor = cuda_version.split(".")[:2]
    torch_lines = [instruction.arguments for instruction in stages[0].all("RUN") if "torch==" in instruction.arguments]
    assert torch_lines and all(f"download.pytorch.org/whl/cu{major}{minor}" in line for line in torch_lines)


def test_documented_build_commands_tag_each_dockerfile_with_its_image() -> None:
    """`docker build -f DOCKERFILE -t "$(... infra/images.py KIND)"` in the README and the Dockerfiles' headers pair the right files and kinds."""
    pattern = re.compile(r'docker build -f (\S+) -t "\$\(\.venv/bin/python infra/images\.py (\S+)\)"')
    texts = [(REPO / "README.md").read_text()] + [(REPO / entry.dockerfile).read_text() for entry in BUILT_HERE.values()]
    pairs = {match.groups() for text in texts for match in pattern.finditer(text)}
    assert {kind for _, kind in pairs} == set(BUILT_HERE)
    for dockerfile, kind in pairs:
        assert BUILT_HERE[kind].dockerfile == dockerfile, f"{dockerfile} builds {BUILT_HERE[kind].dockerfile}'s image {kind}"
