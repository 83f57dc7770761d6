"""The `report` step: one self-contained HTML file (inline CSS, images as data URIs, plots as SVG).

It reads only files of the audit folder: `summary.json`, the certificates, the directions'
record and traversal strips, the reconstruction grid, counterexample images, and, when the
gate has run, `gate.json` (the model version) and `tracking.json` (the MLflow run). It opens
offline and as an artifact in the MLflow UI.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_text
from auditai_ops.layout import DIRECTIONS_DIR, DIRECTIONS_JSON, GATE_FILE, LATENT_DIR, RECONSTRUCTIONS_PNG, REPORT_FILE, SUMMARY_FILE, TRACKING_FILE
from auditai_ops.report.render import range_text
from auditai_ops.report.svg import Series, line_plot_svg

COUNTEREXAMPLES_SHOWN = 6

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7b32;font-weight:600}.fail{color:#b00020;font-weight:600}.error{color:#a15c00;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff}.badge.pass{background:#0a7b32}.badge.fail{background:#b00020}
.badge.error{background:#a15c00}code{font-size:12px;background:#f6f6f6;padding:1px 3px}.grid{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:320px}img{image-rendering:pixelated}
"""


def _read_json(path: Path, required: bool = False) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise AuditInputError(f"report: '{path}' not found (run `auditai verify` first)") from None
        return None
    except json.JSONDecodeError as error:
        raise AuditInputError(f"report: '{path}' is not valid JSON ({error})") from None


def _image(path: Path, alt: str, width: int | None = None) -> str:
    """An <img> with the PNG inline as a data URI, or a note when the file is missing."""
    if not path.is_file():
        return f"<p><em>{escape(alt)}: image not found</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    size = f' width="{width}"' if width else ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}"{size}>'


