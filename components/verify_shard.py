"""KFP component: one verification shard (`auditai verify --shard i/N`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def verify_shard(
    config_yaml: str,
    device: str,
    shard_index: int,
    shard_count: int,
    latent: Input[Dataset],
    directions: Input[Artifact],
    head: Input[Model],
    shard: Output[Artifact],
    mlflow_run: Input[Artifact],
) -> None:
    """Prove or falsify shard `shard_index` of `shard_count` of every unit test on `device`: shards/shard-i-of-N.npz."""
    from auditai_ops.steps import verify_shard_step

    verify_shard_step(config_yaml, latent.path, directions.path, head.path, shard_index, shard_count, shard.path, device, mlflow_run_dir=mlflow_run.path)
