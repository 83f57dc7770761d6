"""CUDA: verification on the GPU decides every sample as on the CPU (marked `gpu`: skipped without a CUDA device, see tests/conftest.py)."""

import copy

import numpy as np
import pytest
import torch

from auditai_ops.classifier.head import build_head
from auditai_ops.config import RangeConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.verify.engine import FALSIFIED, VERIFIED
from auditai_ops.verify.unit_tests import AuditSamples, ResolvedUnitTest, run_unit_test


@pytest.mark.gpu
@pytest.mark.parametrize("low, high", [(-0.5, 0.5), (-2.0, 1.0)])
def test_cuda_verdicts_equal_cpu_verdicts(low: float, high: float) -> None:
    """A tiny head (6-16-16-4) and 64 random samples: on cuda (general path) and on the CPU the same samples are verified, falsified, unknown."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = build_head(6, (16, 16), 4).eval()
    vector = rng.normal(size=6).astype(np.float32)
    vector /= np.linalg.norm(vector)
    spec = UnitTestConfig(name="t", direction="d", range=RangeConfig(low=low, high=high, units="latent"), property="clean_prediction")
    test = ResolvedUnitTest(spec, (Direction("d", "pca", vector, "latent", None),), np.array([low]), np.array([high]))
    samples = AuditSamples(np.array([f"s{i}" for i in range(64)]), rng.normal(size=(64, 6)).astype(np.float32), np.zeros(64, np.int64))
    settings = VerifyConfig(samples=64, block_size=16, batch_size=32, max_pieces=16)
    on_cpu = run_unit_test(test, head, samples, settings, torch.device("cpu"))
    on_cuda = run_unit_test(test, copy.deepcopy(head).to("cuda"), samples, settings.model_copy(update={"device": "cuda"}), torch.device("cuda"))
    assert np.array_equal(on_cuda.predictions, on_cpu.predictions)
    differ = np.flatnonzero(on_cuda.outcomes.verdicts != on_cpu.outcomes.verdicts)
    assert not len(differ), f"samples {differ.tolist()}: cuda {on_cuda.outcomes.verdicts[differ].tolist()}, cpu {on_cpu.outcomes.verdicts[differ].tolist()}"
    assert {VERIFIED, FALSIFIED} & set(on_cpu.outcomes.verdicts.tolist()), "the comparison must decide some samples"
    verified = on_cpu.outcomes.verdicts == VERIFIED
    assert np.allclose(on_cuda.outcomes.margin_lower_bounds[verified], on_cpu.outcomes.margin_lower_bounds[verified], rtol=1e-3, atol=1e-4)
