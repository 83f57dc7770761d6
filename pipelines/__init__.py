"""KFP pipeline definitions (audit_pipeline.py), their compiled YAML, and the `auditai kfp` commands (kfp_cli.py)."""
