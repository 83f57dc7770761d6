"""Error types that the CLI maps to exit codes.

`AuditInputError` is bad input (config, model file, dataset, shapes, NaN): exit code 2,
printed as one line without a traceback. Anything else unexpected is also exit 2, but
keeps its traceback so that bugs stay debuggable.
"""

from __future__ import annotations


class AuditInputError(Exception):
    """Bad input that the user can fix. The message names the file or field and what was expected."""

