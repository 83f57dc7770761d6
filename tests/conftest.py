"""Shared fixtures: an isolated attribute cache, and one small end-to-end audit run reused by tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SMALL_CONFIG = Path(__file__).parent / "cli" / "small.yaml"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA device: skipped where torch has none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Attribute measurements are cached per session, never in the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUDITAI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny nets: one thread is as fast, and immune to oversubscribed CPUs (auto_LiRPA builds slow down 100x there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`auditai run tests/cli/small.yaml` once per session; tests copy or read its outputs."""
    from auditai_ops.cli.main import main

    out = tmp_path_factory.mktemp("small_run")
    assert main(["run", str(SMALL_CONFIG), "--out", str(out)]) == 0
    return out


@pytest.fixture
def small_run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A private copy of the small run that a test may modify."""
    target = tmp_path / "run"
    shutil.copytree(small_run, target)
    return target


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow sqlite store, copied by tests instead of migrating a new one each time (seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary AIRFLOW_HOME with a sqlite metadata DB made by `airflow db migrate` (Airflow runs in subprocesses; see tests/airflow_harness.py)."""
    import importlib.util

    if importlib.util.find_spec("airflow") is None:
        pytest.skip("the airflow extra is not installed")
    from airflow_harness import migrate

    home = tmp_path_factory.mktemp("airflow_home")
    migrate(home)
    return home
