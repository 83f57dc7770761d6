"""Fixtures of the fine-tuning tests: the synthetic audit of finetune_synthetic.py, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_synthetic import write_synthetic_audit


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny nets: one torch thread."""


@pytest.fixture(scope="session")
def synthetic_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic audit folder (latents, directions, VAE, head); copy it to modify it."""
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_audit(out)
    return out
