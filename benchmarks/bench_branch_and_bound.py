"""The unknown fraction against the branch-and-bound budget, on a finished audit run.

For one direction and range (default: slant within +-10 degrees) on the run's test
samples, runs the verifier with max_pieces = 1, 2, 4, ..., 64 and prints, from one run each,
the certified, falsified and unknown fractions, the wall time and samples per second. Latent
mode by default; --pixel audits head o encoder through the decoder (samples per second
through the decoder); --device cuda runs it on the GPU.
Run: .venv/bin/python benchmarks/bench_branch_and_bound.py --run runs/mnist [--samples 1000] [--pixel] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from auditai_ops.allocator import keep_freed_memory
from auditai_ops.config import GeneratorConfig, InputsConfig, ModelConfig, RangeConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import load_directions
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier, resolve_device
from auditai_ops.verify.step import load_test_samples
from auditai_ops.verify.unit_tests import resolve_unit_tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/mnist"))
    parser.add_argument("--direction", default="slant")
    parser.add_argument("--low", type=float, default=-10.0)
    parser.add_argument("--high", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(VerifyConfig().methods))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pixel", action="store_true")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds as they are (auditai raises them: auditai_ops.allocator)")
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    print(f"allocator: {'freed memory kept in the process, as auditai does' if kept else 'glibc defaults'}")

    inputs = resolve_inputs(args.run, InputsConfig())
    generator = load_generator(GeneratorConfig(), inputs.vae)
    network = build_audited_model(ModelConfig(mode="pixel" if args.pixel else "latent"), generator, inputs).network
    spec = UnitTestConfig(name="bench", direction=(args.direction,), range=(RangeConfig(low=args.low, high=args.high),))
    test = resolve_unit_tests((spec,), load_directions(inputs.directions))[0]
    samples = load_test_samples(inputs.latents, seed=0).first(args.samples)
    targets = samples.labels
    verifier = LineVerifier(network, test.matrix, resolve_device(args.device), batch_size=1024)
    mode = "pixel" if args.pixel else "latent"
    print(f"{args.direction} in [{args.low:g}, {args.high:g}] = latent [{test.t_low[0]:.3f}, {test.t_high[0]:.3f}], {len(targets)} samples, {mode} mode, methods {args.methods}")
    print(f"{'max_pieces':>10s} {'certified':>10s} {'falsified':>10s} {'unknown':>8s} {'seconds':>8s} {'samples/s':>10s}")
    for budget in (1, 2, 4, 8, 16, 32, 64):
        started = time.perf_counter()
        out = verifier.verify(samples.latents, targets, test.t_low, test.t_high, args.methods, Falsifier(), Budget(budget, float("inf")), 1e-5)
        seconds = time.perf_counter() - started
        fractions = [float(np.mean(out.verdicts == v)) for v in (VERIFIED, FALSIFIED, UNKNOWN)]
        print(f"{budget:10d} {fractions[0]:10.3f} {fractions[1]:10.3f} {fractions[2]:8.3f} {seconds:8.1f} {len(targets) / seconds:10.1f}")


if __name__ == "__main__":
    main()
