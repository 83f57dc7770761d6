"""KFP component: the audited classifier head (`auditai train-classifier`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_classifier(config_yaml: str, latent: Input[Dataset], head: Output[Model], metrics: Output[Metrics], mlflow_run: Input[Artifact]) -> None:
    """Train the classifier head on the latents: classifier/{head.safetensors, head.json}."""
    from auditai_ops.steps import train_classifier_step

    for name, value in train_classifier_step(config_yaml, latent.path, head.path, mlflow_run_dir=mlflow_run.path).items():
        metrics.log_metric(name, value)
