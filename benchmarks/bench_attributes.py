"""Time Morpho-MNIST attribute measurement on 60,000 MNIST digits (no cache).

Prints images per second and the wall time for 60k; the target is under a minute on 2 cores.
Run: .venv/bin/python benchmarks/bench_attributes.py
"""

from __future__ import annotations

import time

import numpy as np

from auditai_ops.data.attributes import measure_attributes
from auditai_ops.data.datasets import load_mnist


def main() -> None:
    mnist = load_mnist()
    images = np.concatenate([mnist.train.images, mnist.valid.images])[:60_000]
    started = time.perf_counter()
    measured = measure_attributes(images)
    seconds = time.perf_counter() - started
    print(f"images: {len(images)}  wall: {seconds:.1f} s  rate: {len(images) / seconds:,.0f} images/s")
    for name, values in measured.items():
        print(f"  {name:10s} mean {np.nanmean(values):8.3f}  std {np.nanstd(values):7.3f}  NaN {np.isnan(values).mean():.4f}")


if __name__ == "__main__":
    main()
