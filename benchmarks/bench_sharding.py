"""Speedup of N local worker processes (`auditai verify --shard i/N`, then `auditai merge`) over one process.

On a finished audit run (default runs/mnist, made by `make demo`), audits head o encoder
through the decoder (pixel mode, the expensive case) on --samples samples in blocks of
--block-size, first in one process with every core, then as N worker processes with
cores / N threads each, merged. Prints the wall times, the speedup and whether the merged
certificates equal the unsharded ones (apart from timings), all from one run.
Run: .venv/bin/python benchmarks/bench_sharding.py --run runs/mnist [--workers 2] [--samples 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TIMING_FIELDS = ("created_at", "content_sha256", "signature")


def _auditai(arguments: list[str], threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "auditai_ops", *arguments], env=env, stdout=subprocess.DEVNULL)


def _comparable(folder: Path) -> dict[str, dict]:
    certificates = {}
    for path in sorted((folder / "certificates").glob("*.json")):
        payload = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_FIELDS}
        payload["aggregates"].pop("seconds")
        certificates[path.name] = payload
    return certificates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/mnist"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--block-size", type=int, default=50)
    args = parser.parse_args()
    run = args.run.resolve()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = {
            "inputs": {
                "vae": str(run / "latent/vae.safetensors"),
                "latents": str(run / "latent/latents.npz"),
                "directions": str(run / "directions"),
                "head": str(run / "classifier/head.safetensors"),
            },
            "tracking": {"enabled": False},
            "model": {"mode": "pixel"},
            "verify": {"samples": args.samples, "block_size": args.block_size},
            "unit_tests": [{"name": "slant_within_5deg", "direction": "slant", "range": {"low": -5, "high": 5}, "threshold": 0.9}],
        }
        config_path = folder / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        started = time.perf_counter()
        _auditai(["verify", "--config", str(config_path), "--out", str(folder / "one")], cores).wait()
        one_process = time.perf_counter() - started
        started = time.perf_counter()
        sharded = folder / "sharded"
        threads = max(1, cores // args.workers)
        workers = [_auditai(["verify", "--config", str(config_path), "--out", str(sharded), "--shard", f"{i}/{args.workers}"], threads) for i in range(args.workers)]
        codes = [worker.wait() for worker in workers]
        _auditai(["merge", "--config", str(config_path), "--out", str(sharded)], cores).wait()
        many_processes = time.perf_counter() - started
        equal = _comparable(folder / "one") == _comparable(sharded)
    print(f"pixel mode, {args.samples} samples in blocks of {args.block_size}, {cores} cores")
    print(f"1 process x {cores} threads:           {one_process:7.1f} s")
    print(f"{args.workers} processes x {max(1, cores // args.workers)} threads + merge: {many_processes:7.1f} s  (worker exit codes {codes})")
    print(f"speedup: {one_process / many_processes:.2f}x   merged certificates equal the unsharded ones: {equal}")


if __name__ == "__main__":
    main()
