"""KFP component: the model-registry gate (`auditai gate`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate(
    config_yaml: str, latent: Input[Dataset], directions: Input[Artifact], head: Input[Model], audit: Input[Artifact], mlflow_run: Input[Artifact], decision: Output[Artifact]
) -> str:
    """Register the audited model version; set the gate alias only past passing certificates that match its weights. Returns PASS, FAIL or ERROR."""
    from auditai_ops.steps import gate_step

    outcome = gate_step(config_yaml, latent.path, directions.path, head.path, audit.path, decision.path, mlflow_run_dir=mlflow_run.path)
    decision.metadata.update({key: outcome[key] for key in ("decision", "model_name", "alias", "version", "promoted", "reasons")})
    return outcome["decision"]
