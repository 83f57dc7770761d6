"""KFP component: semantic direction discovery (`auditai discover-directions`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def discover_directions(config_yaml: str, latent: Input[Dataset], directions: Output[Artifact], mlflow_run: Input[Artifact]) -> None:
    """Calibrated directions with their quality evidence and traversal strips: directions/{directions.json, directions.npz, traversal_*.png}."""
    from auditai_ops.steps import discover_directions_step

    directions.metadata["directions"] = discover_directions_step(config_yaml, latent.path, directions.path, mlflow_run_dir=mlflow_run.path)
