"""`auditai`: one subcommand per pipeline step, plus `run` for the whole audit.

Every step reads its section of the YAML config (embedded defaults when no config is given)
and reads and writes files under --out. Exit codes: 0 ok (every spec passes), 1 a spec
fails, 2 bad input or an error. Bad input is reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditai_ops.config import AuditConfig, InputsConfig, load_config
from auditai_ops.errors import AuditInputError
from auditai_ops.layout import DIRECTIONS_JSON, StepInputs, resolve_inputs

if TYPE_CHECKING:
    from auditai_ops.latent.generator import Generator

EXIT_OK, EXIT_SPEC_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_OUT = Path("auditai-out")


def _config_and_base(args: argparse.Namespace) -> tuple[AuditConfig, Path | None]:
    path = args.config
    config = load_config(path)
    if getattr(args, "device", None):
        verify = config.verify.model_validate({**config.verify.model_dump(), "device": args.device})
        config = config.model_copy(update={"verify": verify})
    return config, (Path(path).resolve().parent if path else None)


def _inputs(args: argparse.Namespace) -> tuple[AuditConfig, StepInputs]:
    config, base = _config_and_base(args)
    return config, resolve_inputs(args.out, config.inputs, base)


def _generator(config: AuditConfig, inputs: StepInputs, base: Path | None) -> Generator:
    from auditai_ops.models.generator import load_generator

    return load_generator(config.generator, inputs.vae, base)


def _own_generator(config: AuditConfig, base: Path | None) -> Generator | None:
    """A team's own generator for map-latents; None means: train the VAE."""
    if config.generator.encoder is None:
        return None
    from auditai_ops.models.generator import load_generator

    return load_generator(config.generator, Path(), base)


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def cmd_map_latents(args: argparse.Namespace) -> int:
    from auditai_ops.latent.mapping import map_latents

    config, base = _config_and_base(args)
    artifacts = map_latents(config.data, config.latent, args.out, base, _own_generator(config, base))
    _print_json({"vae": artifacts.vae_path, "latents": artifacts.latents_path, "reconstructions": artifacts.reconstruction_png, **artifacts.metrics})
    return EXIT_OK


def cmd_discover_directions(args: argparse.Namespace) -> int:
    from auditai_ops.directions.discover import discover_directions
    from auditai_ops.layout import DIRECTIONS_DIR

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    directions = discover_directions(config.directions, _generator(config, inputs, base), inputs.latents, args.out)
    record = json.loads((Path(args.out) / DIRECTIONS_DIR / DIRECTIONS_JSON).read_text())["directions"]
    for name, direction in directions.items():
        effect = record[name]["effect"]
        if direction.calibration is not None:
            quality = f"probe R2 {record[name]['probe']['r2_valid']:.3f}  monotonic {effect['monotonic']}  disentanglement {effect['disentanglement']:.2f}"
            print(f"{name:10s} {direction.calibration:8.3f} {direction.units}/latent unit  {quality}")
        else:
            print(f"{name:10s} explained variance {record[name]['explained_variance_ratio']:.3f}")
    return EXIT_OK


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from auditai_ops.classifier.head import train_classifier

    config, inputs = _inputs(args)
    artifacts = train_classifier(config.classifier, inputs.latents, args.out)
    _print_json({"head": artifacts.head_path, **artifacts.metrics})
    return EXIT_OK


def _verify_and_report(config: AuditConfig, inputs: StepInputs, out: Path, base: Path | None) -> int:
    from auditai_ops.report.render import console_table
    from auditai_ops.verify.step import verify_audit

    summary = verify_audit(config.unit_tests, config.verify, config.model, _generator(config, inputs, base), inputs, out, base)
    print(console_table(summary))
    print(f"\ncertificates, summary.json and junit.xml are in {out}")
    return {"pass": EXIT_OK, "fail": EXIT_SPEC_FAILED}.get(summary["verdict"], EXIT_ERROR)


def cmd_verify(args: argparse.Namespace) -> int:
    config, base = _config_and_base(args)
    return _verify_and_report(config, resolve_inputs(args.out, config.inputs, base), args.out, base)


