"""Throughput and tightness of each bound method on the latent-mode verification problem.

Head 16-256-256-10 (random weights, fixed seed), batch 4096, one direction, t in
[-0.5, 0.5]. For each bound method the verifier offers (ours, linear in t: forward and
forward+backward; auto_LiRPA: IBP, CROWN, CROWN-IBP, alpha-CROWN) prints, from one run:
throughput as a ratio to a plain forward pass of the same head and batch, and the mean width
(upper - lower) of the worst margin's bounds, next to the empirical width from 1,000 sampled
t. Runs on CUDA too with --device cuda. benchmarks/bench_linear_bounds.py adds splitting and
pixel mode; benchmarks/bench_branch_and_bound.py the whole verifier.
Run: .venv/bin/python benchmarks/bench_verify.py [--device cuda] [--batch 4096]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from auditai_ops.classifier.head import build_head
from auditai_ops.verify.engine import LINEAR_METHODS, margin_specification, margins
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.linear_bounds import latent_line_input
from auditai_ops.verify.linear_bounds import margin_lower_bounds as linear_margin_lower_bounds
from auditai_ops.verify.lirpa_compat import METHODS, build_bounded_module, compute_margin_lower_bounds


def _timed(function, repeats: int, device: torch.device) -> float:  # noqa: ANN001 - any callable
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--half-width", type=float, default=0.5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    head = build_head(16, (256, 256), 10).eval().to(device)
    direction = torch.nn.functional.normalize(torch.randn(1, 16), dim=1).to(device)
    line = LatentLine(head, direction).to(device).eval()
    z = torch.randn(args.batch, 16, device=device)
    with torch.no_grad():
        targets = head(z).argmax(dim=1)
    spec = margin_specification(targets, 10)
    low = torch.full((args.batch, 1), -args.half_width, device=device)
    high = -low
    centre = torch.zeros_like(low)

    with torch.no_grad():
        forward = _timed(lambda: line(centre, z), 20, device)
        ts = torch.linspace(-args.half_width, args.half_width, 1000, device=device)
        sampled = torch.stack([margins(line(torch.full_like(low, float(t)), z), targets) for t in ts])
    empirical = float((sampled.max(dim=0).values - sampled.min(dim=0).values).mean())
    print(f"device {device}, batch {args.batch}, t in [-{args.half_width}, {args.half_width}]")
    print(f"forward pass: {forward * 1e3:.2f} ms  ({args.batch / forward:,.0f} samples/s)")
    print(f"empirical width of the worst margin (1,000 sampled t): {empirical:.4f}")
    print(f"{'method':28s} {'time (ms)':>10s} {'throughput/forward':>19s} {'mean width':>11s} {'proved':>7s}")
    bounded = build_bounded_module(line, (centre[:2], z[:2]), device)
    variants = [("forward", "forward", None), ("forward+backward", "forward+backward", None), ("forward+backward, rows <= 0", "forward+backward", 0.0)]
    variants += [(method, method, None) for method in METHODS]
    for label, method, refine_below in variants:
        def lower(sign: float, method: str = method, refine_below: float | None = refine_below) -> torch.Tensor:
            if method in LINEAR_METHODS:
                line_input = latent_line_input(z, direction)
                return linear_margin_lower_bounds(head, line_input, sign * spec, low, high, back_substitute=method == "forward+backward", refine_below=refine_below)
            return compute_margin_lower_bounds(bounded, (centre, z), low, high, sign * spec, method)

        seconds = _timed(lambda: lower(1.0), 1 if method == "alpha-CROWN" else 3, device)
        worst_lower = lower(1.0).min(dim=1).values
        worst_upper = (-lower(-1.0)).min(dim=1).values
        width = float((worst_upper - worst_lower).mean())
        proved = float((worst_lower > 0).float().mean())
        print(f"{label:28s} {seconds * 1e3:10.1f} {forward / seconds:19.4f} {width:11.4f} {proved:7.3f}")
    print("proved: share of samples whose every margin lower bound is > 0 (what the verifier needs).")
    print("'rows <= 0' back-substitutes only the margins forward mode leaves <= 0, as the verifier does; its width is looser by design.")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
