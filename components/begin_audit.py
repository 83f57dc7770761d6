"""KFP component: the audit's parent MLflow run, which every later step logs a nested run under."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def begin_audit(config_yaml: str, mlflow_run: Output[Artifact]) -> None:
    """Start the parent run (the whole config as params), recorded in mlflow_run/tracking.json for the later steps (none when tracking is off or unreachable)."""
    from auditai_ops.steps import begin_audit_step

    mlflow_run.metadata["mlflow_run_id"] = begin_audit_step(config_yaml, mlflow_run.path)
