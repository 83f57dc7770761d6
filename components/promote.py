"""KFP component: promote a registered model version to an alias (`auditai promote`)."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.runtime import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(config_yaml: str, model_name: str, version: str, target_alias: str, decision: Output[Artifact]) -> str:
    """Set `target_alias` on the version only if its own certificates pass and match its weights. Returns PASS, FAIL or ERROR."""
    from auditai_ops.steps import promote_step

    outcome = promote_step(config_yaml, model_name, version, target_alias, decision.path)
    decision.metadata.update({key: outcome[key] for key in ("decision", "model_name", "alias", "version", "promoted", "reasons")})
    return outcome["decision"]
