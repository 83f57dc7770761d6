"""Low-dimensional forward bounds (verify/linear_bounds.py) against auto_LiRPA, on both verification modes.

(a) latent mode, as benchmarks/bench_verify.py: head 16-256-256-10 (random weights, seed 0),
    batch 4096, one direction, t in [-0.5, 0.5];
(b) pixel mode: a 16-dim latent decoded to 28x28 by the VAE decoder (the trained one in
    /tmp/mnist2/latent/vae.safetensors if present, else random init), then a small CNN
    (Conv2d(1,16,4,2,1), ReLU, Conv2d(16,32,4,2,1), ReLU, Flatten, Linear(1568,100), ReLU,
    Linear(100,10); random, seed 0), batch 64, t in [-0.1, 0.1].

For every method, from one run: time of the margin lower bounds (C = margin specification, as
the verifier asks), throughput as a ratio to a plain forward pass of the same model and batch,
and the mean width of the worst margin's bounds (min_j upper_j - min_j lower_j, upper from the
lower bound of -C), next to the empirical width from 1,000 sampled t. Our method is shown
with the t-interval split into 1, 2, 3, 4, 8, 16 equal pieces bounded as one batch.

Peak memory (pixel mode): torch's CPU allocator has no peak counter and tracemalloc does not
see its buffers, so every method runs in a fresh subprocess that builds the model and inputs,
resets the kernel's resident high-water mark (writes 5 to /proc/self/clear_refs), computes the
bounds, and reports VmHWM - VmRSS-before from /proc/self/status: the extra resident memory the
bound computation needed at its peak. (getrusage's ru_maxrss cannot be used: Linux carries it
over fork and exec, so a worker started by a parent that once held 5 GB reports 5 GB.)
auto_LiRPA CROWN needs about 0.14 GB per sample here (8.6 GB at batch 64, more than this
machine can spare), so the auto_LiRPA methods run on the first --lirpa-batch samples; widths
are compared on those same samples.

Run: .venv/bin/python benchmarks/bench_linear_bounds.py [--section head|pixel|all] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from auditai_ops.allocator import keep_freed_memory
from auditai_ops.classifier.head import build_head
from auditai_ops.latent.vae import VAE, VAEArchitecture
from auditai_ops.verify.engine import margin_specification, margins
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.linear_bounds import flatten_layers, latent_line_input, margin_lower_bounds
from auditai_ops.verify.lirpa_compat import build_bounded_module, compute_margin_lower_bounds

VAE_PATH = Path("/tmp/mnist2/latent/vae.safetensors")
LIRPA = ("IBP", "CROWN", "CROWN-IBP")
OURS: dict[str, dict[str, object]] = {
    "ours forward": {"interval": False},
    "ours forward+interval": {"interval": True},
    "ours back-substitute": {"interval": False, "back_substitute": True},
}
ONE_BATCH = "ours back-substitute, one batch"  # pixel mode only: no automatic chunks (worst-case memory)
OURS_PIXEL = {**OURS, ONE_BATCH: {"interval": False, "back_substitute": True, "max_boxes": 1 << 30}}


def _timed(function: Callable[[], object], repeats: int) -> float:
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def _worst_width(lower: Callable[[torch.Tensor], torch.Tensor], spec: torch.Tensor) -> torch.Tensor:
    """Per sample: min_j upper_j - min_j lower_j, the width of the worst margin's bounds."""
    worst_lower = lower(spec).min(dim=1).values
    worst_upper = (-lower(-spec)).min(dim=1).values
    return worst_upper - worst_lower


def _empirical(model: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, direction: torch.Tensor, targets: torch.Tensor, half: float) -> torch.Tensor:
    with torch.no_grad():
        sampled = torch.stack([margins(model(z + float(t) * direction), targets) for t in torch.linspace(-half, half, 1000)])
    return sampled.max(dim=0).values - sampled.min(dim=0).values


# --------------------------------------------------------------------------------------------
# (a) latent mode


