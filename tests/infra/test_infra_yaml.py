"""Every YAML file of the repository parses, and infra/images.py and infra/runtime.py read their files and refuse malformed ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from infra_checks import REPO

from infra import images as images_module
from infra import runtime as runtime_module
from infra.images import image, images
from infra.runtime import runtime

SKIPPED_FOLDERS = {".git", ".venv", "runs", "auditai-out", "node_modules", ".pytest_cache", ".hypothesis", "build", "dist"}


def repository_yaml_files() -> list[Path]:
    """*.yaml and *.yml files of the repository, not descending into the venv, runs or caches."""
    files = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS and not name.endswith(".egg-info")]
        files += [Path(folder) / name for name in names if name.endswith((".yaml", ".yml"))]
    return sorted(files)


def test_every_yaml_file_parses() -> None:
    files = repository_yaml_files()
    infra_files = {path.relative_to(REPO).as_posix() for path in files if path.is_relative_to(REPO / "infra")}
    assert {"infra/images.yaml", "infra/runtime.yaml", "infra/compose/docker-compose.yml", "infra/k8s/base/kustomization.yaml"} <= infra_files
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert any(document is not None for document in documents), f"{path} holds no YAML document"


def test_image_references_come_from_images_yaml() -> None:
    assert image("cpu") == "ghcr.io/auditai-ops/auditai:0.1.0"
    assert image("cuda") == "ghcr.io/auditai-ops/auditai-cuda:0.1.0"
    assert images()["cpu"].dockerfile == "infra/docker/Dockerfile"
    with pytest.raises(KeyError, match="unknown image kind 'gpu'"):
        image("gpu")


def test_images_py_prints_a_reference_for_docker_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert images_module.main(["cuda"]) == 0
    assert capsys.readouterr().out.strip() == image("cuda")
    assert images_module.main(["nope"]) == 2


def test_a_malformed_images_yaml_is_refused_with_the_entry_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "images.yaml"
    bad.write_text("images:\n  cpu: {repository: ghcr.io/x/y, tag: 0.1}\n")
    monkeypatch.setattr(images_module, "IMAGES_FILE", bad)
    images.cache_clear()
    try:
        with pytest.raises(ValueError, match="images.cpu: .*quote numeric tags"):
            images()
    finally:
        images.cache_clear()


def test_runtime_names_are_read_and_a_missing_field_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = runtime()
    assert names.secrets["s3"].keys == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert names.step_env[: len(names.config_map.keys)] == names.config_map.keys
    assert "POSTGRES_PASSWORD" not in names.step_env, "the database password is the MLflow server's, never a step's"
    raw = yaml.safe_load(runtime_module.RUNTIME_FILE.read_text())
    del raw["service_account"]
    bad = tmp_path / "runtime.yaml"
    bad.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(runtime_module, "RUNTIME_FILE", bad)
    runtime.cache_clear()
    try:
        with pytest.raises(ValueError, match="service_account: expected str"):
            runtime()
    finally:
        runtime.cache_clear()


def test_infra_python_is_lint_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "infra", "tests/infra"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
