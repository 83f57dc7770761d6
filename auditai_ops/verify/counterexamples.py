"""Counterexample images: the decoded original next to the decoded counterexample, one PNG per sample."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from torch import nn

from auditai_ops.latent.mapping import decode
from auditai_ops.layout import COUNTEREXAMPLES_DIR
from auditai_ops.report.images import save_grid_png
from auditai_ops.verify.engine import FALSIFIED
from auditai_ops.verify.unit_tests import UnitTestResult


def image_name(sample_id: str) -> str:
    """A file name for a sample id ('mnist:test:17' -> 'mnist_test_17.png')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id) + ".png"


def save_counterexample_images(decoder: nn.Module, result: UnitTestResult, out_dir: Path) -> dict[str, str]:
    """Decode z and z + t* D for every falsified sample; return {sample id: PNG path relative to out_dir}."""
    rows = np.flatnonzero(result.outcomes.verdicts == FALSIFIED)
    if not len(rows):
        return {}
    latents = result.samples.latents[rows].astype(np.float32)
    moved = latents + result.outcomes.counterexample_t[rows].astype(np.float32) @ result.test.matrix
    originals, counterexamples = decode(decoder, latents), decode(decoder, moved.astype(np.float32))
    folder = Path(COUNTEREXAMPLES_DIR) / result.test.spec.name
    paths = {}
    for i, row in enumerate(rows):
        sample_id = str(result.samples.ids[row])
        relative = folder / image_name(sample_id)
        save_grid_png(np.stack([originals[i], counterexamples[i]])[None], Path(out_dir) / relative, scale=4)
        paths[sample_id] = relative.as_posix()
    return paths
