"""The verification engine on networks whose answers are known by hand."""

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier, float32_box, margin_specification, margins, resolve_device

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


GRID_ONLY = Falsifier(grid_points=5, steps=0, restarts=1)
SEARCH = Falsifier(grid_points=9, steps=20, restarts=4)


@pytest.mark.parametrize("methods", [("IBP",), ("CROWN",), ("IBP", "CROWN")])
def test_hand_computable_linear_verdicts(methods: tuple[str, ...]) -> None:
    """Margin z0 + t on t in [-0.5, 0.5]: verified iff z0 > 0.5, falsified iff z0 < 0.5 (at t = -0.5); 0.5 itself stays unknown."""
    verifier = LineVerifier(_linear_two_class(), np.array([1.0, 0.0]), CPU, batch_size=2)
    latents = np.array([[2.0, 0.0], [0.6, 3.0], [0.4, 0.0], [-1.0, 0.0], [0.5, 0.0]], np.float32)
    out = verifier.verify(latents, np.ones(5, np.int64), np.array([-0.5]), np.array([0.5]), methods, GRID_ONLY, Budget(max_pieces=8), 1e-5)
    assert out.verdicts.tolist() == [VERIFIED, VERIFIED, FALSIFIED, FALSIFIED, UNKNOWN]
    np.testing.assert_allclose(out.margin_lower_bounds[:2], [1.5, 0.1], atol=1e-5)
    assert out.margin_lower_bounds[4] == pytest.approx(0.0, abs=1e-5)
    assert out.pieces.tolist()[:2] == [1, 1] and out.pieces[4] == 8
    np.testing.assert_allclose(out.counterexample_t[2:4, 0], [-0.5, -0.5])
    assert out.counterexample_class[2:4].tolist() == [0, 0]
    np.testing.assert_allclose(out.counterexample_margin[2:4], [-0.1, -1.5], atol=1e-6)
    assert out.decided_by[2] == "search" and out.decided_by[0] in methods


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
    out = verifier.verify(np.zeros((3, 1), np.float32), np.zeros(3, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP", "CROWN"), Falsifier(65, 0, 1), Budget(), 1e-5)
    assert out.verdicts.tolist() == [FALSIFIED] * 3
    assert np.all(np.abs(out.counterexample_t[:, 0] - 0.3) < 0.04)
    with torch.no_grad():
        logits = head(torch.tensor(out.counterexample_t, dtype=torch.float32))
    assert logits.argmax(dim=1).tolist() == [1, 1, 1]


@pytest.mark.parametrize("max_pieces", [1, 4, 256])
def test_planted_failure_narrower_than_the_grid_is_never_verified(max_pieces: int) -> None:
    """A failure 0.005 wide hides between grid points; branch and bound must find it given pieces, and never prove the box."""
    head = _bump_head(centre=0.31, width=0.004)
    verifier = LineVerifier(head, np.array([1.0]), CPU, batch_size=64)
    out = verifier.verify(np.zeros((4, 1), np.float32), np.zeros(4, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP", "CROWN"), GRID_ONLY, Budget(max_pieces), 1e-5)
    assert VERIFIED not in out.verdicts.tolist()
    if max_pieces == 256:
        assert out.verdicts.tolist() == [FALSIFIED] * 4
        assert np.all(np.abs(out.counterexample_t[:, 0] - 0.31) < 0.003)


def _cancelling_head() -> nn.Module:
    """Margin 0.5 + relu(t) - relu(t) = 0.5 everywhere; IBP loses the cancellation, by the width of the box."""
    first = nn.Linear(1, 2)
    second = nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [1.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        second.bias.copy_(torch.tensor([0.5, 0.0]))
    return nn.Sequential(first, nn.ReLU(), second).eval()


def test_branch_and_bound_proves_what_one_interval_cannot() -> None:
    """IBP on [-1, 1] bounds the margin below by 0.5 - 1; pieces of width < 0.5 prove it."""
    verifier = LineVerifier(_cancelling_head(), np.array([1.0]), CPU, batch_size=64)
    latents, targets, low, high = np.zeros((2, 1), np.float32), np.zeros(2, np.int64), np.array([-1.0]), np.array([1.0])
    single = verifier.verify(latents, targets, low, high, ("IBP",), GRID_ONLY, Budget(max_pieces=1), 1e-5)
    split = verifier.verify(latents, targets, low, high, ("IBP",), GRID_ONLY, Budget(max_pieces=64), 1e-5)
    assert single.verdicts.tolist() == [UNKNOWN, UNKNOWN] and single.margin_lower_bounds[0] == pytest.approx(-0.5)
    assert split.verdicts.tolist() == [VERIFIED, VERIFIED] and 4 < split.pieces[0] <= 16
    assert split.margin_lower_bounds[0] > 0 and split.decided_by[0] == "IBP"


def test_an_exhausted_time_budget_leaves_samples_unknown() -> None:
    verifier = LineVerifier(_cancelling_head(), np.array([1.0]), CPU, batch_size=64)
    out = verifier.verify(np.zeros((2, 1), np.float32), np.zeros(2, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP",), GRID_ONLY, Budget(64, seconds=0.0), 1e-5)
    assert out.verdicts.tolist() == [UNKNOWN, UNKNOWN] and out.pieces.tolist() == [1, 1]


def _sum_head() -> nn.Module:
    """Two classes on a 2-d latent: the margin of class 0 is 1 - z0 - z1."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
    return nn.Sequential(layer).eval()


def test_two_directions_form_a_box() -> None:
    verifier = LineVerifier(_sum_head(), np.eye(2), CPU, batch_size=8)
    latents, targets = np.zeros((1, 2), np.float32), np.zeros(1, np.int64)
    safe = verifier.verify(latents, targets, np.array([-1.0, -1.0]), np.array([0.4, 0.4]), ("CROWN",), SEARCH, Budget(), 1e-5)
    assert safe.verdicts.tolist() == [VERIFIED] and safe.margin_lower_bounds[0] == pytest.approx(0.2, abs=1e-5)
    unsafe = verifier.verify(latents, targets, np.array([-1.0, -1.0]), np.array([0.6, 0.6]), ("CROWN",), SEARCH, Budget(), 1e-5)
    assert unsafe.verdicts.tolist() == [FALSIFIED]
    assert unsafe.counterexample_t[0].sum() > 1.0


def test_gradient_search_finds_what_the_grid_misses() -> None:
    """The dip around 0.31 fails on (0.21, 0.41), between the grid points 0 and 0.5; its slope leads the search there."""
    head = _bump_head(centre=0.31, width=0.3)
    verifier = LineVerifier(head, np.array([1.0]), CPU, batch_size=8)
    grid_only = verifier.verify(np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP",), GRID_ONLY, Budget(1), 1e-5)
    searched = verifier.verify(np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP",), Falsifier(5, 20, 1), Budget(1), 1e-5)
    assert grid_only.verdicts.tolist() == [UNKNOWN]
    assert searched.verdicts.tolist() == [FALSIFIED]


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


def _absolute_value_head() -> nn.Module:
    """Margin 1.2 - |t| with |t| = relu(t) + relu(-t): IBP bounds |t| on [-1, 1] by 2, CROWN by 1."""
    first = nn.Linear(1, 2)
    second = nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))
        second.bias.copy_(torch.tensor([1.2, 0.0]))
    return nn.Sequential(first, nn.ReLU(), second).eval()


def test_refine_method_gets_one_last_try_on_exhausted_pieces() -> None:
    verifier = LineVerifier(_absolute_value_head(), np.array([1.0]), CPU, batch_size=8)
    args = (np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.array([-1.0]), np.array([1.0]), ("IBP",), GRID_ONLY, Budget(max_pieces=1), 1e-5)
    assert verifier.verify(*args).verdicts.tolist() == [UNKNOWN]
    refined = verifier.verify(*args, refine_method="CROWN")
    assert refined.verdicts.tolist() == [VERIFIED] and refined.decided_by.tolist() == ["CROWN"]
    assert refined.margin_lower_bounds[0] == pytest.approx(0.2, abs=1e-5)
