"""The `report` step: one self-contained HTML file (inline CSS, images as data URIs, plots as SVG).

It reads only files of the audit folder: `summary.json`, the certificates, the directions'
record and traversal strips, the reconstruction grid, counterexample images, and, when the
gate has run, `gate.json` (the model version) and `tracking.json` (the MLflow run). It opens
offline and as an artifact in the MLflow UI.

Anyone may edit the folder, so its files are untrusted input: every path read from a file (a
summary row's certificate, a certificate's counterexample image, a traversal strip) must stay
inside the folder and name the kind of file it claims (`auditai_ops.audit_files.contained_path`);
a refused path is a visible note, never the file's bytes. The gate's decision is shown only when
`gate.json` records the audit digest of the summary and certificates in front of it.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from auditai_ops.audit_files import JSON_SUFFIX, PNG_SUFFIX, contained_path, folder_audit_digest, read_summary
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_text
from auditai_ops.layout import DIRECTIONS_DIR, DIRECTIONS_JSON, GATE_FILE, LATENT_DIR, RECONSTRUCTIONS_PNG, REPORT_FILE, SUMMARY_FILE, TRACKING_FILE
from auditai_ops.report.render import COUNTS, count_text, range_text
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
.note{color:#a15c00}.refusals{border:1px solid #a15c00;padding:4px 12px;background:#fff7ec}
"""


class _Notes:
    """Reads the files of an audit folder as untrusted input: every path through `contained_path`, every refusal a visible note.

    A refused or unreadable file never aborts the report; `refused` lists the refusals for the top of the report.
    """

    def __init__(self) -> None:
        self.refused: list[str] = []

    @staticmethod
    def note(text: str) -> str:
        return f'<p class="note"><em>{escape(text)}</em></p>'

    def path(self, root: Path, relative: object, field: str, where: str, suffix: str) -> tuple[Path | None, str]:
        """(the contained file, "") or (None, a note naming `where`, `field` and why)."""
        try:
            return contained_path(root, relative, field, suffix), ""
        except AuditInputError as error:
            prefix = f"{where}: " if where else ""
            if _absent(root, relative):
                return None, self.note(f"{prefix}{field}: '{relative}' not found")
            text = f"{prefix}{field} refused: {str(error).removeprefix(f'{field}: ')}"
            self.refused.append(text)
            return None, self.note(text)

    def fixed_json(self, root: Path, relative: str, what: str) -> tuple[dict[str, Any] | None, str]:
        """An optional JSON file at a fixed place: (None, "") when absent, (None, a note) when refused or not a JSON object."""
        if _absent(root, relative):
            return None, ""
        path, note = self.path(root, relative, what, "", JSON_SUFFIX)
        return (None, note) if path is None else self.json(path, what)

    def json(self, path: Path, what: str) -> tuple[dict[str, Any] | None, str]:
        try:
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return None, self.note(f"{what}: not readable as JSON ({error})")
        if not isinstance(payload, dict):
            return None, self.note(f"{what}: expected a JSON object")
        return payload, ""

    def png(self, root: Path, relative: object, field: str, where: str, alt: str, width: int | None = None) -> str:
        """An <img> with the contained PNG inline as a data URI, or the note saying why not."""
        path, note = self.path(root, relative, field, where, PNG_SUFFIX)
        if path is None:
            return note
        data = base64.b64encode(path.read_bytes()).decode()
        size = f' width="{width}"' if width else ""
        return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}"{size}>'


