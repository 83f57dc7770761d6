"""`auditai kfp`: the committed pipeline YAML is current and has the fan-out and GPU requests; submit and schedule send the right requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the kfp extra is not installed")

from kfp_standin import kfp_stand_in  # noqa: E402

from auditai_ops.cli.main import main  # noqa: E402
from pipelines.kfp_cli import PIPELINE_YAML, compile_pipeline  # noqa: E402

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


def test_committed_pipeline_yaml_is_up_to_date(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "audit_pipeline.yaml")
    assert fresh.read_text() == PIPELINE_YAML.read_text(), "pipelines/audit_pipeline.yaml is stale: run `auditai kfp compile` and commit it"


def test_compiled_pipeline_fans_out_on_gpus_and_gates_on_the_verdict() -> None:
    spec, platform = yaml.safe_load_all(PIPELINE_YAML.read_text())
    loop = spec["root"]["dag"]["tasks"]["for-loop-2"]
    assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3]"
    executors = spec["deploymentSpec"]["executors"]
    shard_executors = ("exec-verify-shard", "exec-verify-shard-2")  # the audit's and the candidate's re-audit
    for name in shard_executors:
        shard = executors[name]["container"]
        assert shard["resources"]["accelerator"] == {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}
        assert shard["image"].endswith("auditai-cuda:" + shard["image"].rsplit(":", 1)[1])
    assert all("accelerator" not in e["container"].get("resources", {}) for name, e in executors.items() if name not in shard_executors)
    branches = spec["components"]["comp-condition-branches-3"]["dag"]["tasks"]
    verdict = "inputs.parameter_values['pipelinechannel--merge-Output']"
    assert branches["condition-4"]["triggerPolicy"]["condition"] == f"{verdict} == 'pass'"
    assert list(spec["components"]["comp-condition-4"]["dag"]["tasks"]) == ["gate"]
    # The repair branch: only on 'fail' (an 'error' verdict neither gates nor fine-tunes), then a full re-audit of the candidate.
    assert branches["condition-5"]["triggerPolicy"]["condition"] == f"!({verdict} == 'pass') && {verdict} == 'fail'"
    repair = spec["components"]["comp-condition-5"]["dag"]["tasks"]
    assert repair["condition-6"]["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--finetune-Output'] == 'candidate'"
    reaudit = spec["components"]["comp-condition-6"]["dag"]["tasks"]
    assert set(reaudit) == {"for-loop-8", "merge-2", "report-2", "condition-9"}
    assert reaudit["condition-9"]["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--merge-2-Output'] == 'pass'"
    assert list(spec["components"]["comp-condition-9"]["dag"]["tasks"]) == ["gate-2"]
    candidate_head = reaudit["merge-2"]["inputs"]["artifacts"]["head"]["componentInputArtifact"]
    assert candidate_head == "pipelinechannel--finetune-candidate", "the re-audit must read the candidate, not the original head"
    # MLflow: every step nests under the parent run that begin-audit records; the candidate's audit under the one finetune records.
    root = spec["root"]["dag"]["tasks"]
    run = {"taskOutputArtifact": {"outputArtifactKey": "mlflow_run", "producerTask": "begin-audit"}}
    for name in ("map-latents", "discover-directions", "train-classifier", "merge", "report"):
        assert root[name]["inputs"]["artifacts"]["mlflow_run"] == run, name
    shard_inputs = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["verify-shard"]["inputs"]["artifacts"]
    assert shard_inputs["mlflow_run"] == {"componentInputArtifact": "pipelinechannel--begin-audit-mlflow_run"}
    assert reaudit["merge-2"]["inputs"]["artifacts"]["mlflow_run"] == {"componentInputArtifact": "pipelinechannel--finetune-candidate"}
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in executors:
        assert kubernetes[name]["configMapAsEnv"][0]["configMapName"] == "auditai-tracking", name
        assert [s["secretName"] for s in kubernetes[name]["secretAsEnv"]] == ["auditai-s3", "auditai-signing"], name
    for name in shard_executors:
        assert kubernetes[name]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
        assert kubernetes[name]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]


def test_a_failed_compile_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.kfp_cli as kfp_cli

    def broken(*args: object) -> None:
        raise RuntimeError("the pipeline does not build")

    monkeypatch.setattr(kfp_cli, "build_pipeline", broken)
    with pytest.raises(RuntimeError, match="does not build"):
        compile_pipeline(tmp_path / "audit_pipeline.yaml")
    assert list(tmp_path.iterdir()) == []


def test_compile_for_cpu_has_no_gpu_request(tmp_path: Path) -> None:
    assert main(["kfp", "compile", "--output", str(tmp_path / "cpu.yaml"), "--accelerator", "none", "--shards", "3"]) == 0
    spec, platform = yaml.safe_load_all((tmp_path / "cpu.yaml").read_text())
    assert "accelerator" not in str(spec["deploymentSpec"]["executors"]["exec-verify-shard"])
    assert "nodeSelector" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-verify-shard"]
    assert spec["root"]["dag"]["tasks"]["for-loop-2"]["parameterIterator"]["items"]["raw"] == "[0, 1, 2]"


def test_submit_sends_the_pipeline_and_the_config() -> None:
    with kfp_stand_in() as api:
        assert main(["kfp", "submit", "--host", api.host, "--config", str(SMALL_CONFIG), "--run-name", "nightly-audit"]) == 0
    (run,) = api.calls("POST", "/apis/v2beta1/runs")
    assert run.body["display_name"] == "nightly-audit"
    assert run.body["service_account"] == "auditai-pipeline"
    assert run.body["experiment_id"] == "exp-1"
    assert run.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "auditai-audit"
    assert run.body["runtime_config"]["parameters"]["config_yaml"] == SMALL_CONFIG.read_text()
    assert "exec-verify-shard" in run.body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_schedule_creates_a_recurring_run() -> None:
    with kfp_stand_in() as api:
        assert main(["kfp", "schedule", "--host", api.host, "--cron", "0 0 2 * * *", "--config", str(SMALL_CONFIG)]) == 0
    (recurring,) = api.calls("POST", "/apis/v2beta1/recurringruns")
    assert recurring.body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert int(recurring.body["max_concurrency"]) == 1 and recurring.body["no_catchup"] is True
    assert recurring.body["runtime_config"]["parameters"]["config_yaml"] == SMALL_CONFIG.read_text()
    assert recurring.body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "auditai-audit"


def test_a_bad_config_never_reaches_the_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("verify: {samplez: 3}\n")
    with kfp_stand_in() as api:
        assert main(["kfp", "submit", "--host", api.host, "--config", str(bad)]) == 2
    assert "verify.samplez" in capsys.readouterr().err
    assert not api.calls("POST", "/apis/v2beta1/runs")
