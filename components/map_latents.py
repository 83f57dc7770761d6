"""KFP component: generator latent mapping (`auditai map-latents`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def map_latents(config_yaml: str, latent: Output[Dataset], metrics: Output[Metrics], mlflow_run: Input[Artifact]) -> None:
    """Train the VAE (or use the team's generator) and encode the dataset: latent/{vae.safetensors, latents.npz, reconstructions.png}."""
    from auditai_ops.steps import map_latents_step

    for name, value in map_latents_step(config_yaml, latent.path, mlflow_run_dir=mlflow_run.path).items():
        metrics.log_metric(name, value)
