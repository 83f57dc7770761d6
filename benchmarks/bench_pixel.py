"""Pixel mode, today's path against the new one, paired: the same samples, boxes, seeds and budget in one run.

The audited network is classifier(decoder(z + t d)) of a finished pixel-mode run (default: the
MNIST example `examples/mnist/audit-pixel-torchscript.yaml`, its CNN made by
`examples/mnist/train_pixel_cnn.py`). Every unit test of the config is verified block by block
as `auditai verify` does it (`verify.block_size` samples a block, the block's seed, the same
budget), twice per block, by

* today: `LineVerifier.verify` with the linear bounds of a baseline commit
  (`auditai_ops/verify/linear_bounds.py` as of `--baseline`, loaded from git into this process);
* new: `auditai_ops.verify.prove_first.verify_prove_first` with the working tree's bounds
  (partial back-substitution, conv kernels, ...);
* with `--attribute`: also the working tree's bounds in today's order (`LineVerifier.verify`),
  to attribute the gain between the bounds and the order.

The paths alternate within each block (today first in even blocks, new first in odd ones), so
that a shared machine's load falls on both alike. Printed per unit test: seconds per 1,000
samples, their ratio, the certified / falsified / unknown fractions of each path, and how many
samples changed verdict. Then auto_LiRPA's CROWN against our bounds on the first
`--lirpa-batch` samples' whole boxes (one batch): time, samples proved, the mean lower bound of
the worst margin min_j m_j, and the mean width of its bounds (upper from the lower bound of -C;
ours with every margin back-substituted), next to the values from 1,000 sampled t. Last, with
`--memory`, the peak memory of each path's verification of one block, each in a fresh process
(VmHWM less VmRSS before, as `bench_linear_bounds.py` measures it).

Threads: torch's intra-op threads (default 1). On a shared 2-core machine, two OpenMP threads
are at the mercy of the other processes' load (on a load of 7 the same bound call took 0.4 s
with one thread and 1.3 to 10 s with two), so ratios are measured at 1 thread; `--threads 2`
for the configuration the README quotes.

Run: .venv/bin/python benchmarks/bench_pixel.py --run runs/mnist-pixel-ts --config examples/mnist/audit-pixel-torchscript.yaml
     [--samples 1000] [--tests slant_within_5deg] [--threads 1] [--attribute] [--memory] [--lirpa-batch 8]
     [--lirpa-only]: only the CROWN comparison (graph classifiers such as the Colored MNIST ResNet, which the baseline cannot bound)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from bench_linear_bounds import _reset_peak, _status_mb  # the same /proc readings as the bound benchmark

from auditai_ops.allocator import keep_freed_memory
from auditai_ops.config import load_config
from auditai_ops.directions.discover import load_directions
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify import engine
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Falsifier, LineVerifier, SampleOutcomes, margin_specification, margins
from auditai_ops.verify.linear_bounds import latent_line_input
from auditai_ops.verify.linear_bounds import margin_lower_bounds as new_margin_lower_bounds
from auditai_ops.verify.prove_first import verify_prove_first
from auditai_ops.verify.step import load_test_samples
from auditai_ops.verify.unit_tests import block_budget, block_seed, concatenate_outcomes, line_verifier, resolve_unit_tests

REPO = Path(__file__).resolve().parents[1]
BASELINE = "016d57b"
"""The commit whose linear bounds are 'today's path' (issue 17: before the pixel-mode work)."""
VERDICTS = (VERIFIED, FALSIFIED, UNKNOWN)


