"""The HTML report: one self-contained file built from the audit folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from auditai_ops.audit_files import folder_audit_digest
from auditai_ops.errors import AuditInputError
from auditai_ops.report.html import write_html_report
from auditai_ops.report.svg import Series, line_plot_svg


def test_report_is_self_contained_and_complete(small_run_copy: Path) -> None:
    (small_run_copy / "report.html").unlink(missing_ok=True)
    path = write_html_report(small_run_copy)
    assert path == small_run_copy / "report.html"
    html = path.read_text()
    summary = json.loads((small_run_copy / "summary.json").read_text())

    # nothing is fetched: no external scripts, stylesheets or images
    assert not re.search(r"<(script|link)\b", html)
    assert not re.search(r'src="(?!data:image/png;base64,)', html)
    # the unit-test table, with each certificate's content hash
    for test in summary["unit_tests"]:
        assert f"<td>{test['name']}</td>" in html
        assert test["certificate_sha256"] in html
    # one certified-accuracy curve per direction, as inline SVG with one marker per curve point
    assert html.count("<svg") == len({t["direction"] for t in summary["unit_tests"]})
    assert html.count("<circle") == sum(len(t["range_curve"]) for t in summary["unit_tests"])
    # traversal strips of every direction, the reconstruction grid, counterexamples (the small run falsifies some samples)
    directions = json.loads((small_run_copy / "directions" / "directions.json").read_text())["directions"]
    assert html.count('alt="traversal ') == len(directions)
    assert 'alt="reconstructions"' in html
    assert 'alt="counterexample ' in html
    for name, entry in directions.items():
        assert f"<td>{name}</td>" in html and entry["kind"] in html
    # every path the run wrote is inside the folder: nothing refused, nothing missing
    assert 'class="note"' not in html and "refused" not in html.split("</style>")[1]
    # the link to the model version that the gate registered for this audit (gate.json names this audit's digest)
    gate = json.loads((small_run_copy / "gate.json").read_text())
    assert gate["audit_digest"] == folder_audit_digest(small_run_copy)
    assert f"{gate['model_name']} version {gate['version']}" in html and "certified" in html


def test_report_without_the_gate_says_so_and_missing_files_are_named(small_run_copy: Path) -> None:
    (small_run_copy / "gate.json").unlink()
    (small_run_copy / "directions" / "directions.json").unlink()
    html = write_html_report(small_run_copy).read_text()
    assert "The gate has not run" in html
    assert "directions.json not found" in html
    (small_run_copy / "summary.json").unlink()
    with pytest.raises(AuditInputError, match="summary.json' not found"):
        write_html_report(small_run_copy)


def test_svg_plot_places_points_on_the_axes() -> None:
    svg = line_plot_svg([Series("a <b>", (0.5, 1.0), (1.0, 0.0))], "shift", "certified accuracy", threshold=0.5, width=200, height=150)
    # plot area: x from 56 to 184 (x_max = 1.0), y from 14 (1.0) to 104 (0.0)
    assert '<circle cx="120.0" cy="14.0"' in svg and '<circle cx="184.0" cy="104.0"' in svg
    assert "a &lt;b&gt;" in svg and "<b>" not in svg
    assert "threshold 0.5" in svg


def _row_cells(html: str, name: str) -> list[str]:
    row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", html)
    assert row is not None
    return re.findall(r"<td[^>]*>(.*?)</td>", "<td>" + name + "</td>" + row.group(1))


def test_report_separates_clean_errors_from_flips(audit_folder: Path) -> None:
    html = write_html_report(audit_folder).read_text()
    header = re.findall(r"<th>(.*?)</th>", html.split("</tr>")[0])
    at_t0, flipped = header.index("misclassified at t = 0"), header.index("flipped")
    slant, thick = _row_cells(html, "slant"), _row_cells(html, "thick")
    assert (slant[at_t0], slant[flipped]) == ("1", "2")
    assert (thick[at_t0], thick[flipped]) == ("-", "-")  # an older row without the counts
    captions = re.findall(r"<figcaption>(mnist:test:\d+: .*?)</figcaption>", html)
    assert "mnist:test:0: target 1, predicted 7 at t = 1.5: misclassified at t = 0 (not caused by the direction)" in captions
    assert "mnist:test:1: target 1, predicted 7 at t = 1.5: flipped along the direction" in captions
    assert "mnist:test:1: target 1, predicted 7 at t = 1.5" in captions  # thick's sample has no reason: no claim either way
    assert sum("not caused by the direction" in caption for caption in captions) == 1
    assert "slant: 3 counterexample(s) (1 misclassified at t = 0, not caused by the direction), 3 shown" in html
