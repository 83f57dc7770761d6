"""KFP component: the self-contained HTML report (`auditai report`), shown in the KFP UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    config_yaml: str, latent: Input[Dataset], directions: Input[Artifact], head: Input[Model], audit: Input[Artifact], report: Output[HTML], mlflow_run: Input[Artifact]
) -> None:
    """Unit-test table, certified accuracy against range, traversals, counterexamples and direction quality, in one HTML file."""
    from auditai_ops.steps import report_step

    report_step(config_yaml, latent.path, directions.path, head.path, audit.path, report.path, mlflow_run_dir=mlflow_run.path)