def head_section(batch: int, pieces: list[int]) -> None:
    half = 0.5
    torch.manual_seed(0)  # as bench_verify.py
    head = build_head(16, (256, 256), 10).eval()
    direction = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
    line = LatentLine(head, direction).eval()
    z = torch.randn(batch, 16)
    with torch.no_grad():
        targets = head(z).argmax(dim=1)
    spec = margin_specification(targets, 10)
    low = torch.full((batch, 1), -half)
    high, centre = -low, torch.zeros_like(low)
    with torch.no_grad():
        forward = _timed(lambda: line(centre, z), 20)
    empirical = float(_empirical(head, z, direction, targets, half).mean())
    print(f"(a) latent mode: head 16-256-256-10, batch {batch}, one direction, t in [-{half}, {half}], {torch.get_num_threads()} thread(s)")
    print(f"forward pass {forward * 1e3:.2f} ms; empirical width of the worst margin (1,000 sampled t): {empirical:.4f}")
    print(f"{'method':34s} {'pieces':>6s} {'time (ms)':>10s} {'throughput/forward':>19s} {'mean width':>11s} {'width/empirical':>16s}")

    def row(name: str, count: int | str, seconds: float, width: float) -> None:
        print(f"{name:34s} {count!s:>6s} {seconds * 1e3:10.1f} {forward / seconds:19.4f} {width:11.4f} {width / empirical:16.2f}", flush=True)

    bounded = build_bounded_module(line, (centre[:2], z[:2]))
    for method in LIRPA:

        def lirpa(c: torch.Tensor, method: str = method) -> torch.Tensor:
            return compute_margin_lower_bounds(bounded, (centre, z), low, high, c, method)  # type: ignore[arg-type]

        seconds = _timed(lambda: lirpa(spec), 3 if method == "IBP" else 1)
        row(f"auto_LiRPA {method}", "-", seconds, float(_worst_width(lirpa, spec).mean()))
    inputs = latent_line_input(z, direction)
    layers = flatten_layers(head)
    for name, options in OURS.items():
        for count in pieces:

            def ours(c: torch.Tensor, options: dict[str, object] = options, count: int = count) -> torch.Tensor:
                return margin_lower_bounds(layers, inputs, c, low, high, pieces=count, **options)  # type: ignore[arg-type]

            seconds = _timed(lambda: ours(spec), 2 if count <= 2 else 1)
            row(name, count, seconds, float(_worst_width(ours, spec).mean()))


# --------------------------------------------------------------------------------------------
# (b) pixel mode


