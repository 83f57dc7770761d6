"""The audited network as a function of the latent point: latent mode or pixel mode.

latent mode: network(z) = head(z), the paper's setting (model = head o encoder, verified in
latent space). pixel mode: network(z) = classifier(normalize(decoder(z))), with the decoder
inside the bounded graph, so the guarantee covers the decoded images themselves; the
classifier is the user's (TorchScript, ONNX, module:factory, MLflow URI) or, without one,
head o encoder, which also covers the encoder that latent mode takes on trust. The network is
one flat nn.Sequential of supported layers, for every bound backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from auditai_ops.classifier.head import load_head
from auditai_ops.config import ModelConfig
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.latent.generator import Generator, flat_layers
from auditai_ops.layers import PerChannelNormalize
from auditai_ops.layout import StepInputs


@dataclass(frozen=True)
class AuditedModel:
    """`network` maps latent points (B, latent_dim) to logits; `hashes` name every weight file it depends on."""

    mode: str
    network: nn.Sequential
    decoder: nn.Module
    hashes: dict[str, str]
    description: dict[str, Any]


def build_audited_model(settings: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None = None) -> AuditedModel:
    """Load the classifier named by the config and compose the audited network with the generator."""
    hashes = dict(generator.hashes)
    description: dict[str, Any] = {"mode": settings.mode}
    layers: list[nn.Module] = []
    if settings.mode == "pixel":
        layers += flat_layers(generator.decoder)
        if settings.normalization is not None:
            layers.append(PerChannelNormalize(settings.normalization.mean, settings.normalization.std))
            description["normalization"] = settings.normalization.model_dump(mode="json")
    if settings.mode == "pixel" and settings.classifier is not None:
        from auditai_ops.models.loading import load_model_detailed
        from auditai_ops.models.source import parse_model_reference

        source = parse_model_reference(settings.classifier, settings.weights, settings.factory_kwargs, base_dir)
        loaded = load_model_detailed(source, input_shape=(1, *generator.image_shape), trust_pickle=settings.trust_pickle)
        layers += flat_layers(loaded.module)
        hashes["classifier_sha256"] = loaded.weights_sha256
        description.update({"classifier": settings.classifier, "route": loaded.route})
    else:
        head, _ = load_head(inputs.head)
        if settings.mode == "pixel":
            layers += flat_layers(generator.encoder)
            description["classifier"] = "head o encoder"
        layers += flat_layers(head)
        hashes["head_sha256"] = sha256_state_dict(head.state_dict())
    return AuditedModel(settings.mode, nn.Sequential(*layers).eval(), generator.decoder, hashes, description)
