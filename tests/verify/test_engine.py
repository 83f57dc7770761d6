"""The verification engine on networks whose answers are known by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, LineVerifier, float32_box, margin_specification, margins, resolve_device

CPU = torch.device("cpu")


def _linear_two_class() -> nn.Module:
    """logits = (0, z0): class 1 wins iff z0 > 0, and along d = e0 the margin of class 1 is z0 + t."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        layer.bias.zero_()
    return nn.Sequential(layer).eval()


def test_margin_specification_rows_are_target_minus_other() -> None:
    spec = margin_specification(torch.tensor([0, 2]), 3)
    expected = torch.tensor([[[1.0, -1, 0], [1, 0, -1]], [[-1, 0, 1], [0, -1, 1]]])
    torch.testing.assert_close(spec, expected)
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    torch.testing.assert_close(margins(logits, torch.tensor([0, 2])), torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("methods", [("IBP",), ("CROWN",), ("IBP", "CROWN")])
def test_hand_computable_linear_verdicts(methods: tuple[str, ...]) -> None:
    """Margin z0 + t on t in [-0.5, 0.5]: verified iff z0 > 0.5, falsified iff z0 < 0.5 (the endpoint -0.5)."""
    verifier = LineVerifier(_linear_two_class(), np.array([1.0, 0.0]), CPU, batch_size=2)
    latents = np.array([[2.0, 0.0], [0.6, 3.0], [0.4, 0.0], [-1.0, 0.0], [0.5, 0.0]], np.float32)
    out = verifier.verify(latents, np.ones(5, np.int64), np.array([-0.5]), np.array([0.5]), methods, 5, 1e-5)
    assert out.verdicts.tolist() == [VERIFIED, VERIFIED, FALSIFIED, FALSIFIED, UNKNOWN]
    np.testing.assert_allclose(out.margin_lower_bounds[:2], [1.5, 0.1], atol=1e-5)
    np.testing.assert_allclose(out.counterexample_t[2:4, 0], [-0.5, -0.5])
    assert out.counterexample_class[2:4].tolist() == [0, 0]
    np.testing.assert_allclose(out.counterexample_margin[2:4], [-0.1, -1.5], atol=1e-6)
    assert out.decided_by[2] == "grid:5" and out.decided_by[0] in methods


def _bump_head(centre: float, width: float) -> nn.Module:
    """2 classes on a 1-d latent; class 0 wins except where |z - centre| < 2/3 width (a planted failure).

    margin(z) = 1 - 1.5 * relu(width - |z - centre|) / width, with |x| = relu(x) + relu(-x).
    """
    first = nn.Linear(1, 2)
    second = nn.Linear(2, 1)
    third = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        first.bias.copy_(torch.tensor([-centre, centre]))
        second.weight.copy_(torch.tensor([[-1.0, -1.0]]))
        second.bias.copy_(torch.tensor([width]))
        third.weight.copy_(torch.tensor([[0.0], [1.5 / width]]))
        third.bias.copy_(torch.tensor([1.0, 0.0]))
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), third).eval()


def test_planted_failure_is_falsified_never_verified() -> None:
    head = _bump_head(centre=0.3, width=0.06)
    verifier = LineVerifier(head, np.array([1.0]), CPU, batch_size=64)
    latents = np.zeros((3, 1), np.float32)
    out = verifier.verify(latents, np.zeros(3, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP", "CROWN"), 65, 1e-5)
    assert out.verdicts.tolist() == [FALSIFIED] * 3
    assert np.all(np.abs(out.counterexample_t[:, 0] - 0.3) < 0.04)
    with torch.no_grad():
        logits = head(torch.tensor(out.counterexample_t, dtype=torch.float32))
    assert logits.argmax(dim=1).tolist() == [1, 1, 1]


def test_planted_failure_missed_by_the_grid_stays_unknown() -> None:
    """A failure narrower than the grid spacing must never come out verified."""
    head = _bump_head(centre=0.31, width=0.004)
    verifier = LineVerifier(head, np.array([1.0]), CPU, batch_size=64)
    out = verifier.verify(np.zeros((4, 1), np.float32), np.zeros(4, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP", "CROWN"), 5, 1e-5)
    assert VERIFIED not in out.verdicts.tolist()


def test_away_from_the_planted_failure_it_verifies() -> None:
    head = _bump_head(centre=0.3, width=0.06)
    verifier = LineVerifier(head, np.array([1.0]), CPU, batch_size=64)
    out = verifier.verify(np.zeros((2, 1), np.float32), np.zeros(2, np.int64), np.array([-1.0]), np.array([0.2]), ("IBP", "CROWN"), 9, 1e-5)
    assert out.verdicts.tolist() == [VERIFIED, VERIFIED]


def test_cuda_without_cuda_is_bad_input() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(AuditInputError, match="verify.device: 'cuda'"):
        resolve_device("cuda")


def test_float32_box_rounding_directions() -> None:
    low, high = np.array([-0.10204744736495351]), np.array([0.1])
    outer = float32_box(low, high, outward=True)
    inner = float32_box(low, high, outward=False)
    assert outer[0][0] <= low[0] and outer[1][0] >= high[0]
    assert inner[0][0] >= low[0] and inner[1][0] <= high[0]
    assert outer[0].dtype == np.float32 and inner[1].dtype == np.float32
