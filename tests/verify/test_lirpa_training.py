"""Differentiable bounds for certified training: sound, with gradients to exactly the parameters trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auditai_ops.verify.engine import margin_specification
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.lirpa_compat import build_trainable_bounded_module, training_margin_lower_bounds


def _network() -> tuple[nn.Sequential, list[nn.Parameter]]:
    """A frozen front (a stand-in for the decoder) and a trainable classifier with BatchNorm."""
    torch.manual_seed(0)
    front = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    classifier = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        classifier[1].running_mean.uniform_(-0.5, 0.5)
        classifier[1].running_var.uniform_(0.5, 2.0)
    return nn.Sequential(*front, *classifier).eval(), list(classifier.parameters())


@pytest.mark.parametrize("method", ["IBP", "CROWN-IBP"])
def test_training_bounds_are_sound_and_train_only_the_classifier(method: str) -> None:
    network, trainable = _network()
    running = (network[3].running_mean.clone(), network[3].running_var.clone())
    direction = torch.tensor([[0.6, -0.8, 0.0, 0.0]])
    line = LatentLine(network, direction)
    bounded = build_trainable_bounded_module(line, (torch.zeros(2, 1), torch.zeros(2, 4)), trainable)
    z = torch.randn(16, 4)
    with torch.no_grad():
        targets = network(z).argmax(dim=1)
    low, high = torch.full((16, 1), -0.3), torch.full((16, 1), 0.5)
    lower = training_margin_lower_bounds(bounded, ((low + high) / 2, z), low, high, margin_specification(targets, 3), method)
    assert lower.shape == (16, 2) and lower.requires_grad

    ts = torch.linspace(-0.3, 0.5, 200)
    with torch.no_grad():
        logits = network((z[:, None, :] + ts[None, :, None] * direction).reshape(-1, 4)).view(16, 200, 3)
        margins = torch.einsum("bsn,btn->bts", margin_specification(targets, 3), logits).amin(dim=1)
    assert (lower.detach() <= margins + 1e-5).all()

    lower.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)  # BatchNorm's weight and bias included
    assert all(p.grad is None for p in network[0].parameters())
    assert torch.equal(network[3].running_mean, running[0]) and torch.equal(network[3].running_var, running[1])


def test_training_bounds_refuse_methods_that_do_not_train() -> None:
    network, trainable = _network()
    bounded = build_trainable_bounded_module(LatentLine(network, torch.eye(4)[:1]), (torch.zeros(2, 1), torch.zeros(2, 4)), trainable)
    box = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="IBP or CROWN-IBP"):
        training_margin_lower_bounds(bounded, (box, torch.zeros(2, 4)), box, box, margin_specification(torch.zeros(2, dtype=torch.long), 3), "alpha-CROWN")  # type: ignore[arg-type]
