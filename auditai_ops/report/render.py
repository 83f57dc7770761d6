"""Render an audit summary (the `summary.json` payload) as JUnit XML and as a console table.

Rendering is kept apart from verification: both functions read only the summary payload.
In JUnit, a failed spec is a <failure>, a unit test that could not run is an <error>, and
the figures go into <properties>. Of the falsified samples, `misclassified_at_t0` counts those
the model already gets wrong at t = 0 (a clean error, not caused by the direction) and
`flipped` those it gets right at t = 0 and flips along the direction; rows written before
these counts existed (or error rows) show "-". A unit test whose branch and bound a test-wide
budget stopped (`budget_exhausted`) gets a line under the table: a warning for the wall-clock
budget, whose verdict depends on the machine's speed, a note for the split budget.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

FIGURES = ("certified_accuracy", "certified_accuracy_lower_bound", "falsified_fraction", "unknown_fraction", "clean_accuracy", "threshold", "samples")
COUNTS = ("misclassified_at_t0", "flipped")
"""Per unit test: falsified samples the model gets wrong at t = 0 already, and samples flipped along the direction."""


def count_text(value: Any) -> str:
    """An integer count as written, "-" when the row lacks it (older summaries, error rows)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _below(value: float, bound: float) -> str:
    """`value` with 3 decimals, or as many more as it takes to print a number below `bound` (0.98999 under 0.99 is not "0.990")."""
    for digits in range(3, 10):
        text = f"{value:.{digits}f}"
        if float(text) < bound:
            break
    return text.rstrip("0").rstrip(".") if "." in text else text


def unreachable_threshold_notes(summary: dict[str, Any]) -> list[str]:
    """One note per unit test whose threshold is above its clean accuracy: no certified accuracy (or lower bound on it) can reach it.

    Only for `true_label` specs: a `clean_prediction` spec's targets are the predictions at t = 0, which every sample meets there.
    """
    notes = []
    for test in summary["unit_tests"]:
        threshold, clean = test.get("threshold"), test.get("clean_accuracy")
        if test.get("property", "true_label") == "true_label" and _is_number(threshold) and _is_number(clean) and threshold > clean:
            notes.append(f"note: {test['name']}: threshold {threshold:g} is above the clean accuracy {_below(clean, threshold)}: no model can reach it on these samples")
    return notes


def budget_notes(summary: dict[str, Any]) -> list[str]:
    """One line per unit test that a test-wide budget stopped: 'time' (the verdict depends on machine speed) or 'pieces' (deterministic)."""
    notes = []
    for test in summary["unit_tests"]:
        stopped = test.get("stopped_by_budget")
        samples = f"{stopped} samples" if isinstance(stopped, int) and not isinstance(stopped, bool) else "samples"
        if test.get("budget_exhausted") == "time":
            notes.append(
                f"warning: {test['name']}: the wall-clock budget (verify.seconds_per_test) stopped {samples} undecided: "
                "this verdict depends on the machine's speed and load; leave seconds_per_test unset for one that does not"
            )
        elif test.get("budget_exhausted") == "pieces":
            notes.append(f"note: {test['name']}: the total split budget (verify.max_splits_per_test) stopped {samples}; raise it to decide them")
    return notes


def range_text(test: dict[str, Any]) -> str:
    """Ranges as written, e.g. "[-5, 5] degrees" or "[-5, 5] degrees x [-0.5, 0.5] pixels"."""
    texts = []
    for span in test["ranges"]:
        units = "latent" if span["units"] == "latent" else span["direction_units"]
        texts.append(f"[{span['low']:g}, {span['high']:g}] {units}")
    return " x ".join(texts)


def junit_xml(summary: dict[str, Any]) -> str:
    """One <testcase> per unit test, in a single <testsuite name="auditai">."""
    tests = summary["unit_tests"]
    suite = ET.Element(
        "testsuite",
        name="auditai",
        tests=str(len(tests)),
        failures=str(sum(t["verdict"] == "fail" for t in tests)),
        errors=str(sum(t["verdict"] == "error" for t in tests)),
        time=f"{sum(t.get('seconds') or 0.0 for t in tests):.3f}",
        timestamp=summary["created_at"],
    )
    for test in tests:
        case = ET.SubElement(suite, "testcase", classname=f"auditai.{test['direction']}", name=test["name"], time=f"{test.get('seconds') or 0.0:.3f}")
        properties = ET.SubElement(case, "properties")
        for key in FIGURES:
            if test.get(key) is not None:
                ET.SubElement(properties, "property", name=key, value=f"{test[key]:g}" if isinstance(test[key], float) else str(test[key]))
        for key in COUNTS:
            ET.SubElement(properties, "property", name=key, value=count_text(test.get(key)))
        ET.SubElement(properties, "property", name="range", value=range_text(test))
        if test.get("budget_exhausted"):
            ET.SubElement(properties, "property", name="budget_exhausted", value=str(test["budget_exhausted"]))
        if test.get("certificate"):
            ET.SubElement(properties, "property", name="certificate", value=test["certificate"])
        if test["verdict"] == "fail":
            measured = "certified accuracy" if test["threshold_on"] == "estimate" else "certified accuracy lower confidence bound"
            value = test["certified_accuracy"] if test["threshold_on"] == "estimate" else test["certified_accuracy_lower_bound"]
            message = f"{measured} {value:.4f} < threshold {test['threshold']:g}"
            failure = ET.SubElement(case, "failure", message=message, type="SpecificationFailed")
            failure.text = f"{message}; falsified {test['falsified_fraction']:.4f}, unknown {test['unknown_fraction']:.4f} over {test['samples']} samples"
        elif test["verdict"] == "error":
            error = ET.SubElement(case, "error", message=test["error"], type="AuditError")
            error.text = test["error"]
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def console_table(summary: dict[str, Any]) -> str:
    """A fixed-width table of the unit tests and the overall verdict, with a note under it for each threshold above its clean accuracy and each exhausted budget."""
    header = ("unit test", "direction", "range", "certified", "falsified", "misclassified at t=0", "flipped", "unknown", "clean", "threshold", "time", "verdict")
    rows = [header]
    for test in summary["unit_tests"]:
        counts = tuple(count_text(test.get(key)) for key in COUNTS)
        if test["verdict"] == "error":
            rows.append((test["name"], test["direction"], range_text(test), "-", "-", *counts, "-", "-", f"{test['threshold']:.2f}", "-", "ERROR"))
            continue
        rows.append(
            (
                test["name"],
                test["direction"],
                range_text(test),
                f"{test['certified_accuracy']:.3f}",
                f"{test['falsified_fraction']:.3f}",
                *counts,
                f"{test['unknown_fraction']:.3f}",
                f"{test['clean_accuracy']:.3f}",
                f"{test['threshold']:.2f}",
                f"{test['seconds']:.1f}s",
                test["verdict"].upper(),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = unreachable_threshold_notes(summary) + budget_notes(summary)
    if notes:
        lines += ["", *notes]
    lines.append(f"\naudit verdict: {summary['verdict'].upper()} ({sum(t['verdict'] == 'pass' for t in summary['unit_tests'])}/{len(summary['unit_tests'])} unit tests pass)")
    return "\n".join(lines)
