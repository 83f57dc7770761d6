"""The report reads the audit folder as untrusted input: paths stay inside it, and a gate decision is shown only for the audit it was made on."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from auditai_ops.audit_files import audit_digest, folder_audit_digest
from auditai_ops.errors import AuditInputError
from auditai_ops.report.html import write_html_report


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _set_image(folder: Path, certificate: str, sample: int, image: str) -> None:
    path = folder / "certificates" / f"{certificate}.json"
    payload = read_json(path)
    payload["samples"][sample]["counterexample"]["image"] = image
    write_json(path, payload)


def _report(folder: Path) -> str:
    return write_html_report(folder).read_text()


def test_untouched_folder_shows_every_image_and_refuses_nothing(audit_folder: Path) -> None:
    html = _report(audit_folder)
    for png in [*audit_folder.glob("counterexamples/*/*.png"), audit_folder / "directions" / "slant.png", audit_folder / "latent" / "reconstructions.png"]:
        assert _b64(png) in html, png
    assert "refused" not in html.split("</style>")[1] and 'class="note"' not in html
    assert 'href="./certificates/slant.json"' in html and "content-of-slant" in html


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("../../outside/secret.png", "leaves the folder"),
        ("counterexamples/../../outside/secret.png", "leaves the folder"),
        ("ABSOLUTE", "leaves the folder"),
        ("counterexamples/slant/link.png", "through a symbolic link"),
        ("counterexamples/slant/hostname.png", "is not a PNG image"),
    ],
)
def test_counterexample_image_outside_the_folder_or_not_a_png_is_refused_with_a_note(audit_folder: Path, outside: Path, image: str, why: str) -> None:
    (audit_folder / "counterexamples" / "slant" / "link.png").symlink_to(outside / "secret.png")
    (audit_folder / "counterexamples" / "slant" / "hostname.png").write_text("build-host-01\n")  # a non-PNG file renamed .png
    image = str(outside / "secret.png") if image == "ABSOLUTE" else image
    _set_image(audit_folder, "slant", 1, image)
    html = _report(audit_folder)

    assert _b64(outside / "secret.png") not in html
    assert base64.b64encode(b"build-host-01\n").decode() not in html
    note = re.search(r"certificate slant: samples\[1\]\.counterexample\.image refused: ([^<]*)", html)
    assert note is not None and why in note.group(1), html
    # the report is complete: the other counterexamples of that certificate and of the other one are still shown
    for valid in ("slant/slant_0.png", "slant/slant_2.png", "thick/thick_0.png"):
        assert _b64(audit_folder / "counterexamples" / valid) in html
    assert "1 path(s) named in the audit files were refused" in html


def test_certificate_path_outside_the_folder_is_refused_and_that_certificate_not_shown(audit_folder: Path, outside: Path) -> None:
    summary = read_json(audit_folder / "summary.json")
    summary["unit_tests"][1]["certificate"] = "../outside/cert.json"
    write_json(audit_folder / "summary.json", summary)
    html = _report(audit_folder)

    assert "summary.json unit test thick: unit_tests[1].certificate refused: &#x27;../outside/cert.json&#x27; leaves the folder" in html
    assert "content-of-outside" not in html and "outside/cert.json</a>" not in html
    assert _b64(audit_folder / "counterexamples" / "thick" / "thick_0.png") not in html  # thick's own certificate is not read either
    assert "content-of-slant" in html  # the other certificate is still shown


def test_certificate_symlinked_out_of_the_folder_is_refused(audit_folder: Path, outside: Path) -> None:
    (audit_folder / "certificates" / "thick.json").unlink()
    (audit_folder / "certificates" / "thick.json").symlink_to(outside / "cert.json")
    html = _report(audit_folder)
    assert "unit_tests[1].certificate refused" in html and "symbolic link" in html
    assert "content-of-outside" not in html


def test_traversal_strip_and_reconstructions_stay_inside(audit_folder: Path, outside: Path) -> None:
    record = read_json(audit_folder / "directions" / "directions.json")
    record["directions"]["slant"]["traversal_png"] = "../../outside/secret.png"
    write_json(audit_folder / "directions" / "directions.json", record)
    (audit_folder / "latent" / "reconstructions.png").unlink()
    (audit_folder / "latent" / "reconstructions.png").symlink_to(outside / "secret.png")
    html = _report(audit_folder)
    assert _b64(outside / "secret.png") not in html
    assert "directions.json: directions.slant.traversal_png refused" in html
    assert "latent/reconstructions.png refused" in html and "symbolic link" in html


def test_a_directions_folder_that_is_a_symlink_out_is_refused(audit_folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (audit_folder / "directions").rename(elsewhere)
    (audit_folder / "directions").symlink_to(elsewhere)
    html = _report(audit_folder)
    assert "directions.json refused" in html and _b64(elsewhere / "slant.png") not in html
    # a directions folder given explicitly (a configured input) is trusted as the root of its record
    html = write_html_report(audit_folder, elsewhere).read_text()
    assert _b64(elsewhere / "slant.png") in html and "refused" not in html


def test_missing_image_is_named_not_fatal(audit_folder: Path) -> None:
    (audit_folder / "counterexamples" / "slant" / "slant_1.png").unlink()
    html = _report(audit_folder)
    assert "certificate slant: samples[1].counterexample.image: &#x27;counterexamples/slant/slant_1.png&#x27; not found" in html
    assert _b64(audit_folder / "counterexamples" / "slant" / "slant_2.png") in html


def test_links_to_certificates_cannot_become_a_url_scheme(audit_folder: Path) -> None:
    (audit_folder / "certificates" / "slant.json").rename(audit_folder / "certificates" / "javascript:alert(1).json")
    summary = read_json(audit_folder / "summary.json")
    summary["unit_tests"][0]["certificate"] = "certificates/javascript:alert(1).json"
    write_json(audit_folder / "summary.json", summary)
    html = _report(audit_folder)
    assert 'href="./certificates/javascript%3Aalert%281%29.json"' in html
    assert 'href="javascript' not in html


def _gate(folder: Path, digest: str | None, **fields: object) -> None:
    payload = {"decision": "PASS", "model_name": "mnist-head", "version": "3", "alias": "certified", "promoted": True, "alias_version": "3", "reasons": ["checks pass"], **fields}
    if digest is not None:
        payload["audit_digest"] = digest
    write_json(folder / "gate.json", payload)


def test_gate_decision_shown_only_for_the_audit_it_was_made_on(audit_folder: Path) -> None:
    digest = folder_audit_digest(audit_folder)
    _gate(audit_folder, digest, model_version_url="http://mlflow:5000/#/models/mnist-head/versions/3")
    html = _report(audit_folder)
    assert "Model version: <b>mnist-head version 3</b>" in html and "gate decision <span" in html and digest in html
    assert 'href="http://mlflow:5000/#/models/mnist-head/versions/3"' in html

    # a new audit in the same folder: a certificate (and so the digest) changes, gate.json stays
    payload = read_json(audit_folder / "certificates" / "slant.json")
    payload["verdict"] = "pass"
    write_json(audit_folder / "certificates" / "slant.json", payload)
    html = _report(audit_folder)
    assert "gate.json is from another audit (digest mismatch): no gate decision is shown" in html
    assert "mnist-head version 3" not in html and "gate decision <span" not in html and "open the model version" not in html


def test_gate_without_digest_absent_or_unverifiable_shows_no_decision(audit_folder: Path) -> None:
    _gate(audit_folder, None)
    html = _report(audit_folder)
    assert "no audit_digest" in html and "mnist-head version 3" not in html

    (audit_folder / "gate.json").unlink()
    assert "The gate has not run on this audit" in _report(audit_folder)

    _gate(audit_folder, folder_audit_digest(audit_folder))
    summary = read_json(audit_folder / "summary.json")
    summary["unit_tests"][1]["certificate"] = "/etc/hostname"
    write_json(audit_folder / "summary.json", summary)
    html = _report(audit_folder)
    assert "the audit digest of this folder cannot be computed" in html and "mnist-head version 3" not in html


def test_gate_link_must_be_a_web_url(audit_folder: Path) -> None:
    _gate(audit_folder, folder_audit_digest(audit_folder), model_version_url="javascript:alert(document.cookie)")
    html = _report(audit_folder)
    assert "mnist-head version 3" in html and "javascript:" not in html and "open the model version" not in html


def test_folder_audit_digest_covers_summary_and_named_certificates(audit_folder: Path) -> None:
    """The digest the report recomputes (the gate's own function): summary.json and exactly the certificates its rows name."""
    certificates = {"slant": audit_folder / "certificates" / "slant.json", "thick": audit_folder / "certificates" / "thick.json"}
    digest = folder_audit_digest(audit_folder)
    assert digest == audit_digest(audit_folder / "summary.json", certificates)
    (audit_folder / "certificates" / "unrelated.json").write_text("{}")  # a file no row names is not covered
    assert folder_audit_digest(audit_folder) == digest
    certificates["thick"].write_text(certificates["thick"].read_text() + " ")
    assert folder_audit_digest(audit_folder) != digest
    summary = read_json(audit_folder / "summary.json")
    summary["unit_tests"][0]["certificate"] = "../outside/cert.json"
    write_json(audit_folder / "summary.json", summary)
    with pytest.raises(AuditInputError, match=r"unit_tests\[0\]\.certificate: '../outside/cert.json' leaves the folder"):
        folder_audit_digest(audit_folder)


def test_summary_symlinked_out_of_the_folder_is_refused(audit_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "other-summary.json"
    (audit_folder / "summary.json").rename(target)
    os.symlink(target, audit_folder / "summary.json")
    with pytest.raises(AuditInputError, match="symbolic link"):
        write_html_report(audit_folder)
    with pytest.raises(AuditInputError, match="symbolic link"):
        folder_audit_digest(audit_folder)