def _absent(root: Path, relative: object) -> bool:
    """Whether `relative` is a well-formed path inside `root` that names nothing (not even a dangling link)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        return False
    parts = PurePosixPath(relative)
    return not parts.is_absolute() and ".." not in parts.parts and not os.path.lexists(Path(root) / relative)


def _link(relative: str) -> str:
    """A relative href to a contained file: percent-encoded after './', so that no file name reads as a URL scheme (javascript:)."""
    return "./" + quote(PurePosixPath(relative).as_posix())


def _web_url(value: object) -> str | None:
    """`value` when it is an http(s) URL, else None (an edited gate.json must not plant a javascript: link)."""
    return value if isinstance(value, str) and urlsplit(value).scheme.lower() in ("http", "https") else None


def _text(value: Any) -> str:
    return escape(value if isinstance(value, str) else json.dumps(value))


def _verdict(verdict: Any) -> str:
    verdict = str(verdict)
    return f'<span class="{escape(verdict)}">{escape(verdict.upper())}</span>'


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _unit_test_table(summary: dict[str, Any], certificate_cells: dict[int, str]) -> str:
    """One row per unit test; `certificate_cells` holds the certificate cell of each row that names a certificate (a link, or the note refusing it)."""
    header = (
        "unit test", "direction", "range", "certified", "lower bound", "falsified", "misclassified at t = 0", "flipped",
        "unknown", "clean", "threshold", "verdict", "certificate (content sha256)",
    )  # fmt: skip
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for index, test in enumerate(summary["unit_tests"]):
        figures = [_number(test.get(k)) for k in ("certified_accuracy", "certified_accuracy_lower_bound", "falsified_fraction")]
        figures += [count_text(test.get(k)) for k in COUNTS]
        figures += [_number(test.get(k)) for k in ("unknown_fraction", "clean_accuracy")]
        threshold = test.get("threshold")
        figures.append(f"{threshold:g}" if isinstance(threshold, int | float) and not isinstance(threshold, bool) else "-")
        certificate_cell = certificate_cells.get(index, escape(str(test.get("error") or "")))
        rows.append(
            f"<tr><td>{_text(test['name'])}</td><td>{_text(test['direction'])}</td><td>{escape(range_text(test))}</td>"
            + "".join(f'<td class="num">{v}</td>' for v in figures)
            + f"<td>{_verdict(test['verdict'])}</td><td>{certificate_cell}</td></tr>"
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


def _directions_section(notes: _Notes, root: Path, prefix: str) -> str:
    """The directions' record `<root>/<prefix>directions.json` and its traversal strips (paths relative to the record's folder, kept inside `root`)."""
    record, note = notes.fixed_json(root, prefix + DIRECTIONS_JSON, DIRECTIONS_JSON)
    if record is None:
        return note or f"<p><em>{DIRECTIONS_JSON} not found</em></p>"
    directions = record.get("directions")
    if not isinstance(directions, dict):
        return notes.note(f"{DIRECTIONS_JSON}: directions: expected an object of directions")
    rows = ["<table><tr><th>direction</th><th>kind</th><th>calibration</th><th>probe R2 (valid)</th><th>monotonic</th><th>disentanglement</th><th>explained variance</th></tr>"]
    strips = []
    for name, entry in directions.items():
        if not isinstance(entry, dict):
            rows.append(f'<tr><td>{escape(name)}</td><td colspan="6">{notes.note(f"{DIRECTIONS_JSON}: directions.{name}: expected an object")}</td></tr>')
            continue
        effect = entry.get("effect") if isinstance(entry.get("effect"), dict) else {}
        probe = entry.get("probe") if isinstance(entry.get("probe"), dict) else {}
        calibration = f"{_number(entry['calibration'])} {_text(entry.get('units', ''))}/latent unit" if entry.get("calibration") is not None else "-"
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{_text(entry.get('kind', ''))}</td><td>{calibration}</td>"
            f'<td class="num">{_number(probe.get("r2_valid"))}</td><td>{escape(str(effect.get("monotonic", "-")))}</td>'
            f'<td class="num">{_number(effect.get("disentanglement"))}</td><td class="num">{_number(entry.get("explained_variance_ratio"))}</td></tr>'
        )
        if entry.get("traversal_png"):
            steps = record.get("strip_steps") or []
            numeric = isinstance(steps, list) and all(isinstance(step, int | float) for step in steps)
            caption = f"{name}: t from {steps[0]:g} to {steps[-1]:g} latent units" if steps and numeric else name
            relative = entry["traversal_png"]
            image = notes.png(root, prefix + relative if isinstance(relative, str) else relative, f"directions.{name}.traversal_png", DIRECTIONS_JSON, f"traversal {name}", 360)
            strips.append(f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>")
    rows.append("</table>")
    return "\n".join(rows) + '<h3>Traversal strips</h3><div class="grid">' + "".join(strips) + "</div>"


MISCLASSIFIED_AT_T0 = "misclassified at t = 0"
FLIPPED = "flipped along the direction"


def _counterexample_caption(sample: dict[str, Any], counterexample: dict[str, Any]) -> str:
    t = ", ".join(f"{value:.3g}" for value in counterexample["t"])
    caption = f"{sample['id']}: target {sample['target']}, predicted {counterexample['predicted_class']} at t = {t}"
    reason = sample.get("reason")
    if reason == MISCLASSIFIED_AT_T0:
        return f"{caption}: {MISCLASSIFIED_AT_T0} (not caused by the direction)"
    return f"{caption}: {FLIPPED}" if reason == FLIPPED else caption


def _certificate_counterexamples(notes: _Notes, out_dir: Path, name: str, certificate: dict[str, Any]) -> str:
    samples = certificate.get("samples")
    if not isinstance(samples, list):
        return notes.note(f"certificate {name}: samples: expected a list")
    found = [
        (index, sample)
        for index, sample in enumerate(samples)
        if isinstance(sample, dict) and isinstance(sample.get("counterexample"), dict) and sample["counterexample"].get("image")
    ]
    if not found:
        return ""
    figures = []
    for index, sample in found[:COUNTEREXAMPLES_SHOWN]:
        counterexample = sample["counterexample"]
        image = notes.png(out_dir, counterexample["image"], f"samples[{index}].counterexample.image", f"certificate {name}", f"counterexample {sample.get('id')}", 112)
        figures.append(f"<figure>{image}<figcaption>{escape(_counterexample_caption(sample, counterexample))}</figcaption></figure>")
    at_t0 = sum(sample.get("reason") == MISCLASSIFIED_AT_T0 for _, sample in found)
    split = f" ({at_t0} {MISCLASSIFIED_AT_T0}, not caused by the direction)" if at_t0 else ""
    heading = f"{name}: {len(found)} counterexample(s){split}, {min(len(found), COUNTEREXAMPLES_SHOWN)} shown (left: original, right: counterexample)"
    return f'<h3>{escape(heading)}</h3><div class="grid">{"".join(figures)}</div>'


def _counterexamples_section(notes: _Notes, out_dir: Path, certificates: dict[str, dict[str, Any]]) -> str:
    blocks = []
    for name, certificate in certificates.items():
        try:
            blocks.append(_certificate_counterexamples(notes, out_dir, name, certificate))
        except (KeyError, TypeError, ValueError) as error:  # an edited certificate: say so, show the others
            blocks.append(notes.note(f"certificate {name}: unexpected counterexample content ({type(error).__name__}: {error})"))
    return "".join(blocks) or "<p>No counterexamples: no sample was falsified.</p>"


def _gate_section(out_dir: Path, notes: _Notes) -> str:
    """The gate's decision when `gate.json` was made on the audit in front of it (same audit digest); else why none is shown."""
    gate, note = notes.fixed_json(out_dir, GATE_FILE, GATE_FILE)
    if gate is None:
        return note + "<p>no gate decision is shown</p>" if note else "<p>The gate has not run on this audit: no model version is linked yet.</p>"
    recorded = gate.get("audit_digest")
    if not isinstance(recorded, str):
        return f"<p>{GATE_FILE} does not record the audit it decided on (no audit_digest): no gate decision is shown.</p>"
    try:
        digest = folder_audit_digest(out_dir)
    except AuditInputError as error:
        return notes.note(f"the audit digest of this folder cannot be computed ({error}): no gate decision is shown")
    if recorded != digest:
        return (
            f"<p><b>{GATE_FILE} is from another audit (digest mismatch): no gate decision is shown.</b> "
            f"{GATE_FILE} audit digest <code>{escape(recorded)}</code>; this folder's summary and certificates <code>{escape(str(digest))}</code></p>"
        )
    model_name = _text(gate.get("model_name"))
    version = f"{model_name} version {_text(gate.get('version'))}" if gate.get("version") else f"{model_name} (not registered)"
    alias_name = _text(gate.get("alias"))
    alias = f"; alias <b>{alias_name}</b> -> version {_text(gate.get('alias_version'))}" if gate.get("promoted") is True else f" (alias {alias_name} not set)"
    decision = _verdict(str(gate.get("decision", "error")).lower())
    parts = [
        f"<p>Model version: <b>{version}</b>{alias}; gate decision {decision}; audit digest <code>{escape(recorded)}</code>; "
        f"certificates digest <code>{_text(gate.get('certificates_digest') or '')}</code></p>"
    ]
    url = _web_url(gate.get("model_version_url"))
    if url:
        parts.append(f'<p><a href="{escape(url)}">open the model version</a></p>')
    reasons = gate.get("reasons") if isinstance(gate.get("reasons"), list) else []
    parts.append("<ul>" + "".join(f"<li>{_text(reason)}</li>" for reason in reasons) + "</ul>")
    return "".join(parts)


