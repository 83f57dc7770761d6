"""Bring your own model: load a classifier, encoder or decoder as a module the verifier can bound.

    source = parse_model_reference("models/cnn.onnx", base_dir=config_dir)
    model = load_model(source, input_shape=(1, 28, 28))

Formats: TorchScript, ONNX (needs the `onnx` extra), `pkg.module:factory` with safetensors
weights, the project's own safetensors+json records, and MLflow URIs (needs the `tracking`
extra). Pickle-based files are refused unless `trust_pickle=True`.
"""

from auditai_ops.models.loading import LoadedModel, ModelMismatchError, PickleLoadWarning, load_model, load_model_detailed, weights_sha256
from auditai_ops.models.onnx_convert import SUPPORTED_ONNX_OPS
from auditai_ops.models.source import ModelKind, ModelSource, parse_model_reference

__all__ = [
    "SUPPORTED_ONNX_OPS",
    "LoadedModel",
    "ModelKind",
    "ModelMismatchError",
    "ModelSource",
    "PickleLoadWarning",
    "load_model",
    "load_model_detailed",
    "parse_model_reference",
    "weights_sha256",
]
