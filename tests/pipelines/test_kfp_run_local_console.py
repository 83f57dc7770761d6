"""`auditai kfp run-local` on the console: one line per task, kfp's expected offline warnings only in the log file, failures named.

The first tests run a two-task pipeline through the real kfp.local.SubprocessRunner (seconds);
the last one runs `auditai kfp run-local` on tests/cli/small.yaml in a subprocess, as a user would,
and reads its whole console output.
"""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.

import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("kfp", reason="the kfp extra is not installed")

from kfp import dsl, local  # noqa: E402

import pipelines.kfp_cli as kfp_cli  # noqa: E402
from components.runtime import CPU_IMAGE  # noqa: E402
from pipelines.kfp_cli import LocalRunFailed, quiet_local_runner, run_local  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL_CONFIG = REPO / "tests" / "cli" / "small.yaml"
KFP_WARNINGS = ("settings ['display_name'] have no effect", "non-Python base image")
TASK_LINE = re.compile(r"^(?P<task>[a-z0-9-]+) +(?P<status>done|FAILED) in +(?P<seconds>[0-9.]+) s$")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def chatty(lines: int) -> str:
    for number in range(lines):
        print(f"chatty line {number}")
    return "ok"


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def broken(after: str) -> str:
    print("about to fail")
    raise ValueError("this task fails on purpose")


@dsl.pipeline(name="console-check")
def two_tasks(config_yaml: str = "") -> str:
    first = chatty(lines=40).set_display_name("a chatty task")
    second = chatty(lines=3).after(first).set_display_name("another one")
    return second.output


@dsl.pipeline(name="console-check-failing")
def failing(config_yaml: str = "") -> str:
    first = chatty(lines=5).set_display_name("a chatty task")
    return broken(after=first.output).set_display_name("it fails").output


def task_lines(text: str) -> list[re.Match[str]]:
    return [match for line in text.splitlines() if (match := TASK_LINE.match(line))]


@pytest.mark.slow
def test_the_console_gets_one_line_per_task_and_the_log_gets_everything(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    console = io.StringIO()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with quiet_local_runner(tmp_path / "run.log", console=console) as progress:
        assert two_tasks().output == "ok"
        warnings.warn("an unexpected warning", UserWarning, stacklevel=1)  # not one of kfp's expected ones: still shown
    shown = console.getvalue()
    assert [(m["task"], m["status"]) for m in task_lines(shown)] == [("chatty", "done"), ("chatty-2", "done")]
    assert len(shown.splitlines()) == 2, shown
    assert [task["task"] for task in progress.tasks] == ["chatty", "chatty-2"] and all(task["seconds"] > 0 for task in progress.tasks)
    log = (tmp_path / "run.log").read_text()
    assert "chatty line 39" in log and "Executing task 'chatty-2'" in log and "\x1b[" not in log
    for expected in KFP_WARNINGS:
        assert expected in log, f"the log keeps kfp's warning {expected!r}"
        assert not [w for w in recwarn if expected in str(w.message)], f"{expected!r} reached the console"
    assert [str(w.message) for w in recwarn if "unexpected" in str(w.message)] == ["an unexpected warning"]


@pytest.mark.slow
def test_verbose_prints_kfps_full_output_too(tmp_path: Path) -> None:
    console = io.StringIO()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with quiet_local_runner(tmp_path / "run.log", verbose=True, console=console):
        two_tasks()
    shown = console.getvalue()
    assert "chatty line 39" in shown and len(task_lines(shown)) == 2


@pytest.mark.slow
def test_a_failed_task_is_named_with_its_last_output_and_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kfp_cli, "build_pipeline", lambda shards, accelerator: failing)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")  # no local store needed for this pipeline
    with pytest.raises(LocalRunFailed, match=r"task broken failed; its output is in .*run-local-.*\.log") as failure:
        run_local(None, tmp_path)
    shown = capsys.readouterr().out
    assert [(m["task"], m["status"]) for m in task_lines(shown)] == [("chatty", "done"), ("broken", "FAILED")]
    assert "ValueError: this task fails on purpose" in shown  # the end of the task's output, on the console
    assert "chatty line" not in shown  # not the output of the tasks that passed
    log = Path(str(failure.value).rsplit("its output is in ", 1)[1])
    assert log.parent == tmp_path and "about to fail" in log.read_text()


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_on_the_small_config_prints_one_line_per_task_and_no_kfp_warnings(tmp_path: Path) -> None:
    """The issue's measurement: 949 console lines before (18 of them kfp warnings), now a line per task and the verdicts."""
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    command = [str(Path(sys.executable).with_name("auditai")), "kfp", "run-local", "--config", str(SMALL_CONFIG), "--pipeline-root", str(tmp_path), "--shards", "2"]
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=1200)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-6000:]
    for expected in KFP_WARNINGS:
        assert expected not in console
    tasks = [(m["task"], m["status"]) for m in task_lines(console)]
    expected_tasks = ["begin-audit", "map-latents", "discover-directions", "train-classifier", "verify-shard", "verify-shard", "merge", "report", "gate"]
    assert sorted(tasks) == sorted((task, "done") for task in expected_tasks), console
    (log,) = tmp_path.glob("run-local-*.log")
    assert f"every task's output goes to {log}" in console
    text = log.read_text()
    assert all(f"Executing task '{task}'" in text for task in expected_tasks) and all(expected in text for expected in KFP_WARNINGS)
    # One line for the log's path, one per task, then the verdicts (YAML): nothing else.
    verdicts = ["verdict: pass", "unit_tests:", "  slant_small: pass", "  thickness_small: pass", "  pca1_small: pass"]
    assert console.splitlines() == [f"kfp run-local: every task's output goes to {log}", *console.splitlines()[1 : 1 + len(expected_tasks)], *verdicts], console
    print(f"run-local console: {len(console.splitlines())} lines; log file: {len(text.splitlines())} lines")
