"""The Python side of each step image, run here: the package builds from exactly the files the Dockerfiles
copy, and the container's command (ENTRYPOINT + arguments) runs in this venv as it would in the image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from infra_checks import REPO, dockerfile_stages, exec_form

from infra.images import images

SMALL_CONFIG = REPO / "tests" / "cli" / "small.yaml"


def container_command(kind: str, arguments: list[str] | None = None) -> list[str]:
    """ENTRYPOINT + (arguments or CMD) of an image, with the entrypoint resolved to this venv's console script."""
    final = dockerfile_stages(REPO / images()[kind].dockerfile)[-1]
    entrypoint = exec_form(final.all("ENTRYPOINT")[-1])
    executable = Path(sys.executable).parent / entrypoint[0]
    assert executable.exists(), f"{entrypoint[0]} is not installed in this venv"
    return [str(executable), *entrypoint[1:], *(arguments if arguments is not None else exec_form(final.all("CMD")[-1]))]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_default_command_prints_the_cli_help(kind: str, tmp_path: Path) -> None:
    result = run(container_command(kind), tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("map-latents", "discover-directions", "train-classifier", "verify", "run", "certificate"):
        assert command in result.stdout


@pytest.mark.slow
def test_a_verification_step_runs_through_the_image_entrypoint(small_run_copy: Path, tmp_path: Path) -> None:
    """What a verification pod runs (`auditai verify ... --device cuda`), with --device cpu: exit 0 or 1 with certificates, never 2."""
    result = run(container_command("cuda", ["verify", "--config", str(SMALL_CONFIG), "--out", str(small_run_copy), "--device", "cpu"]), tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert sorted(path.name for path in (small_run_copy / "certificates").glob("*.json")) == ["pca1_small.json", "slant_small.json", "thickness_small.json"]
    assert (small_run_copy / "summary.json").is_file()


@pytest.mark.slow
def test_the_package_builds_from_exactly_the_files_the_dockerfiles_copy(tmp_path: Path) -> None:
    """`pip install '.[...]'` in the build stage sees only the COPYed files: they must be enough to build the wheel."""
    source = tmp_path / "src"
    source.mkdir()
    copied = set()
    for kind in ("cpu", "cuda", "airflow"):
        build = dockerfile_stages(REPO / images()[kind].dockerfile)[0]
        copied.add(tuple(sorted(argument for instruction in build.all("COPY") for argument in instruction.arguments.split()[:-1] if not argument.startswith("--"))))
    assert len(copied) == 1, f"the step images copy different sources: {copied}"
    for name in copied.pop():
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = wheels.glob("auditai_ops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names if name.endswith("entry_points.txt"))
    assert {"auditai_ops/cli/main.py", "auditai_ops/verify/lirpa_compat.py", "auditai_ops/py.typed"} <= names
    assert "auditai = auditai_ops.cli.main:main" in entry_points