def baseline_bounds(commit: str) -> types.ModuleType:
    """`auditai_ops/verify/linear_bounds.py` as of `commit`, as a module of its own (it imports the working tree's other modules)."""
    source = subprocess.run(["git", "show", f"{commit}:auditai_ops/verify/linear_bounds.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"baseline_linear_bounds_{commit}")
    module.__file__ = f"<{commit}:auditai_ops/verify/linear_bounds.py>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the repository's own file at a commit
    return module


@contextmanager
def bounds_of(function):  # type: ignore[no-untyped-def]
    """The verifier's linear bounds replaced by `function` (a `margin_lower_bounds`) meanwhile."""
    saved = engine.linear_margin_lower_bounds
    engine.linear_margin_lower_bounds = function
    try:
        yield
    finally:
        engine.linear_margin_lower_bounds = saved


def load_setup(run: Path, config_path: Path) -> tuple[object, object, list, object]:
    config = load_config(config_path)
    inputs = resolve_inputs(run, config.inputs, config_path.parent)
    generator = load_generator(config.generator, inputs.vae)
    audited = build_audited_model(config.model, generator, inputs, config_path.parent)
    tests = resolve_unit_tests(config.unit_tests, load_directions(inputs.directions))
    samples = load_test_samples(inputs.latents, config.verify.seed)
    return config, audited, tests, samples


def run_block(
    path: str, verifier: LineVerifier, latents: np.ndarray, targets: np.ndarray, test, settings, block: int, count: int, baseline: types.ModuleType
) -> tuple[SampleOutcomes, float]:  # type: ignore[no-untyped-def]
    """One block of a unit test's `count` samples, as `run_unit_test` verifies it (its seed and budget; no time budget)."""
    falsifier = Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, block_seed(settings.seed, block))
    start = block * settings.block_size
    budget = block_budget(settings, start, start + len(latents), count, None)
    arguments = (latents, targets, test.t_low, test.t_high, settings.methods, falsifier, budget, settings.min_margin, settings.refine_method)
    started = time.perf_counter()
    if path == "today":
        with bounds_of(baseline.margin_lower_bounds):
            out = verifier.verify(*arguments)
    elif path == "new bounds, today's order":
        with bounds_of(new_margin_lower_bounds):
            out = verifier.verify(*arguments)
    else:
        with bounds_of(new_margin_lower_bounds):
            out = verify_prove_first(verifier, *arguments)
    return out, time.perf_counter() - started


def fractions(out: SampleOutcomes) -> str:
    return " / ".join(f"{out.fraction(v):.3f}" for v in VERDICTS)


def compare_paths(args: argparse.Namespace, config, audited, tests, samples, baseline: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    settings = config.verify
    paths = ["today", "new"] + (["new bounds, today's order"] if args.attribute else [])
    for test in tests:
        chosen = samples.first(test.spec.samples or args.samples)
        targets_all = chosen.labels
        if test.spec.property != "true_label":
            with torch.no_grad():
                targets_all = audited.network(torch.from_numpy(chosen.latents.astype(np.float32))).argmax(dim=1).numpy()
        verifier = line_verifier(audited.network, test, settings, torch.device("cpu"))
        outcomes: dict[str, list[SampleOutcomes]] = {p: [] for p in paths}
        seconds = dict.fromkeys(paths, 0.0)
        for block, first in enumerate(range(0, len(chosen.ids), settings.block_size)):
            rows = slice(first, first + settings.block_size)
            order = paths if block % 2 == 0 else [paths[1], paths[0], *paths[2:]]
            for path in order:
                out, took = run_block(path, verifier, chosen.latents[rows], targets_all[rows], test, settings, block, len(chosen.ids), baseline)
                outcomes[path].append(out)
                seconds[path] += took
        merged = {p: concatenate_outcomes(outcomes[p]) for p in paths}
        count = len(chosen.ids)
        per_thousand = {p: seconds[p] * 1000 / count for p in paths}
        print(f"\n{test.spec.name}: {count} samples, latent box [{test.t_low[0]:.4f}, {test.t_high[0]:.4f}], blocks of {settings.block_size}, load {_load()}")
        print(f"{'path':28s} {'s / 1000 samples':>16s} {'today / path':>12s} {'certified / falsified / unknown':>32s} {'changed':>8s} {'new unknown':>11s}")
        today = merged["today"]
        for path in paths:
            out = merged[path]
            changed = int(np.sum(out.verdicts != today.verdicts))
            new_unknown = int(np.sum((out.verdicts == UNKNOWN) & (today.verdicts != UNKNOWN)))
            print(f"{path:28s} {per_thousand[path]:16.2f} {per_thousand['today'] / per_thousand[path]:12.2f} {fractions(out):>32s} {changed:8d} {new_unknown:11d}")
        delta = merged["new"].fraction(VERIFIED) - today.fraction(VERIFIED)
        print(f"certified fraction new - today: {delta:+.3f}; pieces per sample (mean): today {today.pieces.mean():.2f}, new {merged['new'].pieces.mean():.2f}")
        if args.resample:
            verified = np.flatnonzero(merged["new"].verdicts == VERIFIED)
            contradicted = contradicted_by_sampling(audited.network, test, chosen.latents[verified], targets_all[verified], args.resample)
            print(f"dense sampling ({args.resample} evenly spaced t per sample, ends included): {contradicted} of the new path's {len(verified)} verified samples contradicted")


@torch.no_grad()
def contradicted_by_sampling(network, test, latents: np.ndarray, targets: np.ndarray, points: int) -> int:  # type: ignore[no-untyped-def]
    """How many samples leave their target class at one of `points` evenly spaced t over the box (one direction; as `resample.contradicted_samples`)."""
    matrix = torch.from_numpy(np.atleast_2d(test.matrix).astype(np.float32))
    offsets = torch.linspace(float(test.t_low[0]), float(test.t_high[0]), points)[:, None] * matrix[0]
    z, y = torch.from_numpy(latents.astype(np.float32)), torch.from_numpy(targets.astype(np.int64))
    leaves = torch.zeros(len(z), dtype=torch.bool)
    for sample in range(len(z)):
        leaves[sample] = bool((network(z[sample] + offsets).argmax(dim=1) != y[sample]).any())
    return int(leaves.sum())


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def lirpa_section(args: argparse.Namespace, audited, tests, samples, baseline: types.ModuleType | None) -> None:  # type: ignore[no-untyped-def]
    for test in tests[: 1 if args.lirpa_first_only else None]:
        lirpa_comparison(audited.network, int(audited.num_classes), test, samples, args.lirpa_batch, baseline)


def lirpa_comparison(network, num_classes: int, test, samples, count: int, baseline: types.ModuleType | None) -> None:  # type: ignore[no-untyped-def]
    """auto_LiRPA's CROWN and our bounds on the first `count` samples' whole boxes, one batch."""
    from auditai_ops.verify.line_model import LatentLine
    from auditai_ops.verify.lirpa_compat import build_bounded_module, compute_margin_lower_bounds

    z = torch.from_numpy(samples.latents[:count].astype(np.float32))
    y = torch.from_numpy(samples.labels[:count])
    d = torch.from_numpy(np.atleast_2d(test.matrix).astype(np.float32))
    low = torch.full((count, 1), float(test.t_low[0]))
    high = torch.full((count, 1), float(test.t_high[0]))
    spec = margin_specification(y, num_classes)
    with torch.no_grad():
        ts = torch.linspace(float(test.t_low[0]), float(test.t_high[0]), 1000)
        sampled = torch.stack([margins(network(z + float(t) * d), y) for t in ts])
    true_min, empirical_width = sampled.min(dim=0).values, sampled.max(dim=0).values - sampled.min(dim=0).values
    line_input = latent_line_input(z, d)
    bounded = build_bounded_module(LatentLine(network, d).eval(), (torch.zeros(2, 1), z[:2]))

    def ours(module: types.ModuleType, options: dict[str, object]):  # type: ignore[no-untyped-def]
        return lambda c: module.margin_lower_bounds(network, line_input, c, low, high, back_substitute=True, **options)

    def crown(c: torch.Tensor) -> torch.Tensor:
        return compute_margin_lower_bounds(bounded, ((low + high) / 2, z), low, high, c, "CROWN")

    new_module = sys.modules["auditai_ops.verify.linear_bounds"]
    rows = [
        *([("ours today, as the verifier calls it", ours(baseline, {"refine_below": 1e-5}), False)] if baseline is not None else []),
        ("ours new, as the verifier calls it", ours(new_module, {"refine_below": 1e-5}), False),
        ("ours new, as prove-first calls it", ours(new_module, {"refine_below": 1e-5, "full": False}), False),
        ("ours, every margin back-substituted", ours(new_module, {}), True),
        ("auto_LiRPA CROWN", crown, True),
    ]
    print(
        f"\n{test.spec.name}, first {count} samples, whole box, one batch, load {_load()}: 1,000 sampled t give min margin {float(true_min.mean()):.3f} (mean), "
        f"{int((true_min > 0).sum())} samples correct throughout, width {float(empirical_width.mean()):.3f}"
    )
    print(f"{'method':38s} {'seconds':>8s} {'proved':>6s} {'mean lower bound':>16s} {'mean width':>10s}")
    for name, function, with_width in rows:
        started = time.perf_counter()
        lower = function(spec).min(dim=1).values
        took = time.perf_counter() - started
        width = f"{float(((-function(-spec)).min(dim=1).values - lower).mean()):10.3f}" if with_width else f"{'-':>10s}"
        print(f"{name:38s} {took:8.2f} {int((lower > 1e-5).sum()):6d} {float(lower.mean()):16.3f} {width}", flush=True)


def memory_worker(job: dict[str, object]) -> dict[str, float]:
    """One path on one block in this (fresh) process: the growth of resident memory at its peak."""
    run, config_path, path, test_index = Path(str(job["run"])), Path(str(job["config"])), str(job["path"]), int(job["test"])  # type: ignore[arg-type]
    config, audited, tests, samples = load_setup(run, config_path)
    baseline = baseline_bounds(str(job["baseline"]))
    test = tests[test_index]
    settings = config.verify
    chosen = samples.first(settings.block_size)
    verifier = line_verifier(audited.network, test, settings, torch.device("cpu"))
    cleared = _reset_peak()
    before = _status_mb("VmRSS")
    run_block(path, verifier, chosen.latents, chosen.labels, test, settings, 0, len(chosen.ids), baseline)
    peak = _status_mb("VmHWM")
    return {"growth_mb": peak - before if cleared else float("nan"), "peak_mb": peak}


def memory_section(args: argparse.Namespace, tests) -> None:  # type: ignore[no-untyped-def]
    print(f"\npeak memory of one block ({'first unit test'}), each path in a fresh process:")
    for path in ("today", "new"):
        job = {"run": str(args.run), "config": str(args.config), "path": path, "test": 0, "baseline": args.baseline}
        done = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--worker", json.dumps(job)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  {path}: failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {path:6s} peak growth {result['growth_mb']:.0f} MB (VmHWM {result['peak_mb']:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/mnist-pixel-ts"))
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "mnist" / "audit-pixel-torchscript.yaml")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--tests", nargs="*", help="unit test names (default: all of the config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of today's linear bounds")
    parser.add_argument("--attribute", action="store_true", help="also the new bounds in today's order")
    parser.add_argument("--lirpa-batch", type=int, default=8, help="samples for the auto_LiRPA CROWN comparison (0: skip; about 0.14 GB each)")
    parser.add_argument("--lirpa-first-only", action="store_true", help="the CROWN comparison on the first unit test only")
    parser.add_argument("--lirpa-only", action="store_true", help="only the auto_LiRPA CROWN comparison, without today's bounds (for graph classifiers, which they cannot bound)")
    parser.add_argument("--memory", action="store_true", help="peak memory of one block per path, each in a fresh process")
    parser.add_argument("--resample", type=int, default=0, help="dense-sample every sample the new path verifies at this many t (0: skip)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return
    print(f"allocator: {'freed memory kept in the process, as auditai does' if kept else 'glibc defaults'}; torch threads {torch.get_num_threads()}; baseline {args.baseline}")
    config, audited, tests, samples = load_setup(args.run, args.config)
    if args.tests:
        tests = [t for t in tests if t.spec.name in args.tests]
    if args.lirpa_only:
        lirpa_section(args, audited, tests, samples, None)
        return
    baseline = baseline_bounds(args.baseline)
    compare_paths(args, config, audited, tests, samples, baseline)
    if args.lirpa_batch > 0:
        lirpa_section(args, audited, tests, samples, baseline)
    if args.memory:
        memory_section(args, tests)


if __name__ == "__main__":
    main()
