"""auditai_ops/verify/prove_first.py: bounds before the search, the verdicts of `LineVerifier.verify`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.layers import ViewAs
from auditai_ops.verify import prove_first
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier
from auditai_ops.verify.prove_first import verify_prove_first

CPU = torch.device("cpu")
METHODS = ("forward+backward",)


def _network(seed: int) -> nn.Sequential:
    """A small decoder (4 -> 1x8x8) and CNN with 3 classes."""
    torch.manual_seed(seed)
    network = nn.Sequential(
        nn.Linear(4, 8 * 2 * 2),
        nn.ReLU(),
        ViewAs((8, 2, 2)),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
        nn.Conv2d(1, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )
    with torch.no_grad():
        network[0].weight.mul_(3.0)
        network[-1].weight.mul_(20.0)
    return network.eval()


def _case(seed: int, count: int = 48) -> tuple[LineVerifier, nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=4)
    direction /= np.linalg.norm(direction)
    latents = rng.normal(size=(count, 4)).astype(np.float32)
    network = _network(seed)
    with torch.no_grad():
        targets = network(torch.from_numpy(latents)).argmax(dim=1).numpy()
    targets[::7] = (targets[::7] + 1) % 3  # some misclassified at t = 0
    return LineVerifier(network, direction, CPU, batch_size=64), network, direction, latents, targets


def _contradicted(network: nn.Module, direction: np.ndarray, latents: np.ndarray, targets: np.ndarray, verified: np.ndarray, half: float) -> int:
    ts = torch.linspace(-half, half, 1000)
    d = torch.from_numpy(direction.astype(np.float32))
    with torch.no_grad():
        return sum(int(bool((network(torch.from_numpy(latents[row]) + ts[:, None] * d).argmax(dim=1) != int(targets[row])).any())) for row in np.flatnonzero(verified))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_verdicts_are_those_of_verify_and_never_contradicted(seed: int) -> None:
    verifier, network, direction, latents, targets = _case(seed)
    half = 0.4
    arguments = (latents, targets, np.array([-half]), np.array([half]), METHODS, Falsifier(9, 5, 2, seed), Budget(16), 1e-5)
    today = verifier.verify(*arguments)
    first = verify_prove_first(verifier, *arguments)
    assert first.verdicts.shape == today.verdicts.shape and set(first.verdicts) <= {VERIFIED, FALSIFIED, UNKNOWN}
    assert bool((first.verdicts[today.verdicts == VERIFIED] == VERIFIED).all()), "a sample verify proves is not verified"
    assert not bool(((first.verdicts == VERIFIED) & (today.verdicts == FALSIFIED)).any())
    assert bool((first.verdicts[today.verdicts == FALSIFIED] != VERIFIED).all())
    assert (first.verdicts == VERIFIED).sum() >= 10 and (first.verdicts == FALSIFIED).sum() >= 5  # not vacuous
    assert _contradicted(network, direction, latents, targets, first.verdicts == VERIFIED, half) == 0
    falsified = first.verdicts == FALSIFIED
    with torch.no_grad():
        points = torch.from_numpy(latents[falsified]) + torch.from_numpy(first.counterexample_t[falsified].astype(np.float32)) * torch.from_numpy(direction.astype(np.float32))
        assert bool((network(points).argmax(dim=1).numpy() != targets[falsified]).all())
    verified = first.verdicts == VERIFIED
    assert bool((first.margin_lower_bounds[verified] > 1e-5).all()) and bool((first.pieces[verified] >= 1).all())
    assert set(first.decided_by[verified]) <= set(METHODS) and set(first.stopped_by[verified]) == {""}


def test_samples_proved_by_bounds_are_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier, _, _, latents, targets = _case(3)
    searched: list[np.ndarray] = []
    original = LineVerifier.verify

    def recording(self, latents_part, *args, **kwargs):  # type: ignore[no-untyped-def]
        searched.append(latents_part)
        return original(self, latents_part, *args, **kwargs)

    monkeypatch.setattr(LineVerifier, "verify", recording)
    out = verify_prove_first(verifier, latents, targets, np.array([-0.05]), np.array([0.05]), METHODS, Falsifier(9, 5, 2), Budget(16), 1e-5)
    handed_on = np.concatenate(searched) if searched else np.zeros((0, 4), np.float32)
    decided_first = [row for row in range(len(latents)) if not any(np.array_equal(latents[row], other) for other in handed_on)]
    assert sum(out.verdicts[row] == VERIFIED for row in decided_first) >= len(latents) // 2
    assert all(out.verdicts[row] in (VERIFIED, FALSIFIED) for row in decided_first)
    misclassified = list(range(0, len(latents), 7))  # at t = 0: falsified by the first phase's forward passes, not searched
    assert all(out.verdicts[row] == FALSIFIED and out.decided_by[row] == "search" and row in decided_first for row in misclassified)
    assert all(np.isnan(out.margin_lower_bounds[row]) and out.counterexample_margin[row] < 0 for row in misclassified)


def test_the_piece_budget_holds_in_both_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prove_first, "PROBE", 4)
    verifier, _, _, latents, targets = _case(4)
    for max_pieces in (1, 2, 3):
        out = verify_prove_first(verifier, latents, targets, np.array([-0.5]), np.array([0.5]), METHODS, Falsifier(9, 5, 2), Budget(max_pieces), 1e-5)
        assert int(out.pieces.max()) <= max_pieces
    none_first = verify_prove_first(verifier, latents, targets, np.array([-0.5]), np.array([0.5]), METHODS, Falsifier(9, 5, 2), Budget(8), 1e-5, levels=0)
    today = verifier.verify(latents, targets, np.array([-0.5]), np.array([0.5]), METHODS, Falsifier(9, 5, 2), Budget(8), 1e-5)
    assert bool((none_first.verdicts == today.verdicts).all())
