"""Certified fine-tuning with the IBP and the CROWN-IBP loss, on a finished audit run.

Audits the run's model with the config's unit tests (before), fine-tunes it for the failing
ones (or --specs) once per training method with the config's `finetune` settings, re-audits
each candidate on the same test samples, and prints from one run each, per unit test, the
certified accuracy and the clean accuracy before and after, the fine-tuning status, and the
wall time of fine-tuning and of the re-audit.
Run: .venv/bin/python benchmarks/bench_finetune.py --run runs/mnist --config examples/mnist/audit-repair.yaml [--methods IBP CROWN-IBP] [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from auditai_ops.config import load_config
from auditai_ops.finetune.step import finetune_model
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.step import verify_audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/mnist"))
    parser.add_argument("--config", type=Path, default=Path("examples/mnist/audit-repair.yaml"))
    parser.add_argument("--methods", nargs="+", default=["IBP", "CROWN-IBP"], choices=["IBP", "CROWN-IBP"])
    parser.add_argument("--specs", nargs="*", default=None, help="unit tests to fine-tune for (default: the failing ones)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    if args.device:
        config = config.model_copy(update={"verify": config.verify.model_copy(update={"device": args.device})})
    base = args.config.resolve().parent
    inputs = resolve_inputs(args.run, config.inputs, base)
    generator = load_generator(config.generator, inputs.vae, base)
    with tempfile.TemporaryDirectory() as scratch:
        before = verify_audit(config.unit_tests, config.verify, config.model, generator, inputs, Path(scratch) / "before", base)
        specs = tuple(args.specs) if args.specs else tuple(row["name"] for row in before["unit_tests"] if row["verdict"] == "fail")
        if not specs:
            print("every unit test passes: name --specs to fine-tune anyway")
            return
        print(f"{config.model.mode} mode, fine-tuning for {list(specs)}; settings {config.finetune.model_dump(exclude={'method', 'repair', 'specs'})}")
        header = f"{'method':9s} {'unit test':24s} {'threshold':>9s} {'certified before -> after':>25s} {'clean before -> after':>21s} {'verdict':>14s}"
        lines = []
        for method in args.methods:
            settings = config.finetune.model_copy(update={"method": method})
            out = Path(scratch) / method
            started = time.perf_counter()
            result = finetune_model(settings, config.unit_tests, config.verify, config.model, generator, inputs, out, base, specs=specs)
            finetune_seconds = time.perf_counter() - started
            after_rows: dict[str, dict] = {}
            audit_seconds = 0.0
            if result.candidate is not None:
                model_settings, candidate_inputs = result.audit_settings(config.model, inputs)
                started = time.perf_counter()
                after = verify_audit(config.unit_tests, config.verify, model_settings, generator, candidate_inputs, out / "repaired", base)
                audit_seconds = time.perf_counter() - started
                after_rows = {row["name"]: row for row in after["unit_tests"]}
            lines.append(f"{method}: {result.status}, fine-tuning {finetune_seconds:.1f} s, re-audit {audit_seconds:.1f} s")
            for row in before["unit_tests"]:
                later = after_rows.get(row["name"])
                certified = f"{row['certified_accuracy']:.3f} -> " + ("-" if later is None else f"{later['certified_accuracy']:.3f}")
                clean = f"{row['clean_accuracy']:.3f} -> " + ("-" if later is None else f"{later['clean_accuracy']:.3f}")
                verdict = f"{row['verdict']} -> " + ("-" if later is None else later["verdict"])
                lines.append(f"{method:9s} {row['name'][:24]:24s} {row['threshold']:9.2f} {certified:>25s} {clean:>21s} {verdict:>14s}")
        print(header)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
