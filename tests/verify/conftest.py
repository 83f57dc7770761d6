"""Fixtures for the verification tests."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every verification test module runs torch on one thread."""


@pytest.fixture(scope="session", autouse=True)
def _auto_lirpa_imported() -> None:
    """auto_LiRPA raises the recursion limit when first imported; do it before hypothesis watches the limit."""
    from auditai_ops.verify.lirpa_compat import import_auto_lirpa

    import_auto_lirpa()