def _provenance_section(notes: _Notes, out_dir: Path, summary: dict[str, Any], certificates: dict[str, dict[str, Any]]) -> str:
    """Links between the certificates, the weights they cover, the MLflow run and the model version."""
    parts = ["<table><tr><th>weights</th><th>sha256</th></tr>"]
    models = summary.get("models") if isinstance(summary.get("models"), dict) else {}
    parts += [f"<tr><td>{escape(str(key))}</td><td><code>{_text(value)}</code></td></tr>" for key, value in sorted(models.items())]
    parts.append("</table><table><tr><th>certificate</th><th>content sha256</th><th>signed</th><th>verdict</th></tr>")
    for name, certificate in certificates.items():
        signed = "yes" if certificate.get("signature") else "no"
        digest = _text(certificate.get("content_sha256", ""))
        parts.append(f"<tr><td>{escape(name)}</td><td><code>{digest}</code></td><td>{signed}</td><td>{_verdict(certificate.get('verdict', '?'))}</td></tr>")
    parts.append("</table>")
    tracking, note = notes.fixed_json(out_dir, TRACKING_FILE, TRACKING_FILE)
    parts.append(note)
    if tracking:
        run, experiment, uri = (_text(tracking.get(key, "")) for key in ("parent_run_id", "experiment_id", "tracking_uri"))
        parts.append(f"<p>MLflow run <code>{run}</code> in experiment <code>{experiment}</code> at <code>{uri}</code></p>")
    parts.append(_gate_section(out_dir, notes))
    return "".join(parts)


