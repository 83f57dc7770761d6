"""Soundness: a verified verdict is never contradicted by dense sampling.

Random heads and directions; for every verified sample, 1,000 evenly spaced t across the
interval (endpoints included) must keep the target class. Every falsified sample's
counterexample must misclassify in a plain forward pass.
"""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditai_ops.classifier.head import build_head
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Budget, Falsifier, LineVerifier

CPU = torch.device("cpu")


def _check(seed: int, half_width: float, methods: tuple[str, ...], hidden: tuple[int, ...]) -> dict[str, int]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    latent_dim, classes = 6, 4
    head = build_head(latent_dim, hidden, classes).eval()
    direction = rng.normal(size=latent_dim)
    direction /= np.linalg.norm(direction)
    latents = rng.normal(size=(64, latent_dim)).astype(np.float32)
    with torch.no_grad():
        targets = head(torch.from_numpy(latents)).argmax(dim=1).numpy()
    low, high = -half_width, half_width * 0.5
    out = LineVerifier(head, direction, CPU, batch_size=32).verify(latents, targets, np.array([low]), np.array([high]), methods, Falsifier(9, 5, 2), Budget(8), 1e-5)

    ts = torch.linspace(low, high, 1000)
    d = torch.from_numpy(direction.astype(np.float32))
    verified = np.flatnonzero(out.verdicts == VERIFIED)
    with torch.no_grad():
        points = torch.from_numpy(latents[verified])[:, None, :] + ts[None, :, None] * d
        predictions = head(points).argmax(dim=-1).numpy()
    assert (predictions == targets[verified, None]).all(), "a verified sample flips under sampling"

    falsified = np.flatnonzero(out.verdicts == FALSIFIED)
    with torch.no_grad():
        cex = torch.from_numpy(latents[falsified]) + torch.from_numpy(out.counterexample_t[falsified].astype(np.float32)) * d
        assert (head(cex).argmax(dim=1).numpy() != targets[falsified]).all()
    assert np.all(out.counterexample_t[falsified] >= low) and np.all(out.counterexample_t[falsified] <= high)
    return {v: int(np.sum(out.verdicts == v)) for v in (VERIFIED, FALSIFIED)}


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    half_width=st.floats(0.01, 2.0),
    methods=st.sampled_from([("IBP",), ("CROWN",), ("IBP", "CROWN"), ("CROWN-IBP",), ("alpha-CROWN",), ("forward",), ("forward+backward",), ("forward", "forward+backward")]),
    hidden=st.sampled_from([(16,), (32, 32), (8, 8, 8)]),
)
def test_verified_never_contradicted_by_sampling(seed: int, half_width: float, methods: tuple[str, ...], hidden: tuple[int, ...]) -> None:
    _check(seed, half_width, methods, hidden)


def test_the_soundness_check_is_not_vacuous() -> None:
    """At a small width most samples verify, at a large one some are falsified: the check above sees both."""
    narrow = _check(0, 0.02, ("IBP", "CROWN"), (32, 32))
    wide = _check(0, 3.0, ("IBP", "CROWN"), (32, 32))
    assert narrow[VERIFIED] > 40 and wide[FALSIFIED] > 5
