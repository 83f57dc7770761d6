"""Counterexample images: the decoded original next to the decoded counterexample, one PNG per sample.

`counterexample_pngs` decodes and encodes them (the work: a shard does it for its samples),
`write_counterexample_images` writes them into the audit folder (merge does only that).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from torch import nn

from auditai_ops.fileio import write_files
from auditai_ops.latent.mapping import decode
from auditai_ops.layout import COUNTEREXAMPLES_DIR
from auditai_ops.report.images import grid_png
from auditai_ops.verify.engine import FALSIFIED
from auditai_ops.verify.unit_tests import UnitTestResult


def image_name(sample_id: str) -> str:
    """A file name for a sample id ('mnist:test:17' -> 'mnist_test_17.png')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id) + ".png"


def image_path(test_name: str, sample_id: str) -> str:
    """Where a unit test's counterexample image of a sample goes, relative to the audit folder."""
    return (Path(COUNTEREXAMPLES_DIR) / test_name / image_name(sample_id)).as_posix()


def counterexample_pngs(decoder: nn.Module, result: UnitTestResult) -> dict[str, bytes]:
    """Decode z and z + t* D for every falsified sample: {sample id: PNG bytes (grayscale or RGB, as the decoder's images)}, in sample order."""
    rows = np.flatnonzero(result.outcomes.verdicts == FALSIFIED)
    if not len(rows):
        return {}
    latents = result.samples.latents[rows].astype(np.float32)
    moved = latents + result.outcomes.counterexample_t[rows].astype(np.float32) @ result.test.matrix
    originals, counterexamples = decode(decoder, latents), decode(decoder, moved.astype(np.float32))
    return {str(result.samples.ids[row]): grid_png(np.stack([originals[i], counterexamples[i]])[None], scale=4) for i, row in enumerate(rows)}


def write_counterexample_images(test_name: str, pngs: dict[str, bytes], out_dir: Path) -> dict[str, str]:
    """Write the PNGs of one unit test into `out_dir`; return {sample id: PNG path relative to out_dir}."""
    if not pngs:
        return {}
    write_files(Path(out_dir) / COUNTEREXAMPLES_DIR / test_name, {image_name(sample_id): png for sample_id, png in pngs.items()})
    return {sample_id: image_path(test_name, sample_id) for sample_id in pngs}


def save_counterexample_images(decoder: nn.Module, result: UnitTestResult, out_dir: Path) -> dict[str, str]:
    """Decode, encode and write the counterexample images of every falsified sample; return {sample id: PNG path relative to out_dir}."""
    return write_counterexample_images(result.test.spec.name, counterexample_pngs(decoder, result), out_dir)
