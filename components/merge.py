"""KFP component: merge the verification shards into certificates (`auditai merge`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge(
    config_yaml: str,
    latent: Input[Dataset],
    directions: Input[Artifact],
    head: Input[Model],
    shards: Input[list[Artifact]],
    audit: Output[Artifact],
    metrics: Output[Metrics],
    mlflow_run: Input[Artifact],
) -> str:
    """Certificates, summary.json and junit.xml from every shard; returns the audit verdict (pass, fail or error)."""
    from auditai_ops.steps import merge_step

    summary = merge_step(config_yaml, latent.path, directions.path, head.path, [shard.path for shard in shards], audit.path, mlflow_run_dir=mlflow_run.path)
    for test in summary["unit_tests"]:
        for figure in ("certified_accuracy", "falsified_fraction", "unknown_fraction", "clean_accuracy"):
            if figure in test:
                metrics.log_metric(f"{test['name']}.{figure}", test[figure])
    audit.metadata["verdict"] = summary["verdict"]
    return summary["verdict"]