def _verdict(verdict: str) -> str:
    return f'<span class="{escape(verdict)}">{escape(verdict.upper())}</span>'


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _unit_test_table(summary: dict[str, Any]) -> str:
    header = ("unit test", "direction", "range", "certified", "lower bound", "falsified", "unknown", "clean", "threshold", "verdict", "certificate (content sha256)")
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for test in summary["unit_tests"]:
        figures = [test.get(k) for k in ("certified_accuracy", "certified_accuracy_lower_bound", "falsified_fraction", "unknown_fraction", "clean_accuracy")]
        certificate = test.get("certificate")
        certificate_cell = (
            f'<a href="{escape(certificate)}">{escape(certificate)}</a><br><code>{escape(test.get("certificate_sha256") or "")}</code>'
            if certificate
            else escape(test.get("error") or "")
        )
        rows.append(
            f"<tr><td>{escape(test['name'])}</td><td>{escape(test['direction'])}</td><td>{escape(range_text(test))}</td>"
            + "".join(f'<td class="num">{_number(v)}</td>' for v in figures)
            + f'<td class="num">{test["threshold"]:g}</td><td>{_verdict(test["verdict"])}</td><td>{certificate_cell}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _curve_section(summary: dict[str, Any]) -> str:
    """Per direction (and units), certified accuracy against the largest |shift| of the range; joint tests against the fraction of their box."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for test in summary["unit_tests"]:
        if test.get("range_curve"):
            span = test["ranges"][0]
            units = "fraction of the box" if len(test["ranges"]) > 1 else ("latent units" if span["units"] == "latent" else span["direction_units"])
            groups.setdefault((test["direction"], units), []).append(test)
    if not groups:
        return "<p>No certified-accuracy curves (no unit test produced one).</p>"
    figures = []
    for (direction, units), tests in groups.items():
        series = []
        for test in tests:
            curve = test["range_curve"]
            if len(test["ranges"]) > 1:
                xs = tuple(point["fraction"] for point in curve)
            else:
                xs = tuple(max(abs(point["ranges"][0]["low"]), abs(point["ranges"][0]["high"])) for point in curve)
            series.append(Series(test["name"], xs, tuple(point["certified_accuracy"] for point in curve)))
        thresholds = {test["threshold"] for test in tests}
        threshold = thresholds.pop() if len(thresholds) == 1 else None
        plot = line_plot_svg(series, f"largest shift along {direction} ({units})" if "fraction" not in units else units, "certified accuracy", threshold)
        figures.append(f"<figure><h3>{escape(direction)}</h3>{plot}</figure>")
    note = (
        "<p>Each point is the certified accuracy on a sub-range c + s (range - c), c the point of the range nearest 0, "
        "for s = 1 (the unit test) and the fractions in <code>verify.curve_fractions</code>: proved by the same verifier, so unknown never counts as certified.</p>"
    )
    return note + '<div class="grid">' + "".join(figures) + "</div>"


def _directions_section(directions_dir: Path) -> str:
    record = _read_json(directions_dir / DIRECTIONS_JSON)
    if record is None:
        return "<p><em>directions.json not found</em></p>"
    rows = ["<table><tr><th>direction</th><th>kind</th><th>calibration</th><th>probe R2 (valid)</th><th>monotonic</th><th>disentanglement</th><th>explained variance</th></tr>"]
    strips = []
    for name, entry in record["directions"].items():
        effect = entry.get("effect", {})
        calibration = f"{entry['calibration']:.3f} {escape(entry['units'])}/latent unit" if entry.get("calibration") is not None else "-"
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{escape(entry.get('kind', ''))}</td><td>{calibration}</td>"
            f'<td class="num">{_number(entry.get("probe", {}).get("r2_valid"))}</td><td>{escape(str(effect.get("monotonic", "-")))}</td>'
            f'<td class="num">{_number(effect.get("disentanglement"))}</td><td class="num">{_number(entry.get("explained_variance_ratio"))}</td></tr>'
        )
        if entry.get("traversal_png"):
            steps = record.get("strip_steps") or []
            caption = f"{name}: t from {steps[0]:g} to {steps[-1]:g} latent units" if steps else name
            strips.append(f"<figure>{_image(directions_dir / entry['traversal_png'], f'traversal {name}', 360)}<figcaption>{escape(caption)}</figcaption></figure>")
    rows.append("</table>")
    return "\n".join(rows) + '<h3>Traversal strips</h3><div class="grid">' + "".join(strips) + "</div>"


def _counterexamples_section(out_dir: Path, certificates: dict[str, dict[str, Any]]) -> str:
    blocks = []
    for name, certificate in certificates.items():
        found = [s for s in certificate["samples"] if s.get("counterexample") and s["counterexample"].get("image")]
        if not found:
            continue
        figures = []
        for sample in found[:COUNTEREXAMPLES_SHOWN]:
            cex = sample["counterexample"]
            caption = f"{sample['id']}: target {sample['target']}, predicted {cex['predicted_class']} at t = {', '.join(f'{t:.3g}' for t in cex['t'])}"
            image = _image(out_dir / cex["image"], f"counterexample {sample['id']}", 112)
            figures.append(f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>")
        heading = f"{escape(name)}: {len(found)} counterexample(s), {min(len(found), COUNTEREXAMPLES_SHOWN)} shown (left: original, right: counterexample)"
        blocks.append(f'<h3>{heading}</h3><div class="grid">{"".join(figures)}</div>')
    return "".join(blocks) or "<p>No counterexamples: no sample was falsified.</p>"


def _provenance_section(summary: dict[str, Any], certificates: dict[str, dict[str, Any]], gate: dict[str, Any] | None, tracking: dict[str, Any] | None) -> str:
    """Links between the certificates, the weights they cover, the MLflow run and the model version."""
    parts = ["<table><tr><th>weights</th><th>sha256</th></tr>"]
    parts += [f"<tr><td>{escape(key)}</td><td><code>{escape(value)}</code></td></tr>" for key, value in sorted(summary.get("models", {}).items())]
    parts.append("</table><table><tr><th>certificate</th><th>content sha256</th><th>signed</th><th>verdict</th></tr>")
    for name, certificate in certificates.items():
        signed = "yes" if certificate.get("signature") else "no"
        digest = escape(certificate.get("content_sha256", ""))
        parts.append(f"<tr><td>{escape(name)}</td><td><code>{digest}</code></td><td>{signed}</td><td>{_verdict(certificate.get('verdict', '?'))}</td></tr>")
    parts.append("</table>")
    if tracking:
        run, experiment, uri = (escape(str(tracking.get(key, ""))) for key in ("parent_run_id", "experiment_id", "tracking_uri"))
        parts.append(f"<p>MLflow run <code>{run}</code> in experiment <code>{experiment}</code> at <code>{uri}</code></p>")
    if gate:
        version = f"{gate.get('model_name')} version {gate.get('version')}" if gate.get("version") else f"{gate.get('model_name')} (not registered)"
        alias_name = escape(gate["alias"])
        alias = f"; alias <b>{alias_name}</b> -> version {escape(str(gate.get('alias_version')))}" if gate.get("promoted") else f" (alias {alias_name} not set)"
        decision, digest = _verdict(gate.get("decision", "error").lower()), escape(gate.get("certificates_digest") or "")
        parts.append(f"<p>Model version: <b>{escape(version)}</b>{alias}; gate decision {decision}; certificates digest <code>{digest}</code></p>")
        if gate.get("model_version_url"):
            parts.append(f'<p><a href="{escape(gate["model_version_url"])}">open the model version</a></p>')
        parts.append("<ul>" + "".join(f"<li>{escape(reason)}</li>" for reason in gate.get("reasons", [])) + "</ul>")
    else:
        parts.append("<p>The gate has not run: no model version is linked yet.</p>")
    return "".join(parts)


def write_html_report(out_dir: Path, directions_dir: Path | None = None) -> Path:
    """Render `<out_dir>/report.html` from the audit folder's files; return its path."""
    out_dir = Path(out_dir)
    summary = _read_json(out_dir / SUMMARY_FILE, required=True)
    assert summary is not None
    certificates: dict[str, dict[str, Any]] = {}
    for test in summary["unit_tests"]:
        if test.get("certificate"):
            certificate = _read_json(out_dir / test["certificate"])
            if certificate is not None:
                certificates[test["name"]] = certificate
    gate, tracking = _read_json(out_dir / GATE_FILE), _read_json(out_dir / TRACKING_FILE)
    verdict = summary["verdict"]
    passed = sum(t["verdict"] == "pass" for t in summary["unit_tests"])
    body = [
        f'<h1>AuditAI report <span class="badge {escape(verdict)}">{escape(verdict.upper())}</span></h1>',
        f"<p>{passed}/{len(summary['unit_tests'])} unit tests pass. Audit of {escape(json.dumps(summary.get('model', {})))}, created {escape(summary.get('created_at', ''))}; "
        f"report rendered {datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
        "<h2>Unit tests</h2>",
        _unit_test_table(summary),
        "<h2>Certified accuracy against range</h2>",
        _curve_section(summary),
        "<h2>Directions: quality evidence and traversals</h2>",
        _directions_section(Path(directions_dir) if directions_dir else out_dir / DIRECTIONS_DIR),
        "<h3>Generator reconstructions (originals above, reconstructions below)</h3>",
        _image(out_dir / LATENT_DIR / RECONSTRUCTIONS_PNG, "reconstructions"),
        "<h2>Counterexamples</h2>",
        _counterexamples_section(out_dir, certificates),
        "<h2>Certificates, weights and model version</h2>",
        _provenance_section(summary, certificates, gate, tracking),
    ]
    html = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>AuditAI report: {escape(verdict)}</title><style>{_CSS}</style></head><body>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = out_dir / REPORT_FILE
    write_text(path, html)
    return path
