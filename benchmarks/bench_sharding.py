"""Speed-up of N verification shards (`auditai verify --shard i/N` side by side, then `auditai merge`) over one `auditai verify`.

On an audit folder of all 10,000 MNIST test digits (made with auditai's own steps when
missing, see benchmarks/audit_folder.py), audits the head along the first --tests discovered
directions (default 8: 4 attributes and 4 PCA directions, the MNIST example's ranges) on
--samples digits each, in latent mode (--mode pixel: head o encoder through the decoder).
First one process with every core and one with one thread (the baseline is the faster: one
process with more threads is not always faster), then for each N in --workers: N processes
with cores / N threads each, side by side, then the merge. Prints, from one run: the wall
times of the unsharded runs, of the shards and of the merge, with their CPU seconds (user +
system: on a loaded machine the wall times mostly measure the share of the cores each process
got), the speed-up (merge included), and whether the merged certificates equal the unsharded
ones (apart from timings) and the summaries' range curves too. The load average is printed
with each line: the machine may be shared.
Run: .venv/bin/python benchmarks/bench_sharding.py [--run runs/bench-audit] [--workers 1,2] [--samples 10000] [--mode latent]
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
from audit_folder import ensure_audit_folder, inputs, unit_tests

from auditai_ops.directions.discover import load_directions

TIMING_FIELDS = ("created_at", "content_sha256", "signature")


def _auditai(arguments: list[str], threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "auditai_ops", *arguments], env=env, stdout=subprocess.DEVNULL)


def _timed(processes: list[subprocess.Popen[bytes]]) -> tuple[float, float, list[int]]:
    """(wall seconds until every process exited, their CPU seconds (user + system) together, exit codes)."""
    started = time.perf_counter()
    cpu, codes = 0.0, []
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        codes.append(process.returncode)
    return time.perf_counter() - started, cpu, codes


def _comparable(folder: Path) -> tuple[dict[str, dict], list]:
    certificates = {}
    for path in sorted((folder / "certificates").glob("*.json")):
        payload = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_FIELDS}
        payload["aggregates"].pop("seconds")
        certificates[path.name] = payload
    curves = [test.get("range_curve") for test in json.loads((folder / "summary.json").read_text())["unit_tests"]]
    return certificates, curves


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/bench-audit"), help="audit folder (made when missing)")
    parser.add_argument("--workers", default="1,2", help="comma-separated shard counts N")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--tests", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=0, help="verify.block_size (default: auditai's)")
    parser.add_argument("--mode", choices=("latent", "pixel"), default="latent")
    args = parser.parse_args()
    folder = ensure_audit_folder(args.run)
    cores = os.cpu_count() or 1
    names = list(load_directions(folder / "directions"))[: args.tests]
    verify = {"samples": args.samples, **({"block_size": args.block_size} if args.block_size else {})}
    config = {"inputs": inputs(folder), "tracking": {"enabled": False}, "model": {"mode": args.mode}, "verify": verify, "unit_tests": unit_tests(folder / "directions", names)}
    scratch = Path(tempfile.mkdtemp(prefix="bench-sharding-"))
    try:
        config_path = scratch / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config))
        print(f"{args.mode} mode, {args.samples} samples x {len(names)} unit tests ({', '.join(names)}), {cores} cores; {_load()}")
        baselines = []
        for threads in sorted({cores, 1}, reverse=True):
            one, one_cpu, codes = _timed([_auditai(["verify", "--config", str(config_path), "--out", str(scratch / f"one-{threads}")], threads)])
            print(f"unsharded: 1 process x {threads} threads: {one:7.1f} s, CPU {one_cpu:6.1f} s  (exit {codes[0]}; {_load()})", flush=True)
            baselines.append(one)
        one = min(baselines)
        print(f"speed-ups below are against the faster unsharded run, {one:.1f} s")
        expected = _comparable(scratch / f"one-{cores}")
        for count in (int(n) for n in args.workers.split(",")):
            out = scratch / f"shards-{count}"
            threads = max(1, cores // count)
            arguments = [["verify", "--config", str(config_path), "--out", str(out), "--shard", f"{i}/{count}"] for i in range(count)]
            sharded, shards_cpu, codes = _timed([_auditai(a, threads) for a in arguments])
            merged, merge_cpu, merge_codes = _timed([_auditai(["merge", "--config", str(config_path), "--out", str(out)], cores)])
            certificates, curves = _comparable(out)
            total = sharded + merged
            print(f"N = {count}: {count} shard processes x {threads} threads {sharded:7.1f} s (CPU {shards_cpu:6.1f} s, exit {codes}) ", end="")
            print(f"+ merge {merged:5.1f} s (CPU {merge_cpu:5.1f} s, exit {merge_codes[0]}) = {total:7.1f} s; ", end="")
            print(f"speed-up {one / total:.2f}x; certificates equal: {certificates == expected[0]}, range curves equal: {curves == expected[1]}  ({_load()})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
