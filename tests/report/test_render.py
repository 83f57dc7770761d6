"""Console table and JUnit XML from a summary payload: clean errors apart from flips, unreachable thresholds."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from auditai_ops.report.render import console_table, junit_xml


def _row(name: str, verdict: str = "fail", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "direction": "slant",
        "ranges": [{"low": -5.0, "high": 5.0, "units": "latent", "direction_units": "degrees"}],
        "threshold": 0.9,
        "threshold_on": "estimate",
        "verdict": verdict,
        "seconds": 1.0,
    }
    if verdict == "error":
        return {**row, "error": "boom", "samples": 0, **fields}
    figures = {"samples": 500, "certified_accuracy": 0.8, "certified_accuracy_lower_bound": 0.77, "falsified_fraction": 0.2, "unknown_fraction": 0.0, "clean_accuracy": 0.95}
    return {**row, **figures, "error": None, "certificate": f"certificates/{name}.json", **fields}


def _summary(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": "fail", "created_at": "2024-01-01T00:00:00+00:00", "unit_tests": list(rows)}


def _cells(table: str, name: str) -> list[str]:
    header, _, *lines = table.splitlines()
    starts = [header.index(title) for title in ("unit test", "misclassified at t=0", "flipped", "unknown")]
    line = next(line for line in lines if line.startswith(name + " "))
    return [line[starts[1] : starts[2]].strip(), line[starts[2] : starts[3]].strip()]


def test_console_table_shows_clean_errors_and_flips_or_a_dash() -> None:
    table = console_table(_summary(_row("counted", misclassified_at_t0=37, flipped=63), _row("older"), _row("broken", "error")))
    assert "misclassified at t=0" in table.splitlines()[0] and "flipped" in table.splitlines()[0]
    assert _cells(table, "counted") == ["37", "63"]
    assert _cells(table, "older") == ["-", "-"]
    assert _cells(table, "broken") == ["-", "-"]


def test_console_table_notes_each_threshold_above_the_clean_accuracy() -> None:
    table = console_table(
        _summary(
            _row("reachable"),  # threshold 0.9 <= clean 0.95
            _row("strict", threshold=0.99, clean_accuracy=0.978),
            _row("bound", threshold=0.99, clean_accuracy=0.978, threshold_on="lower_confidence_bound"),
            _row("close", threshold=0.99, clean_accuracy=0.98999),
            _row("unchanged", threshold=0.99, clean_accuracy=0.8, property="clean_prediction"),  # its targets are the predictions at t = 0
            _row("broken", "error", threshold=1.0),
        )
    )
    notes = [line for line in table.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: strict: threshold 0.99 is above the clean accuracy 0.978: no model can reach it on these samples",
        "note: bound: threshold 0.99 is above the clean accuracy 0.978: no model can reach it on these samples",
        "note: close: threshold 0.99 is above the clean accuracy 0.98999: no model can reach it on these samples",
    ]
    lines = table.splitlines()
    assert lines.index(notes[0]) > max(i for i, line in enumerate(lines) if line.startswith("broken "))  # under the table
    assert "note:" not in console_table(_summary(_row("reachable"), _row("equal", threshold=0.95)))


def test_junit_properties_carry_both_counts_or_a_dash() -> None:
    suite = ET.fromstring(junit_xml(_summary(_row("counted", misclassified_at_t0=37, flipped=0), _row("older"), _row("broken", "error"))).split("\n", 1)[1])
    properties = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")} for case in suite.iter("testcase")}
    assert (properties["counted"]["misclassified_at_t0"], properties["counted"]["flipped"]) == ("37", "0")
    assert (properties["older"]["misclassified_at_t0"], properties["older"]["flipped"]) == ("-", "-")
    assert (properties["broken"]["misclassified_at_t0"], properties["broken"]["flipped"]) == ("-", "-")
