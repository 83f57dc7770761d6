"""Deployment descriptions: container images (images.yaml) and runtime names (runtime.yaml).

Importable from a checkout (repository root on sys.path) by components/ and pipelines/; it
never imports auditai_ops, so compiling a pipeline needs only PyYAML.
"""
