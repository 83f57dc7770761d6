"""Progress bars on stderr, shown only when stderr is a terminal (logs stay clean in CI and pods)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress(**kwargs: Any) -> tqdm:
    """A tqdm bar that disables itself when stderr is not a TTY."""
    return tqdm(disable=None, leave=False, dynamic_ncols=True, **kwargs)