def cmd_run(args: argparse.Namespace) -> int:
    from auditai_ops.classifier.head import train_classifier
    from auditai_ops.directions.discover import discover_directions
    from auditai_ops.latent.mapping import map_latents
    from auditai_ops.verify.engine import resolve_device

    args.config = args.config or args.config_file
    config, base = _config_and_base(args)
    if not config.unit_tests:
        raise AuditInputError("unit_tests: no unit tests are configured; add at least one under 'unit_tests'")
    if config.inputs != InputsConfig():
        raise AuditInputError("inputs: `auditai run` produces every artifact itself; give 'inputs' only to single steps")
    resolve_device(config.verify.device)  # fail before training, not after it
    inputs = resolve_inputs(args.out, config.inputs, base)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("map-latents", lambda: map_latents(config.data, config.latent, args.out, base, _own_generator(config, base))),
        ("discover-directions", lambda: discover_directions(config.directions, _generator(config, inputs, base), inputs.latents, args.out)),
        ("train-classifier", lambda: train_classifier(config.classifier, inputs.latents, args.out)),
    ]
    for name, step in steps:
        print(f"[auditai run] {name} ...", flush=True)
        started = time.perf_counter()
        step()
        print(f"[auditai run] {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    print("[auditai run] verify ...", flush=True)
    code = _verify_and_report(config, inputs, args.out, base)
    return _repair(config, inputs, args.out, base) if code == EXIT_SPEC_FAILED and config.finetune.repair else code


def cmd_finetune(args: argparse.Namespace) -> int:
    from auditai_ops.finetune.step import PASSED_VALIDATION, finetune_model, specs_to_train

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    if not specs_to_train(config.finetune, config.unit_tests, args.out):
        print("nothing to fine-tune: every unit test passes (name unit tests under finetune.specs to train anyway)")
        return EXIT_OK
    result = finetune_model(config.finetune, config.unit_tests, config.verify, config.model, _generator(config, inputs, base), inputs, args.out, base)
    print(result.describe())
    return EXIT_OK if result.status == PASSED_VALIDATION else EXIT_SPEC_FAILED


def _repair(config: AuditConfig, inputs: StepInputs, out: Path, base: Path | None) -> int:
    """`finetune.repair: true`: fine-tune on the failing specs, re-audit the candidate into <out>/repaired, compare."""
    from auditai_ops.finetune.repair import REPAIR_RECORD, REPAIRED_DIR, repair_audit, repair_table

    print("[auditai run] repair: certified fine-tuning on the failing unit tests ...", flush=True)
    started = time.perf_counter()
    outcome = repair_audit(config, _generator(config, inputs, base), inputs, out, base)
    print(f"[auditai run] fine-tuning and re-audit done in {time.perf_counter() - started:.1f} s\n{outcome.finetune.describe()}\n")
    print(repair_table(outcome.rows))
    if outcome.after is None:
        print(f"\nrepair: the original model is kept ({outcome.finetune.message}); see {out / REPAIR_RECORD}")
        return EXIT_SPEC_FAILED
    print(f"\nrepaired audit verdict: {outcome.after['verdict'].upper()}; certificates in {out / REPAIRED_DIR}, comparison in {out / REPAIR_RECORD}")
    return EXIT_OK if outcome.passed else EXIT_SPEC_FAILED


def cmd_certificate_check(args: argparse.Namespace) -> int:
    from auditai_ops.verify.check import check_certificate

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    all_passed = True
    for path in args.certificates:
        checks = check_certificate(path, config.model, _generator(config, inputs, base), inputs, base)
        passed = all(c.passed for c in checks)
        all_passed &= passed
        print(f"{path}: {'VALID' if passed else 'INVALID'}")
        for check in checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    return EXIT_OK if all_passed else EXIT_SPEC_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditai", description="Verified semantic unit tests for deep-learning models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def step(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, device: bool = False) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", type=Path, default=None, help="YAML config (default: embedded defaults)")
        command.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"artifact folder (default: {DEFAULT_OUT})")
        if device:
            command.add_argument("--device", default=None, help="override verify.device: cpu, cuda or cuda:N")
        command.set_defaults(handler=handler)
        return command

    step("map-latents", cmd_map_latents, "train the VAE generator and encode the dataset into latents.npz")
    step("discover-directions", cmd_discover_directions, "find calibrated semantic directions in latent space")
    step("train-classifier", cmd_train_classifier, "train the audited classifier head on the latents")
    step("verify", cmd_verify, "prove or falsify every unit test; write certificates, summary.json, junit.xml", device=True)
    step("finetune", cmd_finetune, "certified fine-tuning against the failing unit tests (summary.json) or finetune.specs; writes a candidate model", device=True)
    run = step("run", cmd_run, "run every step end to end into --out (with finetune.repair: fine-tune and re-audit when a spec fails)", device=True)
    run.add_argument("config_file", nargs="?", type=Path, default=None, metavar="CONFIG", help="YAML config (same as --config)")

    certificate = sub.add_parser("certificate", help="work with certificates", description="work with certificates")
    certificate_sub = certificate.add_subparsers(dest="certificate_command", required=True, metavar="COMMAND")
    check = certificate_sub.add_parser(
        "check",
        help="re-check certificates against the models: hashes, signature, aggregates, and every verdict recomputed",
        description="Exit 0 when every certificate is valid, 1 when any check fails, 2 on bad input.",
    )
    check.add_argument("certificates", nargs="+", type=Path, metavar="CERT.json")
    check.add_argument("--config", type=Path, default=None, help="YAML config whose 'inputs' name the models (default: those under --out)")
    check.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"audit folder holding the models (default: {DEFAULT_OUT})")
    check.set_defaults(handler=cmd_certificate_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AuditInputError as error:
        print(f"auditai: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("auditai: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: keep the traceback, but never exit 1 ("spec failed")
        logging.getLogger("auditai").exception("internal error")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