def pixel_problem(batch: int) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(decoder, cnn, z, direction, targets, decoder source), deterministic."""
    torch.manual_seed(0)
    if VAE_PATH.exists():
        from auditai_ops.latent.mapping import load_vae

        vae, _ = load_vae(VAE_PATH)
        source = f"trained VAE {VAE_PATH}"
    else:
        vae = VAE(VAEArchitecture())
        source = "random VAE (no trained one found)"
    decoder = vae.decoder.eval()
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)
    ).eval()
    z = torch.randn(batch, 16)
    direction = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
    with torch.no_grad():
        targets = cnn(decoder(z)).argmax(dim=1)
    return decoder, cnn, z, direction, targets, source


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB, from /proc/self/status."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def pixel_worker(job: dict[str, object]) -> dict[str, object]:
    """One method in a fresh process: time, peak memory growth, per-sample worst-margin widths."""
    batch, method, count, half = int(job["batch"]), str(job["method"]), int(job["pieces"]), float(job["half"])  # type: ignore[arg-type]
    decoder, cnn, z, direction, targets, _ = pixel_problem(batch)
    model = nn.Sequential(decoder, cnn).eval()
    spec = margin_specification(targets, 10)
    low = torch.full((batch, 1), -half)
    high = -low
    if method.startswith("auto_LiRPA"):
        bounded = build_bounded_module(LatentLine(model, direction).eval(), (torch.zeros(2, 1), z[:2]))

        def lower(c: torch.Tensor) -> torch.Tensor:
            return compute_margin_lower_bounds(bounded, (low * 0, z), low, high, c, method.split()[1])  # type: ignore[arg-type]
    else:
        options = OURS_PIXEL[method]
        inputs = latent_line_input(z, direction)
        layers = flatten_layers([decoder, cnn], z[:1])

        def lower(c: torch.Tensor) -> torch.Tensor:
            return margin_lower_bounds(layers, inputs, c, low, high, pieces=count, **options)  # type: ignore[arg-type]

    reset = _reset_peak()
    baseline = _status_mb("VmRSS")
    started = time.perf_counter()
    first = lower(spec)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    worst_upper = (-lower(-spec)).min(dim=1).values
    widths = worst_upper - first.min(dim=1).values
    growth = max(0.0, peak - baseline) if reset else float("nan")
    return {"seconds": seconds, "peak_growth_mb": growth, "peak_mb": peak, "widths": widths.tolist()}


def pixel_section(batch: int, lirpa_batch: int, pieces: list[int], threads: int) -> None:
    half = 0.1
    decoder, cnn, z, direction, targets, source = pixel_problem(batch)
    model = nn.Sequential(decoder, cnn).eval()
    with torch.no_grad():
        forward = {n: _timed(lambda n=n: model(z[:n]), 20) for n in (batch, lirpa_batch)}
    empirical = _empirical(model, z, direction, targets, half)
    print(f"\n(b) pixel mode: latent 16 -> decoder ({source}) -> 28x28 -> CNN, batch {batch}, t in [-{half}, {half}], {threads} thread(s)")
    print(
        f"forward pass {forward[batch] * 1e3:.2f} ms (batch {lirpa_batch}: {forward[lirpa_batch] * 1e3:.2f} ms); empirical width (1,000 sampled t): "
        f"{float(empirical.mean()):.5f} (first {lirpa_batch} samples: {float(empirical[:lirpa_batch].mean()):.5f})"
    )
    print(
        f"{'method':34s} {'pieces':>6s} {'batch':>5s} {'time (s)':>9s} {'throughput/forward':>19s} {'mean width':>11s} "
        f"{f'width, first {lirpa_batch}':>16s} {'/empirical':>10s} {'peak +MB':>9s} {'VmHWM MB':>9s}"
    )
    jobs = [(f"auto_LiRPA {m}", 1, lirpa_batch) for m in LIRPA] + [(name, count, batch) for name in OURS for count in pieces]
    jobs += [(ONE_BATCH, count, batch) for count in pieces if count in (4, 16)]
    for method, count, n in jobs:
        job = {"batch": n, "method": method, "pieces": count, "half": half}
        done = subprocess.run(
            [sys.executable, __file__, "--threads", str(threads), "--worker", json.dumps(job)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(f"{method:34s} {count:6d} {n:5d}  failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        widths = torch.tensor(result["widths"])
        first = float(widths[:lirpa_batch].mean())
        print(
            f"{method:34s} {count:6d} {n:5d} {result['seconds']:9.3f} {forward[n] / result['seconds']:19.4f} {float(widths.mean()):11.5f} "
            f"{first:16.5f} {first / float(empirical[:lirpa_batch].mean()):10.2f} {result['peak_growth_mb']:9.0f} {result['peak_mb']:9.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("head", "pixel", "all"), default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable ratios on a shared machine)")
    parser.add_argument("--head-batch", type=int, default=4096)
    parser.add_argument("--pixel-batch", type=int, default=64)
    parser.add_argument("--lirpa-batch", type=int, default=8, help="pixel-mode batch for auto_LiRPA (its CROWN needs about 0.14 GB per sample)")
    parser.add_argument("--pieces", default="1,2,3,4,8,16")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds as they are (auditai raises them: auditai_ops.allocator)")
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    print(f"allocator: {'freed memory kept in the process, as auditai does' if kept else 'glibc defaults'}")
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(pixel_worker(json.loads(args.worker))))
        return
    pieces = [int(p) for p in args.pieces.split(",")]
    if args.section in ("head", "all"):
        head_section(args.head_batch, pieces)
    if args.section in ("pixel", "all"):
        pixel_section(args.pixel_batch, args.lirpa_batch, pieces, args.threads)


if __name__ == "__main__":
    main()
