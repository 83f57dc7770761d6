"""The audit as a markdown table, for MLflow descriptions (a run's note, a registered model version's description).

Built from a `summary.json` payload: one row per unit test with its range, certified accuracy,
threshold and verdict. MLflow renders descriptions as markdown, so cells are escaped ('|',
newlines) and a unit test that could not run shows its error instead of figures.
"""

from __future__ import annotations

import math
from typing import Any

HEADER = ("unit test", "range", "certified", "threshold", "verdict")
LOWER_BOUND = "lower_confidence_bound"
MAX_ERROR_LENGTH = 300


def _cell(text: object) -> str:
    """One table cell: whitespace (newlines included) collapsed, backslashes and '|' escaped."""
    flat = " ".join(str(text).split())
    return flat.replace("\\", "\\\\").replace("|", "\\|") or "-"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _span_text(direction: str, span: Any) -> str:
    """'slant ±5 degrees' for a range symmetric about 0, else 'slant [-5, 15] degrees'."""
    if not isinstance(span, dict):
        return f"{direction} ?".strip()
    low, high = _number(span.get("low")), _number(span.get("high"))
    units = "latent" if span.get("units") == "latent" else str(span.get("direction_units") or span.get("units") or "")
    if low is None or high is None:
        bounds = "?"
    elif low == -high and high > 0:
        bounds = f"±{high:g}"
    else:
        bounds = f"[{low:g}, {high:g}]"
    return " ".join(part for part in (direction, bounds, units) if part)


def range_markdown(test: dict[str, Any]) -> str:
    """The unit test's range per direction, e.g. 'slant ±5 degrees' or 'slant [-5, 15] degrees × thickness ±0.5 pixels'."""
    ranges = test.get("ranges") if isinstance(test.get("ranges"), list) else []
    directions = [name.strip() for name in str(test.get("direction") or "").split(" x ")]
    if len(directions) != len(ranges):  # the names cannot be paired with the spans: name the direction once
        directions = [str(test.get("direction") or "")] + [""] * max(len(ranges) - 1, 0)
    return " × ".join(_span_text(name, span) for name, span in zip(directions, ranges, strict=False)) or "-"


def _certified_text(test: dict[str, Any]) -> str:
    estimate = _number(test.get("certified_accuracy"))
    if estimate is None:
        return "-"
    text = f"{estimate:.3f}"
    lower = _number(test.get("certified_accuracy_lower_bound"))
    if test.get("threshold_on") == LOWER_BOUND and lower is not None:
        text += f" (lower bound {lower:.3f})"
    return text


def _threshold_text(test: dict[str, Any]) -> str:
    threshold = _number(test.get("threshold"))
    if threshold is None:
        return "-"
    return f"≥ {threshold:g}" + (" on the lower bound" if test.get("threshold_on") == LOWER_BOUND else "")


def _verdict_text(test: dict[str, Any]) -> str:
    verdict = str(test.get("verdict") or "missing")
    if verdict == "error":
        message = " ".join(str(test.get("error") or "no message").split())
        if len(message) > MAX_ERROR_LENGTH:
            message = message[: MAX_ERROR_LENGTH - 3] + "..."
        return f"**error**: {message}"
    return "**FAIL**" if verdict == "fail" else verdict


def audit_table_markdown(summary: dict[str, Any], max_length: int | None = None) -> str:
    """A markdown table of the audit in a `summary.json` payload: unit test, range, certified accuracy, threshold, verdict.

    With `max_length`, rows that do not fit are left out and a line under the table says how many.
    """
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    tests = summary.get("unit_tests") if isinstance(summary.get("unit_tests"), list) else []
    rows = []
    for test in tests:
        if not isinstance(test, dict):
            continue
        errored = test.get("verdict") == "error"
        cells = (
            test.get("name") or "?",
            range_markdown(test),
            "-" if errored else _certified_text(test),
            _threshold_text(test),
            _verdict_text(test),
        )
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return _fit(lines, rows, max_length)


def _fit(lines: list[str], rows: list[str], max_length: int | None) -> str:
    """The header lines and as many rows as fit in `max_length` characters, then a line naming how many were left out."""
    kept = list(rows)
    while True:
        left_out = len(rows) - len(kept)
        tail = [f"\n_{left_out} more unit test{'s' if left_out != 1 else ''}: see summary.json_"] if left_out else []
        text = "\n".join(lines + kept + tail)
        if max_length is None or len(text) <= max_length or not kept:
            return text
        kept.pop()


def audit_note_markdown(summary: dict[str, Any], max_length: int | None = None) -> str:
    """A run description: the overall verdict, how many unit tests pass, then the table (within `max_length` characters)."""
    tests = [test for test in summary.get("unit_tests") or [] if isinstance(test, dict)]
    passed = sum(test.get("verdict") == "pass" for test in tests)
    verdict = str(summary.get("verdict") or "missing")
    headline = f"**Audit verdict: {_cell(verdict)}**: {passed} of {len(tests)} unit tests pass.\n\n"
    return headline + audit_table_markdown(summary, None if max_length is None else max_length - len(headline))