def _read_summary(out_dir: Path) -> dict[str, Any]:
    """The folder's summary.json (required): a contained JSON object with a list of named unit-test rows, else bad input."""
    if _absent(out_dir, SUMMARY_FILE):
        raise AuditInputError(f"report: '{out_dir / SUMMARY_FILE}' not found (run `auditai verify` first)")
    return read_summary(out_dir)


def _certificates(notes: _Notes, out_dir: Path, summary: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[int, str]]:
    """The certificates the summary's rows name, by unit test ({} for a refused path), and each such row's certificate cell."""
    certificates: dict[str, dict[str, Any]] = {}
    cells: dict[int, str] = {}
    for index, test in enumerate(summary["unit_tests"]):
        relative = test.get("certificate")
        if relative is None:
            continue
        path, note = notes.path(out_dir, relative, f"unit_tests[{index}].certificate", f"{SUMMARY_FILE} unit test {test['name']}", JSON_SUFFIX)
        if path is None:
            cells[index] = note
            continue
        certificate, note = notes.json(path, f"certificate {test['name']}")
        if certificate is None:
            cells[index] = note
            continue
        certificates[test["name"]] = certificate
        cells[index] = f'<a href="{escape(_link(relative))}">{escape(relative)}</a><br><code>{_text(test.get("certificate_sha256") or "")}</code>'
    return certificates, cells


def write_html_report(out_dir: Path, directions_dir: Path | None = None) -> Path:
    """Render `<out_dir>/report.html` from the audit folder's files; return its path.

    `directions_dir`: where the directions' record is when not in `<out_dir>/directions` (a
    configured input); paths inside the record stay inside that folder.
    """
    out_dir = Path(out_dir)
    summary = _read_summary(out_dir)
    notes = _Notes()
    certificates, certificate_cells = _certificates(notes, out_dir, summary)
    if directions_dir is None or os.path.abspath(directions_dir) == os.path.abspath(out_dir / DIRECTIONS_DIR):
        directions_root, directions_prefix = out_dir, f"{DIRECTIONS_DIR}/"
    else:
        directions_root, directions_prefix = Path(directions_dir), ""
    sections = [
        "<h2>Unit tests</h2>",
        _unit_test_table(summary, certificate_cells),
        "<h2>Certified accuracy against range</h2>",
        _curve_section(summary),
        "<h2>Directions: quality evidence and traversals</h2>",
        _directions_section(notes, directions_root, directions_prefix),
        "<h3>Generator reconstructions (originals above, reconstructions below)</h3>",
        notes.png(out_dir, f"{LATENT_DIR}/{RECONSTRUCTIONS_PNG}", f"{LATENT_DIR}/{RECONSTRUCTIONS_PNG}", "", "reconstructions"),
        "<h2>Counterexamples</h2>",
        _counterexamples_section(notes, out_dir, certificates),
        "<h2>Certificates, weights and model version</h2>",
        _provenance_section(notes, out_dir, summary, certificates),
    ]
    verdict = str(summary.get("verdict"))
    passed = sum(t.get("verdict") == "pass" for t in summary["unit_tests"])
    body = [
        f'<h1>AuditAI report <span class="badge {escape(verdict)}">{escape(verdict.upper())}</span></h1>',
        f"<p>{passed}/{len(summary['unit_tests'])} unit tests pass. Audit of {escape(json.dumps(summary.get('model', {})))}, created {_text(summary.get('created_at', ''))}; "
        f"report rendered {datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
    ]
    if notes.refused:
        body.append(
            f'<div class="refusals"><p><b>{len(notes.refused)} path(s) named in the audit files were refused</b> (they leave the folder or are not the file they claim to be) '
            "and their files are not shown:</p><ul>" + "".join(f"<li>{escape(text)}</li>" for text in notes.refused) + "</ul></div>"
        )
    html = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>AuditAI report: {escape(verdict)}</title><style>{_CSS}</style></head><body>\n'
        + "\n".join(body + sections)
        + "\n</body></html>\n"
    )
    path = out_dir / REPORT_FILE
    write_text(path, html)
    return path
