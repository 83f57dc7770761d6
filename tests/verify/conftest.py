"""Fixtures for the verification tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These nets are tiny: one thread is as fast, and immune to oversubscribed CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _auto_lirpa_imported() -> None:
    """auto_LiRPA raises the recursion limit when first imported; do it before hypothesis watches the limit."""
    from auditai_ops.verify.lirpa_compat import import_auto_lirpa

    import_auto_lirpa()
