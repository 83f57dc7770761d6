"""The audit pipeline: map latents, directions and classifier, sharded verification, merge, report, then the gate.

    begin-audit (the parent MLflow run; every later task logs a nested run under it) ->
    map-latents -> discover-directions, train-classifier -> ParallelFor(verify-shard) -> merge -> report
      dsl.If(verdict == pass): gate (registers the model version, sets the `certified` alias past matching certificates)
      dsl.Elif(verdict == fail): finetune (certified fine-tuning for the failing specs when the config says finetune.repair: true)
        dsl.If(a candidate was kept): ParallelFor(verify-shard) -> merge -> report of the candidate
          dsl.If(its verdict == pass): gate (registers the candidate; its certificates carry its weight hash)
        (the candidate's audit logs under a parent MLflow run of its own, which finetune begins)
      Without a passing audit of the original or of a candidate, nothing is promoted.

Verification shards run on GPUs when the pipeline is compiled with an accelerator type
(set_accelerator_type / set_accelerator_limit, the CUDA image, and the GPU node toleration),
on CPUs otherwise. MLflow and S3 settings reach every task from the cluster's ConfigMap and
Secret (names in infra/runtime.yaml), never as values in the pipeline.
"""

from typing import Any

from kfp import dsl, kubernetes

from components.begin_audit import begin_audit
from components.discover_directions import discover_directions
from components.finetune import finetune
from components.gate import gate
from components.map_latents import map_latents
from components.merge import merge
from components.report import report
from components.runtime import CUDA_IMAGE, RUNTIME
from components.train_classifier import train_classifier
from components.verify_shard import verify_shard

PIPELINE_NAME = "auditai-audit"
DEFAULT_SHARDS = 4
DEFAULT_ACCELERATOR = "nvidia.com/gpu"


def with_cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MLflow and S3 settings from the cluster's ConfigMap and Secrets (infra/runtime.yaml), never values in the pipeline."""
    kubernetes.use_config_map_as_env(task, RUNTIME.config_map.name, {key: key for key in RUNTIME.config_map.keys}, optional=RUNTIME.config_map.optional)
    for name in ("s3", "signing"):
        secret = RUNTIME.secrets[name]
        kubernetes.use_secret_as_env(task, secret.name, {key: key for key in secret.keys}, optional=secret.optional)
    return task


def on_gpu(task: dsl.PipelineTask, accelerator: str) -> dsl.PipelineTask:
    """One `accelerator` for the task, the CUDA image, and the GPU nodes' selector and toleration."""
    task.set_container_image(CUDA_IMAGE).set_accelerator_type(accelerator).set_accelerator_limit(1)
    for key, value in RUNTIME.gpu.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for toleration in RUNTIME.gpu.tolerations:
        kubernetes.add_toleration(task, **toleration)
    return task


def audit_and_report(config_yaml: Any, verify_device: Any, models: dict[str, Any], shards: int, accelerator: str | None, label: str, mlflow_run: Any) -> dsl.PipelineTask:
    """ParallelFor(verify-shard) -> merge -> report of the head in `models` (pipeline channels); the merge task (its Output is the verdict)."""
    with dsl.ParallelFor(items=list(range(shards)), name="verification-shards") as index:
        shard = verify_shard(config_yaml=config_yaml, device=verify_device, shard_index=index, shard_count=shards, mlflow_run=mlflow_run, **models)
        with_cluster_env(shard.set_display_name(f"verify shard{label}"))
        if accelerator:
            on_gpu(shard, accelerator)
    merged = merge(config_yaml=config_yaml, shards=dsl.Collected(shard.outputs["shard"]), mlflow_run=mlflow_run, **models)
    with_cluster_env(merged.set_display_name(f"merge shards{label}"))
    with_cluster_env(report(config_yaml=config_yaml, audit=merged.outputs["audit"], mlflow_run=mlflow_run, **models).set_display_name(f"HTML report{label}"))
    return merged


def build_pipeline(shards: int = DEFAULT_SHARDS, accelerator: str | None = DEFAULT_ACCELERATOR):  # noqa: ANN201 - a kfp GraphComponent
    """The pipeline with `shards` verification shards, each on one `accelerator` (None: on CPU)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Verified semantic unit tests (AuditAI): prove every spec, gate the model version on the certificates.")
    def audit_pipeline(config_yaml: str = "", verify_device: str = "cuda" if accelerator else "cpu") -> str:
        run = with_cluster_env(begin_audit(config_yaml=config_yaml).set_display_name("begin audit (MLflow parent run)")).outputs["mlflow_run"]
        latent = with_cluster_env(map_latents(config_yaml=config_yaml, mlflow_run=run).set_display_name("map latents"))
        directions = discover_directions(config_yaml=config_yaml, latent=latent.outputs["latent"], mlflow_run=run)
        head = train_classifier(config_yaml=config_yaml, latent=latent.outputs["latent"], mlflow_run=run)
        with_cluster_env(directions.set_display_name("discover directions"))
        with_cluster_env(head.set_display_name("train classifier"))
        models = {"latent": latent.outputs["latent"], "directions": directions.outputs["directions"], "head": head.outputs["head"]}
        merged = audit_and_report(config_yaml, verify_device, models, shards, accelerator, "", run)
        audit = merged.outputs["audit"]
        with dsl.If(merged.outputs["Output"] == "pass", name="every-spec-passes"):
            with_cluster_env(gate(config_yaml=config_yaml, audit=audit, mlflow_run=run, **models).set_display_name("gate: register and certify"))
        with dsl.Elif(merged.outputs["Output"] == "fail", name="some-spec-fails"):
            tuned = with_cluster_env(finetune(config_yaml=config_yaml, audit=audit, mlflow_run=run, **models).set_display_name("certified fine-tuning"))
            with dsl.If(tuned.outputs["Output"] == "candidate", name="candidate-kept"):
                candidate = {**models, "head": tuned.outputs["candidate"]}  # also the MLflow run folder of the candidate's audit
                remerged = audit_and_report(config_yaml, verify_device, candidate, shards, accelerator, " (candidate)", tuned.outputs["candidate"])
                with dsl.If(remerged.outputs["Output"] == "pass", name="candidate-passes"):
                    gate_task = gate(config_yaml=config_yaml, audit=remerged.outputs["audit"], mlflow_run=tuned.outputs["candidate"], **candidate)
                    with_cluster_env(gate_task.set_display_name("gate the candidate: register and certify"))
        return merged.outputs["Output"]

    return audit_pipeline
