"""Throughput and tightness of each bound method on the latent-mode verification problem.

Head 16-256-256-10 (random weights, fixed seed), batch 4096, one direction, t in
[-0.5, 0.5]. For each bound method the verifier offers (ours, linear in t: forward,
forward+backward, with the compiled kernels and without; auto_LiRPA: IBP, CROWN, CROWN-IBP,
alpha-CROWN) prints, from one run:
the time of the margin lower bounds, throughput as a ratio to a plain forward pass of the
same head and batch (timed in pairs, see `_paired`), the mean width
(upper - lower) of the worst margin's bounds, next to the empirical width from 1,000 sampled
t, and the share of samples proved. Runs on CUDA too with --device cuda.
benchmarks/bench_linear_bounds.py adds splitting and pixel mode;
benchmarks/bench_branch_and_bound.py the whole verifier.
Run: .venv/bin/python benchmarks/bench_verify.py [--device cuda] [--batch 4096] [--threads 1] [--skip-slow]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from auditai_ops.allocator import keep_freed_memory
from auditai_ops.classifier.head import build_head
from auditai_ops.config import VerifyConfig
from auditai_ops.verify.engine import linear_margin_bounds, margin_specification, margins
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.linear_bounds import latent_line_input
from auditai_ops.verify.linear_bounds import margin_lower_bounds as linear_margin_lower_bounds
from auditai_ops.verify.lirpa_compat import METHODS, build_bounded_module, compute_margin_lower_bounds

Bounds = Callable[[torch.Tensor], torch.Tensor]


def _elapsed(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _paired(method: Callable[[], object], forward: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float, float]:
    """(median time of `method`, median time of a forward pass, median ratio forward / method), from `repeats` pairs.

    Each pair times the method and, right before it, a forward pass (the fastest of three): on a
    machine shared with other jobs both then see about the same load, and the median ratio is
    far steadier than a ratio of two timings taken minutes apart.
    """
    method()
    forward()
    pairs = []
    for _ in range(repeats):
        forward_seconds = min(_elapsed(forward, device) for _ in range(3))
        pairs.append((_elapsed(method, device), forward_seconds))
    times, forwards = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    return float(times.median()), float(forwards.median()), float((forwards / times).median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--half-width", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-slow", action="store_true", help="leave out auto_LiRPA's CROWN and alpha-CROWN (minutes)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds as they are (auditai raises them: auditai_ops.allocator)")
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    print(f"allocator: {'freed memory kept in the process, as auditai does' if kept else 'glibc defaults'}")
    if args.threads:
        torch.set_num_threads(args.threads)
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
    min_margin = VerifyConfig().min_margin
    line_input = latent_line_input(z, direction)

    def forward_pass() -> None:
        with torch.no_grad():
            line(centre, z)

    with torch.no_grad():
        ts = torch.linspace(-args.half_width, args.half_width, 1000, device=device)
        sampled = torch.stack([margins(line(torch.full_like(low, float(t)), z), targets) for t in ts])
    empirical = float((sampled.max(dim=0).values - sampled.min(dim=0).values).mean())

    def ours(**options: object) -> Bounds:
        return lambda c: linear_margin_lower_bounds(head, line_input, c, low, high, **options)  # type: ignore[arg-type]

    bounded = build_bounded_module(line, (centre[:2], z[:2]), device)

    def lirpa(method: str) -> Bounds:
        return lambda c: compute_margin_lower_bounds(bounded, (centre, z), low, high, c, method)  # type: ignore[arg-type]

    every_margin = ours(back_substitute=True)
    # (label, margin lower bounds timed on C, lower bounds of -C for the upper bounds, repeats); None: no width (see the notes).
    variants: list[tuple[str, Bounds, Bounds | None, int]] = [
        ("forward", ours(), ours(), args.repeats),
        ("forward+backward, every margin", every_margin, every_margin, args.repeats),
        ("default, worst margin", ours(back_substitute=True, minimum_only=True), every_margin, args.repeats),
        ("default, as the verifier calls it", lambda c: linear_margin_bounds(head, line_input, c, low, high, "forward+backward", min_margin), None, args.repeats),
        ("the same, general path", ours(back_substitute=True, refine_below=min_margin, compiled=False), None, args.repeats),
    ]
    for method in METHODS:
        if args.skip_slow and method in ("CROWN", "alpha-CROWN"):
            continue
        variants.append((f"auto_LiRPA {method}", lirpa(method), lirpa(method), 1 if method in ("CROWN", "alpha-CROWN") else args.repeats))

    started = time.perf_counter()
    linear_margin_bounds(head, latent_line_input(z[:8], direction), spec[:8], low[:8], high[:8], "forward+backward", min_margin)
    print(f"first call of the compiled kernels (numba compiles them, or loads its cache): {time.perf_counter() - started:.2f} s")
    print(f"device {device}, {torch.get_num_threads()} thread(s), batch {args.batch}, t in [-{args.half_width}, {args.half_width}]")
    print(f"empirical width of the worst margin (1,000 sampled t): {empirical:.4f}")
    print(f"{'method':36s} {'time (ms)':>10s} {'forward (ms)':>13s} {'throughput/forward':>19s} {'mean width':>11s} {'proved':>7s}")
    proved_by: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for label, lower, upper_from, repeats in variants:
            seconds, forward, ratio = _paired(lambda lower=lower: lower(spec), forward_pass, repeats, device)
            worst_lower = lower(spec).min(dim=1).values
            proved_by[label] = worst_lower > min_margin
            width = "-" if upper_from is None else f"{float(((-upper_from(-spec)).min(dim=1).values - worst_lower).mean()):.4f}"
            proved = float(proved_by[label].float().mean())
            print(f"{label:36s} {seconds * 1e3:10.1f} {forward * 1e3:13.2f} {ratio:19.4f} {width:>11s} {proved:7.3f}", flush=True)
    same = bool((proved_by["default, worst margin"] == proved_by["default, as the verifier calls it"]).all())
    print("Notes:")
    print("- time: median of the repeats; forward: a plain forward pass of the same head and batch timed right before each repeat;")
    print("  throughput/forward: the median of those paired ratios.")
    print("- width: mean over samples of upper - lower for the worst margin min_j m_j: lower = min_j of the method's margin")
    print("  lower bounds on C, upper = min_j of its margin upper bounds (lower bounds on -C); the time is that of the lower bounds on C.")
    print(f"- proved: share of samples whose worst-margin lower bound is > min_margin = {min_margin:g} (what the verifier needs).")
    print("- default = VerifyConfig().methods = forward+backward. 'worst margin' back-substitutes only the margins that can be the")
    print("  minimum (the lower bound of min_j equals that of back-substituting every margin); its upper bounds (untimed) back-substitute")
    print("  every margin of -C. 'as the verifier calls it' back-substitutes only the margins that decide min_j > min_margin; margins")
    print("  that forward bounds already prove keep those, so its bounds are looser by design (no width), and it proves exactly the")
    print(f"  same samples as 'worst margin': {same}.")
    print("- on the CPU, 'default' runs the compiled kernels for this head (Linear-ReLU-Linear-ReLU-Linear, one direction:")
    print("  auditai_ops/verify/mlp_kernels.py); 'general path' is the same computation by linear_bounds alone (compiled=False).")


if __name__ == "__main__":
    main()
