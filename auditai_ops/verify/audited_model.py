"""The audited network as a function of the latent point: latent mode or pixel mode.

latent mode: network(z) = head(z), the paper's setting (model = head o encoder, verified in
latent space). pixel mode: network(z) = classifier(normalize(decoder(z))), the classifier
taking the decoded images (B, C, H, W) of the generator's `input_shape`, with the decoder
inside the bounded graph, so the guarantee covers the decoded images themselves; the
classifier is the user's (TorchScript, ONNX, module:factory, MLflow URI) or, without one,
head o encoder, which also covers the encoder that latent mode takes on trust. The network is
one flat nn.Sequential of supported layers, for every bound backend.

`classifier` is the part of the network that is the model's own (the head, or the user's
classifier), sharing its layers with `network`: what certified fine-tuning trains. In pixel
mode, `weights` with a classifier that is not a factory replaces the loaded classifier's
weights (a state_dict of the loaded, boundable module, as `auditai finetune` writes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditai_ops.classifier.head import load_head
from auditai_ops.config import ModelConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.latent.generator import Generator, flat_layers
from auditai_ops.layers import PerChannelNormalize
from auditai_ops.layout import StepInputs
from auditai_ops.modelio import load_safetensors_into


@dataclass(frozen=True)
class AuditedModel:
    """`network` maps latent points (B, latent_dim) to logits; `hashes` name every weight file it depends on.

    `classifier` is the model's own part of `network` (same module objects); `classifier_hash`
    is the key of its weights' sha256 in `hashes`. `latent_dim` and `num_classes` are the
    network's input width and its number of logits, measured by a forward pass when it is built.
    """

    mode: str
    network: nn.Sequential
    decoder: nn.Module
    hashes: dict[str, str]
    description: dict[str, Any]
    classifier: nn.Module
    classifier_hash: str
    latent_dim: int = 0
    num_classes: int = 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _count_classes(network: nn.Module, latent_dim: int, model: str) -> int:
    """The number of logits `network` gives for one latent point of the generator's dimension; bad input when it cannot run on one."""
    try:
        with torch.no_grad():
            logits = network(torch.zeros(1, latent_dim))
    except RuntimeError as error:  # matrix shapes that do not chain: the model was made for other latents
        raise AuditInputError(f"{model}: cannot run on the generator's latents of dimension {latent_dim} ({_one_line(error)})") from None
    if logits.ndim != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
        raise AuditInputError(f"{model}: expected logits of shape (B, C) with C >= 2 classes, got shape {tuple(logits.shape)} for one latent point")
    return int(logits.shape[1])


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
        loaded = load_model_detailed(source, input_shape=generator.input_shape, trust_pickle=settings.trust_pickle)
        classifier: nn.Module = loaded.module
        if settings.weights is not None and source.kind != "factory":
            weights = Path(settings.weights) if base_dir is None or Path(settings.weights).is_absolute() else base_dir / settings.weights
            load_safetensors_into(classifier, weights, "do not fit the loaded classifier (expected a state_dict written by `auditai finetune`)")
            description["weights"] = settings.weights
        layers += flat_layers(classifier)
        hashes["classifier_sha256"] = sha256_state_dict(classifier.state_dict())
        description.update({"classifier": settings.classifier, "route": loaded.route})
        classifier_hash = "classifier_sha256"
        model = f"model.classifier '{settings.classifier}'"
    else:
        head, _ = load_head(inputs.head)
        model = f"the head '{inputs.head}'"
        if settings.mode == "pixel":
            layers += flat_layers(generator.encoder)
            description["classifier"] = "head o encoder"
        layers += flat_layers(head)
        hashes["head_sha256"] = sha256_state_dict(head.state_dict())
        classifier, classifier_hash = head, "head_sha256"
    network = nn.Sequential(*layers).eval()
    num_classes = _count_classes(network, generator.latent_dim, model)
    if Path(inputs.latents).is_file():  # the audit's test latents must fit the model: checked here, before any verification
        from auditai_ops.latent.latents_file import check_latents_fit, read_latent_split

        check_latents_fit(read_latent_split(inputs.latents, "test"), inputs.latents, generator.latent_dim, num_classes, model)
    return AuditedModel(settings.mode, network, generator.decoder, hashes, description, classifier, classifier_hash, generator.latent_dim, num_classes)
