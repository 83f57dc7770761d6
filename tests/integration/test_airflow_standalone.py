"""The README's `airflow standalone` recipe (dags/standalone.sh), run as written: every component comes up and stays up, a DAG runs, and Ctrl-C stops it all.

The commands are read from the README's "Locally with `airflow standalone`" block, so the test
breaks when the README drifts. Only what must differ here is changed, after the README's own
exports: AIRFLOW_HOME, the MLflow store and the work folders go to a temporary folder, and the API
server listens on a free port of 127.0.0.1. PATH is the test's own minus every folder holding an
`airflow` executable, so only the recipe can make `airflow` resolvable: without the venv's bin/ on
PATH, `airflow standalone` starts its components as `airflow` from PATH and every one of them dies
with FileNotFoundError. Ctrl-C is sent as a terminal sends it, to the foreground process group,
and the whole recipe must exit and leave no process behind (plain `airflow standalone` often
hangs there: see dags/standalone.sh).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION = "**Locally with `airflow standalone`**"
DAG_IDS = ("auditai_audit", "auditai_deploy_gate")
COMPONENTS = ("scheduler", "dag_processor", "triggerer")
# Bounds, generous for 2 cores shared with other work (one run took 37 s to come up, 100 s in all):
STARTUP_SECONDS = 180  # a fresh sqlite metadata DB (`db migrate`), four Airflow processes, both DAGs parsed
COMMAND_SECONDS = 90  # one `airflow dags ...` command of the second shell
RUN_SECONDS = 150  # the deploy gate's run: a task process that imports auditai_ops and mlflow
STOP_SECONDS = 60  # Ctrl-C until standalone exits (10 s in one run); then whatever is left is killed


def readme_recipe() -> dict[str, list[str]]:
    """The recipe's shell lines: `exports`, the `standalone` line, and the `second` shell's lines."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION}"
    block = re.search(r"```bash\n(.*?)```", text[text.index(SECTION) :], re.S)
    assert block is not None, "the standalone section has no bash block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    (second,) = [index for index, line in enumerate(lines) if line.startswith("# in a second shell")]
    *exports, standalone = lines[:second]  # the exports, then the command that starts standalone
    assert re.match(r"\S*(airflow standalone|standalone\.sh)\b", standalone), standalone
    assert exports and all(line.startswith("export ") for line in exports), exports
    return {"exports": exports, "standalone": [standalone], "second": [line for line in lines[second + 1 :] if not line.startswith("#")]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def path_without_airflow() -> str:
    """This process's PATH minus every folder with an `airflow` executable (an activated venv would hide a broken recipe)."""
    folders = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(folder for folder in folders if folder and not os.access(os.path.join(folder, "airflow"), os.X_OK))


def processes_of(marker: str) -> list[int]:
    """Every live process whose environment holds `marker` (this test's AIRFLOW_HOME): task processes leave the process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environment.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def describe(pids: list[int]) -> list[str]:
    """pid and command line of each process, for a failure message."""
    lines = []
    for pid in pids:
        try:
            lines.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            pass
    return lines


class Standalone:
    """`airflow standalone` started by bash from the README's lines, in a process group of its own, output to a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.home = tmp / "airflow"
        self.log = tmp / "standalone.log"
        self.recipe = readme_recipe()
        self.marker = f"AIRFLOW_HOME={self.home}"
        overrides = {
            "AIRFLOW_HOME": str(self.home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",  # the task supervisors' execution API follows it
            "AIRFLOW_VAR_AUDITAI_WORK_ROOT": str(tmp / "work"),  # the DAGs' work folders (default /tmp/auditai-airflow)
        }
        self.prelude = "\n".join(["set -e", *self.recipe["exports"], "export " + " ".join(f"{key}='{value}'" for key, value in overrides.items())])
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV"))}
        self.environment["PATH"] = path_without_airflow()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = self.prelude + "\nexec " + self.recipe["standalone"][0] + "\n"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=self.environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def second_shell(self, line: str, timeout: float = COMMAND_SECONDS) -> subprocess.CompletedProcess[str]:
        """One line of the README's second shell, with the same exports, from the same folder."""
        return subprocess.run(["bash", "-c", self.prelude + "\n" + line], cwd=REPO, env=self.environment, capture_output=True, text=True, timeout=timeout)

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """(HTTP status, JSON body); (0, None) while the server does not answer (not listening yet, or busy on 2 shared cores)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None
        except OSError:  # refused, reset or timed out
            return 0, None

    def token(self) -> str:
        """A JWT for the admin user whose password standalone generated (where the README says it is)."""
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        body = json.dumps({"username": "admin", "password": passwords["admin"]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/auth/token", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["access_token"]

    def wait(self, what: str, seconds: float, probe: Any) -> Any:
        """Poll `probe` until it returns something truthy; fail early when standalone exits or a component cannot start."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert "FileNotFoundError" not in self.output(), f"a component could not start:\n{self.output()[-4000:]}"
            assert self.process is not None and self.process.poll() is None, f"airflow standalone exited ({self.process.returncode}):\n{self.output()[-4000:]}"
            result = probe()
            if result:
                return result
            time.sleep(2)
        raise AssertionError(f"{what} within {seconds} s; standalone's output:\n{self.output()[-4000:]}")

    def stop(self) -> float:
        """Ctrl-C as a terminal sends it: SIGINT to the foreground process group, the one the README's command was started in; the seconds until it exited."""
        assert self.process is not None
        started = time.monotonic()
        try:
            os.killpg(self.process.pid, signal.SIGINT)  # bash exec'd the README's command: its pid is the group's id
            self.process.wait(timeout=STOP_SECONDS)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        seconds = time.monotonic() - started
        deadline = time.monotonic() + 20
        while processes_of(self.marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        return seconds

    def kill_leftovers(self) -> list[int]:
        """SIGKILL the process group and every process of this AIRFLOW_HOME still alive; returns their pids."""
        left = processes_of(self.marker)
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return left


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    if not (REPO / ".venv" / "bin" / "airflow").exists():
        pytest.skip("the README's recipe runs the venv's airflow (.venv/bin/airflow): run `make venv`")
    server = Standalone(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill_leftovers()


def health(server: Standalone) -> dict[str, Any] | None:
    """The API server's health report once the metadata DB and every component are healthy."""
    status, report = server.get("/api/v2/monitor/health")
    if status != 200 or report is None:
        return None
    healthy = report.get("metadatabase", {}).get("status") == "healthy"
    healthy = healthy and all(report.get(component, {}).get("status") == "healthy" for component in COMPONENTS)
    return report if healthy else None


def test_the_readme_standalone_recipe_starts_every_component_runs_a_dag_and_stops_cleanly(standalone: Standalone) -> None:
    started = time.monotonic()
    report = standalone.wait("the API server reports the scheduler, DAG processor and triggerer healthy", STARTUP_SECONDS, lambda: health(standalone))
    assert set(COMPONENTS) <= set(report)
    token = standalone.token()

    def parsed() -> bool:
        status, dags = standalone.get("/api/v2/dags", token)
        return status == 200 and set(DAG_IDS) <= {dag["dag_id"] for dag in dags["dags"]}

    standalone.wait("the DAG processor parses both DAGs", STARTUP_SECONDS - (time.monotonic() - started), parsed)
    up_seconds = time.monotonic() - started

    # The README's second shell: unpause both DAGs, trigger the deploy gate. No model is registered in
    # this test's empty MLflow store, so the scheduler runs its check to a refusal: the run fails
    # (on_refusal: fail) and the deploy task never runs.
    unpause, trigger_audit, trigger_gate = standalone.recipe["second"]
    assert "auditai_deploy_gate" in trigger_gate and "auditai_audit" in trigger_audit
    done = standalone.second_shell(unpause)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for dag_id in DAG_IDS:
        status, dag = standalone.get(f"/api/v2/dags/{dag_id}", token)
        assert status == 200 and dag["is_paused"] is False, (status, dag)
    done = standalone.second_shell(trigger_gate)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def finished() -> dict[str, Any] | None:
        status, runs = standalone.get("/api/v2/dags/auditai_deploy_gate/dagRuns", token)
        states = [run["state"] for run in (runs or {}).get("dag_runs", [])]
        return runs["dag_runs"][0] if status == 200 and len(states) == 1 and states[0] in ("success", "failed") else None

    run = standalone.wait("the deploy gate's run finishes", RUN_SECONDS, finished)
    assert run["state"] == "failed" and run["conf"] == {"model_name": "auditai-model", "version": "certified"}
    status, instances = standalone.get(f"/api/v2/dags/auditai_deploy_gate/dagRuns/{run['dag_run_id']}/taskInstances", token)
    assert status == 200, status
    states = {instance["task_id"]: instance["state"] for instance in instances["task_instances"]}
    assert states == {"check_certificate": "failed", "deploy_model_placeholder": "upstream_failed"}, states
    standalone.wait("every component is still healthy after the run", 60, lambda: health(standalone))

    stop_seconds = standalone.stop()
    output = standalone.output()
    assert "FileNotFoundError" not in output, output[-4000:]
    assert "Shutting down components" in output, output[-4000:]
    running = describe(processes_of(standalone.marker))
    assert standalone.process is not None and standalone.process.returncode is not None, f"no exit on Ctrl-C in {STOP_SECONDS} s: {running}\n{output[-3000:]}"
    assert standalone.process.returncode == 0, output[-3000:]
    left = describe(standalone.kill_leftovers())
    assert left == [], f"processes left after Ctrl-C: {left}"
    print(f"standalone: components healthy and DAGs parsed in {up_seconds:.0f} s; stopped in {stop_seconds:.1f} s")
