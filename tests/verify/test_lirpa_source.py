"""The auto_LiRPA tests against another auto_LiRPA: a source checkout named by AUDITAI_LIRPA_SOURCE.

CI runs against 0.3 from PyPI and skips this. To check a newer release, point the variable at
its checkout (the directory holding auto_LiRPA/__init__.py), with its dependencies importable:
graphviz, which 0.6 and later import when BoundedModule is defined (`pip install graphviz`, or its
wheel unpacked into the checkout).

    AUDITAI_LIRPA_SOURCE=/path/to/auto_LiRPA .venv/bin/python -m pytest tests/verify/test_lirpa_source.py

The suites run in a fresh interpreter with the checkout first on PYTHONPATH, so it shadows the
installed distribution, which must then be what the verifier loads and records.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITES = ("tests/verify/test_lirpa_compat.py", "tests/verify/test_lirpa_training.py", "tests/verify/test_lirpa_ops.py")


@pytest.fixture(scope="module")
def source() -> Path:
    value = os.environ.get("AUDITAI_LIRPA_SOURCE")
    if not value:
        pytest.skip("AUDITAI_LIRPA_SOURCE is unset: set it to an auto_LiRPA source checkout to run the auto_LiRPA suites against it")
    path = Path(value).resolve()
    if not (path / "auto_LiRPA" / "__init__.py").is_file():
        pytest.fail(f"AUDITAI_LIRPA_SOURCE={value} holds no auto_LiRPA/__init__.py")
    return path


def source_version(source: Path) -> str:
    """The `__version__ = '...'` assigned in the checkout's auto_LiRPA/__init__.py."""
    tree = ast.parse((source / "auto_LiRPA" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError(f"{source}/auto_LiRPA/__init__.py assigns no __version__")


def run_with(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def test_the_checkout_is_loaded_and_recorded(source: Path) -> None:
    code = """
        from auditai_ops.verify.certificate import software_versions
        from auditai_ops.verify.lirpa_compat import import_auto_lirpa
        print(import_auto_lirpa().__file__)
        print(software_versions()["auto_LiRPA"])
        """
    result = run_with(source, "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    loaded_from, recorded = result.stdout.splitlines()
    assert Path(loaded_from).resolve().is_relative_to(source)
    assert recorded == source_version(source)


def test_the_auto_lirpa_suites_pass_against_the_checkout(source: Path) -> None:
    result = run_with(source, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *SUITES)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
