"""KFP component: certified fine-tuning of a failing head (`auditai finetune`), the pipeline's repair branch."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finetune(
    config_yaml: str, latent: Input[Dataset], directions: Input[Artifact], head: Input[Model], audit: Input[Artifact], mlflow_run: Input[Artifact], candidate: Output[Model]
) -> str:
    """Fine-tune the head for the audit's failing unit tests (finetune.repair: true); returns "candidate" when one is kept, else the status.

    The candidate folder is also the MLflow run folder of the candidate's own audit.
    """
    from auditai_ops.steps import finetune_step

    outcome = finetune_step(config_yaml, latent.path, directions.path, head.path, audit.path, candidate.path, mlflow_run_dir=mlflow_run.path)
    candidate.metadata.update({key: value for key, value in outcome.items() if value is not None})
    return "candidate" if outcome["candidate"] else outcome["status"]
