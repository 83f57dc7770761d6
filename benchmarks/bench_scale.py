"""Scale of latent-mode verification: up to 10,000 test digits x 100 directions, 10^6 sample-directions.

On an audit folder of all 10,000 MNIST test digits (made with auditai's own steps when
missing, see benchmarks/audit_folder.py), audits the head along 100 directions: the
discovered ones (4 attributes, PCA) plus random unit directions (seeded), one unit test each
(attribute ranges as in the MNIST example, +-0.25 latent units otherwise). For each sample
count in --samples (default 100, 1,000, 10,000: 10^4, 10^5, 10^6 sample-directions) it runs
`auditai verify` (the real verifier, certificates, counterexample images, range curves and
summary included) in a fresh process and prints, from one run: wall time, sample-directions
per second, peak resident memory (the process's, from wait4), the time spent verifying (the
certificates' own `seconds`), and the growth between scales (time ratio over size ratio: 1.0
is linear) with the marginal throughput, which start-up does not blur.
Run: .venv/bin/python benchmarks/bench_scale.py [--run runs/bench-audit] [--directions 100] [--samples 100,1000,10000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from audit_folder import ensure_audit_folder, inputs, unit_tests, with_directions


def _verify(config: Path, out: Path, threads: int | None) -> tuple[float, float, int]:
    """Run `auditai verify` in a fresh process: (wall seconds, peak RSS in MiB, exit code)."""
    env = dict(os.environ)
    if threads:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "auditai_ops", "verify", "--config", str(config), "--out", str(out)], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/bench-audit"), help="audit folder (made when missing)")
    parser.add_argument("--directions", type=int, default=100)
    parser.add_argument("--samples", default="100,1000,10000", help="comma-separated sample counts per unit test")
    parser.add_argument("--device", default="cpu", help="verify.device: cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="OMP/MKL threads of the verify process (default: torch's choice)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the audits under this folder")
    args = parser.parse_args()
    folder = ensure_audit_folder(args.run)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-")) if args.keep is None else args.keep.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    names = with_directions(folder, scratch / "directions", args.directions)
    tests = unit_tests(scratch / "directions", names)
    load = os.getloadavg()
    print(
        f"latent mode on {args.device}, {len(tests)} unit tests (one per direction: {len(names) - sum(n.startswith('random') for n in names)} discovered, "
        f"{sum(n.startswith('random') for n in names)} random), {os.cpu_count()} cores, load average before {load[0]:.2f}"
    )
    print(f"{'samples':>8} {'sample-dirs':>11} {'wall s':>8} {'verify s':>9} {'per s':>8} {'peak MiB':>9} {'certified':>9} {'falsified':>9}  exit  load")
    rows = []
    try:
        for samples in (int(s) for s in args.samples.split(",")):
            config = {"inputs": inputs(folder, scratch / "directions"), "tracking": {"enabled": False}, "verify": {"samples": samples, "device": args.device}, "unit_tests": tests}
            path = scratch / f"scale-{samples}.yaml"
            path.write_text(yaml.safe_dump(config))
            out = scratch / f"scale-{samples}"
            wall, peak, code = _verify(path, out, args.threads)
            summary = json.loads((out / "summary.json").read_text())
            done = [t for t in summary["unit_tests"] if t["verdict"] != "error"]
            size = samples * len(tests)
            verifying = sum(t["seconds"] for t in done)
            certified = sum(t["certified_accuracy"] for t in done) / max(1, len(done))
            falsified = sum(t["falsified_fraction"] for t in done) / max(1, len(done))
            rows.append((size, wall))
            print(
                f"{samples:8d} {size:11d} {wall:8.1f} {verifying:9.1f} {size / wall:8.0f} {peak:9.0f} {certified:9.3f} {falsified:9.3f}  {code:4d}  {os.getloadavg()[0]:.2f}"
                + (f"  ({len(summary['unit_tests']) - len(done)} unit tests errored)" if len(done) < len(tests) else ""),
                flush=True,
            )
            if args.keep is None:
                shutil.rmtree(out)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for (small, small_wall), (large, large_wall) in zip(rows, rows[1:], strict=False):
        growth = large_wall / small_wall
        print(f"{small:>8d} -> {large:d}: size x{large / small:.0f}, time x{growth:.2f} (time ratio / size ratio {growth / (large / small):.2f}); ", end="")
        if large_wall > small_wall:
            print(f"marginal {(large - small) / (large_wall - small_wall):.0f} sample-directions/s")
        else:
            print("no marginal rate: the smaller audit took as long (fixed costs per unit test, or the machine's load)")
    if len(rows) > 1 and rows[-1][0] < 10**6 and rows[-1][1] > rows[-2][1]:
        (small, small_wall), (large, large_wall) = rows[-2], rows[-1]
        rate = (large - small) / (large_wall - small_wall)
        print(f"extrapolated (not measured) 10^6 sample-directions: {large_wall + (10**6 - large) / rate:.0f} s at the marginal rate")


if __name__ == "__main__":
    main()
