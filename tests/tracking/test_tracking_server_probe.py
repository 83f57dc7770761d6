"""A tracking server that does not answer is one clear error within seconds, not minutes of MLflow's HTTP retries."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditai_ops.config import TrackingConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.tracking import store
from auditai_ops.tracking.store import PARENT_RUN_ENV, audit_run, probe_server, tracking_client

LIMIT_SECONDS = 30.0


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)


@pytest.fixture
def closed_port() -> int:
    """A localhost port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _http_server(status: int) -> Iterator[str]:
    """A local HTTP server answering every GET with `status`; yields its URI."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            self.send_response(status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server API)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_closed_port_is_refused_within_seconds_with_one_line_naming_the_uri(closed_port: int, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port}"
    started = time.monotonic()
    with pytest.raises(AuditInputError) as raised:
        audit_run(TrackingConfig(uri=uri), tmp_path)
    elapsed = time.monotonic() - started
    assert str(raised.value) == f"tracking.uri '{uri}': the MLflow server does not answer (connection refused)"
    assert elapsed < LIMIT_SECONDS, f"refused after {elapsed:.1f} s"
    assert elapsed >= store.PROBE_SECONDS - 2 * store.PROBE_PAUSE_SECONDS, "a server restarting for a few seconds is waited for"
    assert not (tmp_path / "tracking.json").exists()


def test_the_error_names_the_environment_variable_and_hides_credentials(closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(store, "PROBE_SECONDS", 1.0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{closed_port}/mlflow/")
    with pytest.raises(AuditInputError) as raised:
        audit_run(TrackingConfig(), tmp_path)
    assert str(raised.value) == f"$MLFLOW_TRACKING_URI 'http://***@127.0.0.1:{closed_port}/mlflow/': the MLflow server does not answer (connection refused)"


def test_a_server_that_accepts_but_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PROBE_SECONDS", 2.5)
    monkeypatch.setattr(store, "PROBE_ATTEMPT_SECONDS", 1.0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(AuditInputError, match=r"the MLflow server does not answer \(no answer within 2\.\d s\)$"):
            probe_server(uri)
        assert time.monotonic() - started < 5.0


def test_a_proxy_without_its_server_is_refused_and_any_other_answer_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PROBE_SECONDS", 1.0)
    with _http_server(503) as uri, pytest.raises(AuditInputError, match=r"does not answer \(HTTP 503 Service Unavailable\)$"):
        probe_server(uri)
    for status in (200, 401, 404):  # something that speaks HTTP answers: auth and routing are MLflow's to report
        with _http_server(status) as uri:
            probe_server(uri)
            assert tracking_client(uri).tracking_uri == uri


def test_local_stores_are_not_probed() -> None:
    probe_server("sqlite:////nonexistent/mlflow.db")
    probe_server("file:///nonexistent/mlruns")


@pytest.mark.slow
def test_the_gate_on_a_dead_server_is_refused_with_exit_2_within_the_limit(closed_port: int, tmp_path: Path) -> None:
    """What the user sees: `auditai gate` refuses (the refusal on stdout, nothing on stderr), exit 2."""
    uri = f"http://127.0.0.1:{closed_port}"
    config = tmp_path / "dead.yaml"
    config.write_text(f"tracking:\n  uri: {uri}\nunit_tests:\n  - name: slant5\n    direction: slant\n    range: {{low: -5, high: 5}}\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "auditai_ops", "gate", "--config", str(config), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "gate: ERROR: auditai-model (no version) refused; alias 'certified' not set",
        f"  reason: AuditInputError: tracking.uri '{uri}': the MLflow server does not answer (connection refused)",
    ]
    assert elapsed < LIMIT_SECONDS + 30.0, f"took {elapsed:.1f} s (the probe itself is bounded by {store.PROBE_SECONDS:g} s; the rest is start-up)"
