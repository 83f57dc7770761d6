"""The audit as a markdown table for MLflow descriptions, from a hand-written summary.json payload."""

from __future__ import annotations

import re
from typing import Any

from auditai_ops.tracking.description import audit_note_markdown, audit_table_markdown, range_markdown


def _span(low: float, high: float, direction_units: str, units: str = "attribute") -> dict[str, Any]:
    return {"low": low, "high": high, "units": units, "direction_units": direction_units}


SUMMARY: dict[str, Any] = {
    "verdict": "error",
    "unit_tests": [
        {
            "name": "slant_within_5deg",
            "direction": "slant",
            "ranges": [_span(-5, 5, "degrees")],
            "certified_accuracy": 0.9634,
            "certified_accuracy_lower_bound": 0.951,
            "threshold": 0.9,
            "threshold_on": "estimate",
            "verdict": "pass",
        },
        {
            "name": "slant_up_to_15deg",
            "direction": "slant",
            "ranges": [_span(-5, 15, "degrees")],
            "certified_accuracy": 0.4,
            "certified_accuracy_lower_bound": 0.38,
            "threshold": 0.9,
            "threshold_on": "estimate",
            "verdict": "fail",
        },
        {
            "name": "pca1_within_0.25",
            "direction": "pca1",
            "ranges": [_span(-0.25, 0.25, "latent", units="latent")],
            "certified_accuracy": 0.971,
            "certified_accuracy_lower_bound": 0.9612,
            "threshold": 0.95,
            "threshold_on": "lower_confidence_bound",
            "verdict": "pass",
        },
        {
            "name": "slant|thickness",
            "direction": "slant x thickness",
            "ranges": [_span(-5, 5, "degrees"), _span(0, 0.5, "pixels")],
            "threshold": 0.9,
            "threshold_on": "estimate",
            "verdict": "error",
            "error": "directions.json: no direction 'thickness'\n| shown as | in a cell",
            "samples": 0,
        },
    ],
}


def _cells(row: str) -> list[str]:
    """A markdown table row split at its unescaped '|'."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_audit_table_has_one_row_per_unit_test_with_range_certified_threshold_verdict() -> None:
    table = audit_table_markdown(SUMMARY)
    assert table.splitlines() == [
        "| unit test | range | certified | threshold | verdict |",
        "|---|---|---|---|---|",
        "| slant_within_5deg | slant ±5 degrees | 0.963 | ≥ 0.9 | pass |",
        "| slant_up_to_15deg | slant [-5, 15] degrees | 0.400 | ≥ 0.9 | **FAIL** |",
        "| pca1_within_0.25 | pca1 ±0.25 latent | 0.971 (lower bound 0.961) | ≥ 0.95 on the lower bound | pass |",
        "| slant\\|thickness | slant ±5 degrees × thickness [0, 0.5] pixels | - | ≥ 0.9 | **error**: directions.json: no direction 'thickness' \\| shown as \\| in a cell |",
    ]
    assert all(len(_cells(row)) == 5 for row in table.splitlines()), "every row has exactly five cells: '|' in a name or message is escaped"


def test_audit_note_heads_the_table_with_the_verdict_and_fits_a_length_limit() -> None:
    note = audit_note_markdown(SUMMARY)
    assert note.startswith("**Audit verdict: error**: 2 of 4 unit tests pass.\n\n| unit test |")
    assert note.endswith(audit_table_markdown(SUMMARY))
    short = audit_note_markdown(SUMMARY, max_length=400)
    assert len(short) <= 400 and "slant_within_5deg" in short and "slant|thickness" not in short
    assert re.search(r"_\d more unit tests?: see summary.json_$", short)


def test_range_falls_back_to_the_direction_name_when_ranges_and_directions_do_not_pair() -> None:
    test = {"direction": "slant", "ranges": [_span(-1, 1, "degrees"), _span(-2, 2, "pixels")]}
    assert range_markdown(test) == "slant ±1 degrees × ±2 pixels"
    assert range_markdown({"direction": "slant", "ranges": []}) == "-"


def test_an_empty_summary_is_a_header_only_table() -> None:
    assert audit_table_markdown({"unit_tests": []}) == "| unit test | range | certified | threshold | verdict |\n|---|---|---|---|---|"
