"""The graph-capable linear bound engine (auditai_ops/verify/linear_bounds/) against the single-file engine it replaced.

(a) Chains, pixel mode (bench_linear_bounds.py's problem: VAE decoder + CNN, batch 64, t in [-0.1, 0.1]):
    the engine at `--baseline` (auditai_ops/verify/linear_bounds.py loaded from git) and the working tree's
    package, on the same inputs, in rotating order within each repeat: bounds must agree to 1e-6 (the chain path is unchanged) and
    the median time of each is printed, for forward bounds and for the verifier's call (back-substitution with
    refine_below = 0), 1 and 4 pieces. The same CNN traced by torch.fx (a GraphModule chain) is bounded too:
    it is expanded into the same leaves, so the same bounds.
(b) A ResNet-style classifier in pixel mode (decoder + residual blocks with BatchNorm, MaxPool, concatenation and
    global average pooling, random weights), t in [-0.5, 0.5]: time, mean worst-margin lower bound and boxes proved,
    forward and back-substituted (through the graph).

Run: .venv/bin/python benchmarks/bench_graph_engine.py [--baseline HEAD] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx
from torch import nn

from auditai_ops.verify import linear_bounds
from auditai_ops.verify.engine import margin_specification

sys.path.insert(0, str(Path(__file__).parent))
from bench_linear_bounds import pixel_problem  # noqa: E402 - the benchmark's own problem
from bench_pixel import baseline_bounds  # noqa: E402 - the engine at a commit, loaded from git


def interleaved(paths: dict[str, Callable[[], torch.Tensor]], repeats: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median seconds and result of each path, the paths run in rotating order in every repeat (a shared machine's
    load falls on all alike)."""
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, torch.Tensor] = {}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            results[name] = paths[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, results


def median_time(function: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


class ResidualClassifier(nn.Module):
    """28x28 -> stem conv -> 2 residual blocks (BN) -> MaxPool -> cat with a 1x1 branch -> global average pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)  # 14x14
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(2))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 7x7
        self.side = nn.Conv2d(8, 4, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        for block in self.blocks:
            x = self.relu(x + block(x))
        x = self.pool(x)
        return self.fc(torch.flatten(self.gap(torch.cat([x, self.side(x)], dim=1)), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git commit whose single-file linear_bounds.py is the baseline")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old = baseline_bounds(args.baseline)
    decoder, cnn, z, direction, targets, source = pixel_problem(args.batch)
    C = margin_specification(targets, 10)
    t_low, t_high = torch.full((args.batch, 1), -0.1), torch.full((args.batch, 1), 0.1)
    inputs = linear_bounds.latent_line_input(z, direction)
    traced = torch.fx.symbolic_trace(cnn)
    print(f"(a) chains, pixel mode: {source}, batch {args.batch}, {args.threads} thread(s), medians of {args.repeats}")
    print(f"{'mode':<36} {'baseline s':>11} {'package s':>10} {'traced s':>9} {'max |diff|':>11}")
    modes = {
        "forward": {},
        "forward, 4 pieces": {"pieces": 4},
        "back-sub, refine_below=0": {"back_substitute": True, "refine_below": 0.0},
        "back-sub, refine_below=0, 4 pieces": {"back_substitute": True, "refine_below": 0.0, "pieces": 4},
    }
    for name, options in modes.items():
        paths = {
            "baseline": lambda o=options: old.margin_lower_bounds([decoder, cnn], inputs, C, t_low, t_high, **o),
            "package": lambda o=options: linear_bounds.margin_lower_bounds([decoder, cnn], inputs, C, t_low, t_high, **o),
            "traced": lambda o=options: linear_bounds.margin_lower_bounds([decoder, traced], inputs, C, t_low, t_high, **o),
        }
        seconds, results = interleaved(paths, args.repeats)
        diff = max((results["baseline"] - results[key]).abs().max().item() for key in ("package", "traced"))
        print(f"{name:<36} {seconds['baseline']:>11.3f} {seconds['package']:>10.3f} {seconds['traced']:>9.3f} {diff:>11.2e}")

    torch.manual_seed(0)
    resnet = ResidualClassifier()
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    resnet.eval()
    with torch.no_grad():
        targets = resnet(decoder(z)).argmax(dim=1)
    C = margin_specification(targets, 10)
    t_low, t_high = torch.full((args.batch, 1), -0.5), torch.full((args.batch, 1), 0.5)
    print(f"\n(b) ResNet-style classifier (residual blocks, BatchNorm, MaxPool, cat, global average pool), pixel mode, batch {args.batch}, t in [-0.5, 0.5]")
    print(f"{'mode':<36} {'seconds':>8} {'mean min_j lower':>17} {'proved':>7}")
    for name, options in {
        "forward": {},
        "back-sub (every row)": {"back_substitute": True},
        "back-sub, refine_below=0 (partial)": {"back_substitute": True, "refine_below": 0.0},
        "back-sub, refine_below=0, no partial": {"back_substitute": True, "refine_below": 0.0, "partial": False},
        "back-sub, 4 pieces": {"back_substitute": True, "pieces": 4},
    }.items():
        seconds, bounds = median_time(lambda o=options: linear_bounds.margin_lower_bounds([decoder, resnet], inputs, C, t_low, t_high, **o), args.repeats)
        worst = bounds.amin(dim=1)
        print(f"{name:<36} {seconds:>8.3f} {worst.mean().item():>17.4f} {int((worst > 0).sum()):>7}")


if __name__ == "__main__":
    main()
