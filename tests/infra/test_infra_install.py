"""The images install the package the way the Makefile (the README's `make demo` / `make test`) does, at the versions pyproject pins."""

from __future__ import annotations

import re
import tomllib

import pytest
from infra_checks import REPO, PipInstall, dockerfile_pip_installs, dockerfile_stages, makefile_pip_installs, pip_installs

from infra.images import images

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
STEP_IMAGES = ["cpu", "cuda", "airflow"]


def pinned_version(requirement_prefix: str) -> str:
    """The == version pyproject pins for one distribution, wherever it is listed."""
    requirements = list(PYPROJECT["project"]["dependencies"]) + [r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    versions = {match.group(1) for requirement in requirements if (match := re.fullmatch(rf"{re.escape(requirement_prefix)}==([\w.]+)", requirement.strip()))}
    assert len(versions) == 1, f"pyproject pins {requirement_prefix} {versions}"
    return versions.pop()


def expanded_extras(extras: frozenset[str]) -> set[str]:
    """Extras with self-references (all = auditai-ops[kfp,airflow,...]) expanded."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    result: set[str] = set()
    for extra in extras:
        result.add(extra)
        for requirement in optional[extra]:
            match = re.fullmatch(r"auditai-ops\[([^\]]+)\]", requirement)
            if match:
                result |= expanded_extras(frozenset(match.group(1).split(",")))
    return result


def image_installs(kind: str) -> list[PipInstall]:
    stages = dockerfile_stages(REPO / images()[kind].dockerfile)
    assert all(not dockerfile_pip_installs(stage) for stage in stages[1:]), "pip runs in the build stage only"
    return dockerfile_pip_installs(stages[0])


def test_the_makefile_installs_the_package_then_auto_lirpa_without_its_pins() -> None:
    project, lirpa = makefile_pip_installs(REPO / "Makefile")
    assert project.editable and project.project_extras == {"all", "test"}
    assert lirpa.options == ("--no-deps",) and lirpa.requirements == ("auto-lirpa==0.3",)


@pytest.mark.parametrize("kind", STEP_IMAGES)
def test_image_installs_torch_then_the_makefile_steps(kind: str) -> None:
    """torch from a wheel index first; then the Makefile's two installs, the package non-editable, auto_LiRPA identical."""
    torch, project, lirpa = image_installs(kind)
    make_project, make_lirpa = makefile_pip_installs(REPO / "Makefile")
    assert torch.requirements == (f"torch=={pinned_version('torch')}",)
    assert len(torch.options) == 1 and torch.options[0].startswith("--index-url=https://download.pytorch.org/whl/")
    assert not project.editable and project.options == make_project.options
    assert len(project.requirements) == 1 and project.project_extras, "one install of the package '.' with its extras"
    assert lirpa == make_lirpa


@pytest.mark.parametrize("kind", STEP_IMAGES)
def test_image_extras_are_the_makefiles_without_test_tools(kind: str) -> None:
    extras = expanded_extras(image_installs(kind)[1].project_extras or frozenset())
    make_extras = expanded_extras(makefile_pip_installs(REPO / "Makefile")[0].project_extras or frozenset())
    assert extras <= make_extras - {"test"}
    # KFP runs components through kfp's executor inside the image; steps log to MLflow on S3.
    assert {"kfp", "tracking", "s3"} <= extras
    if kind == "airflow":
        assert "airflow" in extras, "the airflow extra pins apache-airflow to the base image's version"


def test_cpu_images_take_torch_from_the_cpu_index() -> None:
    for kind in ("cpu", "airflow"):
        assert image_installs(kind)[0].options == ("--index-url=https://download.pytorch.org/whl/cpu",)


def test_image_tags_follow_the_versions_pyproject_pins() -> None:
    kinds = images()
    for kind in STEP_IMAGES:
        assert kinds[kind].tag == PYPROJECT["project"]["version"], kind
    assert kinds["mlflow"].tag == pinned_version("mlflow")
    assert kinds["airflow-base"].tag.startswith(f"{pinned_version('apache-airflow')}-python")
    python = kinds["python-base"].tag.split("-")[0]
    assert kinds["airflow-base"].tag.endswith(f"python{'.'.join(python.split('.')[:2])}")
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split(".")[:2])) >= tuple(map(int, minimum.split(".")))


def test_the_mlflow_server_image_runs_the_mlflow_the_package_pins() -> None:
    (install,) = image_installs("mlflow")
    assert f"mlflow=={pinned_version('mlflow')}" in install.requirements
    assert all("==" in requirement for requirement in install.requirements), "every server package is pinned"
    assert {requirement.split("==")[0] for requirement in install.requirements} >= {"mlflow", "psycopg2-binary", "boto3"}


def test_pip_line_parser_reads_make_and_shell_forms() -> None:
    (install,) = pip_installs("$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,test]'".replace("$(PY)", "python"))
    assert install.editable and install.project_extras == {"all", "test"} and install.options == ()
    first, second = pip_installs("python -m pip install --index-url https://x/cpu torch==2.13.0 && pip install --no-deps a==1")
    assert first.options == ("--index-url=https://x/cpu",) and second.options == ("--no-deps",)
