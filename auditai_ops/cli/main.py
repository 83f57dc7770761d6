"""`auditai`: one subcommand per pipeline step, plus `run` for the whole audit.

Every step reads its section of the YAML config (embedded defaults when no config is given)
and reads and writes files under --out. Exit codes: 0 ok (every spec passes), 1 a spec
fails, 2 bad input or an error. Bad input is reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from auditai_ops.allocator import keep_freed_memory
from auditai_ops.config import AuditConfig, load_config
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import DIRECTIONS_JSON, StepInputs, resolve_inputs
from auditai_ops.preflight import DISCOVER_DIRECTIONS, MAP_LATENTS, TRAIN_CLASSIFIER, VERIFY, Preflight, given_inputs, plan_run, preflight
from auditai_ops.steps import audit_generator, with_device

EXIT_OK, EXIT_SPEC_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_OUT = Path("auditai-out")


def _config_and_base(args: argparse.Namespace) -> tuple[AuditConfig, Path | None]:
    path = args.config
    config = with_device(load_config(path), getattr(args, "device", None))
    return config, (Path(path).resolve().parent if path else None)


def _inputs(args: argparse.Namespace) -> tuple[AuditConfig, StepInputs]:
    config, base = _config_and_base(args)
    return config, resolve_inputs(args.out, config.inputs, base)


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


@contextmanager
def _tracked(config: AuditConfig, args: argparse.Namespace, step: str) -> Iterator[None]:
    """Log the step to MLflow as a nested run of the audit (a no-op with tracking.enabled: false)."""
    from auditai_ops.tracking.steps import track_step

    with track_step(config.tracking, args.out, step, config, args.config):
        yield


def _checked(config: AuditConfig, base: Path | None, args: argparse.Namespace, steps: tuple[str, ...]) -> tuple[StepInputs, Preflight]:
    """The inputs of `steps`, checked before any of them runs (see auditai_ops.preflight)."""
    inputs = resolve_inputs(args.out, config.inputs, base)
    return inputs, preflight(config, base, args.out, steps, inputs, given_inputs(config, base))


def _generator(config: AuditConfig, inputs: StepInputs, base: Path | None, checked: Preflight) -> Generator:
    """The generator the preflight loaded, or the VAE that map-latents has written since."""
    return checked.generator if checked.generator is not None else audit_generator(config, inputs, base)


def cmd_map_latents(args: argparse.Namespace) -> int:
    from auditai_ops.latent.mapping import map_latents

    config, base = _config_and_base(args)
    _, checked = _checked(config, base, args, (MAP_LATENTS,))
    with _tracked(config, args, "map-latents"):
        artifacts = map_latents(config.data, config.latent, args.out, base, checked.generator, config.directions)
    _print_json({"vae": artifacts.vae_path, "latents": artifacts.latents_path, "reconstructions": artifacts.reconstruction_png, **artifacts.metrics})
    return EXIT_OK


def cmd_discover_directions(args: argparse.Namespace) -> int:
    from auditai_ops.directions.discover import discover_directions
    from auditai_ops.layout import DIRECTIONS_DIR

    config, base = _config_and_base(args)
    inputs, checked = _checked(config, base, args, (DISCOVER_DIRECTIONS,))
    with _tracked(config, args, "discover-directions"):
        directions = discover_directions(config.directions, _generator(config, inputs, base, checked), inputs.latents, args.out)
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

    config, base = _config_and_base(args)
    inputs, _ = _checked(config, base, args, (TRAIN_CLASSIFIER,))
    with _tracked(config, args, "train-classifier"):
        artifacts = train_classifier(config.classifier, inputs.latents, args.out)
    _print_json({"head": artifacts.head_path, **artifacts.metrics})
    return EXIT_OK


def _verify_and_report(config: AuditConfig, inputs: StepInputs, out: Path, base: Path | None, generator: Generator | None = None) -> int:
    """Verify every unit test; the certificates record, by sha256, the artifacts the config's `inputs` hand in (reused from other runs)."""
    from auditai_ops.report.render import console_table
    from auditai_ops.verify.step import verify_audit

    generator = generator if generator is not None else audit_generator(config, inputs, base)
    summary = verify_audit(config.unit_tests, config.verify, config.model, generator, inputs, out, base, reused=given_inputs(config, base))
    print(console_table(summary))
    print(f"\ncertificates, summary.json and junit.xml are in {out}")
    return _exit_code(summary)


def _exit_code(summary: dict[str, Any]) -> int:
    return {"pass": EXIT_OK, "fail": EXIT_SPEC_FAILED}.get(summary["verdict"], EXIT_ERROR)


def cmd_verify(args: argparse.Namespace) -> int:
    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    if args.shard is None:
        with _tracked(config, args, "verify"):
            return _verify_and_report(config, inputs, args.out, base)
    from auditai_ops.verify.step import verify_shard
    from auditai_ops.verify.unit_tests import Shard

    with _tracked(config, args, f"verify-shard-{args.shard.replace('/', '-of-')}"):
        path = verify_shard(config.unit_tests, config.verify, config.model, audit_generator(config, inputs, base), inputs, Shard.parse(args.shard), args.out, base)
    print(f"shard written to {path}; combine all shards with `auditai merge`")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from auditai_ops.report.render import console_table
    from auditai_ops.verify.step import find_shard_files, merge_shards

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    shard_files = find_shard_files(args.shards or [args.out])
    with _tracked(config, args, "verify"):  # the merged audit is logged as the verify step: summary, certificates, metrics
        generator = audit_generator(config, inputs, base)
        summary = merge_shards(config.unit_tests, config.verify, config.model, generator, inputs, shard_files, args.out, base, reused=given_inputs(config, base))
    print(console_table(summary))
    print(f"\nmerged {len(shard_files)} shards; certificates, summary.json and junit.xml are in {args.out}")
    return _exit_code(summary)



def _report(config: AuditConfig, args: argparse.Namespace, inputs: StepInputs) -> None:
    from auditai_ops.report.html import write_html_report

    with _tracked(config, args, "report"):
        print(f"report: {write_html_report(args.out, inputs.directions)}")


def cmd_report(args: argparse.Namespace) -> int:
    config, inputs = _inputs(args)
    _report(config, args, inputs)
    return EXIT_OK


def _gate(config: AuditConfig, args: argparse.Namespace, base: Path | None) -> int:
    from auditai_ops.gate.decision import render_decision
    from auditai_ops.gate.step import gate_audit

    decision = gate_audit(config, args.out, base, config_file=args.config)
    print(render_decision(decision), flush=True)
    return decision.exit_code


def cmd_gate(args: argparse.Namespace) -> int:
    config, base = _config_and_base(args)
    return _gate(config, args, base)


def cmd_promote(args: argparse.Namespace) -> int:
    from auditai_ops.gate.decision import render_decision
    from auditai_ops.gate.step import promote_version

    config, _ = _config_and_base(args)
    decision = promote_version(config, args.out, args.model, args.version, args.alias, args.to)
    print(render_decision(decision), flush=True)
    return decision.exit_code


def cmd_check_version(args: argparse.Namespace) -> int:
    from auditai_ops.gate.decision import render_decision
    from auditai_ops.gate.step import check_version

    config, _ = _config_and_base(args)
    decision = check_version(config, args.out, args.model, args.version, args.alias)
    print(render_decision(decision), flush=True)
    return decision.exit_code


def _gate_and_report(config: AuditConfig, args: argparse.Namespace, base: Path | None, inputs: StepInputs, verified: int) -> int:
    """The end of `auditai run`: the gate (when tracking is on and gate.on_run), then the HTML report; the worst exit code wins."""
    gated = EXIT_OK
    if config.tracking.enabled and config.gate.on_run:
        print("[auditai run] gate ...", flush=True)
        gated = _gate(config, args, base)
    _report(config, args, inputs)
    return max(verified, gated)


def _begin_audit(config: AuditConfig, args: argparse.Namespace) -> None:
    """A new MLflow parent run for this audit (steps nest under it); a tracking failure is a warning."""
    if config.tracking.enabled:
        from auditai_ops.tracking.steps import begin_audit

        begin_audit(config, args.out, args.config)


def cmd_run(args: argparse.Namespace) -> int:
    """Every step into --out, after checking every input; the steps whose outputs the config's `inputs` hand in are skipped."""
    from auditai_ops.classifier.head import train_classifier
    from auditai_ops.directions.discover import discover_directions
    from auditai_ops.latent.mapping import map_latents

    args.config = args.config or args.config_file
    config, base = _config_and_base(args)
    plan = plan_run(config, base)
    inputs, checked = _checked(config, base, args, (*plan.steps, VERIFY))
    print(f"[auditai run] inputs checked in {checked.seconds:.1f} s", flush=True)
    for name, reused in plan.skipped.items():
        print(f"[auditai run] {name} skipped: reusing " + ", ".join(f"inputs.{key} {path}" for key, path in reused.items()), flush=True)
    if MAP_LATENTS in plan.steps and config.inputs.vae is not None:
        print(f"[auditai run] map-latents encodes the dataset with inputs.vae {inputs.vae} (no VAE is trained)", flush=True)
    _begin_audit(config, args)
    actions: dict[str, Callable[[], object]] = {
        MAP_LATENTS: lambda: map_latents(config.data, config.latent, args.out, base, checked.generator, config.directions),
        DISCOVER_DIRECTIONS: lambda: discover_directions(config.directions, _generator(config, inputs, base, checked), inputs.latents, args.out),
        TRAIN_CLASSIFIER: lambda: train_classifier(config.classifier, inputs.latents, args.out),
    }
    for name in plan.steps:
        print(f"[auditai run] {name} ...", flush=True)
        started = time.perf_counter()
        with _tracked(config, args, name):
            actions[name]()
        print(f"[auditai run] {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    print("[auditai run] verify ...", flush=True)
    with _tracked(config, args, "verify"):
        verified = _verify_and_report(config, inputs, args.out, base, _generator(config, inputs, base, checked))
    code = _gate_and_report(config, args, base, inputs, verified)
    if verified != EXIT_SPEC_FAILED or not config.finetune.repair:
        return code
    return _repair(config, args, inputs, base)


def cmd_finetune(args: argparse.Namespace) -> int:
    from auditai_ops.finetune.step import PASSED_VALIDATION, finetune_model, specs_to_train

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    if not specs_to_train(config.finetune, config.unit_tests, args.out):
        print("nothing to fine-tune: every unit test passes (name unit tests under finetune.specs to train anyway)")
        return EXIT_OK
    result = finetune_model(config.finetune, config.unit_tests, config.verify, config.model, audit_generator(config, inputs, base), inputs, args.out, base)
    print(result.describe())
    return EXIT_OK if result.status == PASSED_VALIDATION else EXIT_SPEC_FAILED


def _repair(config: AuditConfig, args: argparse.Namespace, inputs: StepInputs, base: Path | None) -> int:
    """`finetune.repair: true`: fine-tune on the failing specs, re-audit the candidate into <out>/repaired, compare; gate the candidate when it passes."""
    from auditai_ops.finetune.repair import REPAIR_RECORD, REPAIRED_DIR, candidate_gate_config, repair_audit, repair_table

    out = Path(args.out)
    print("[auditai run] repair: certified fine-tuning on the failing unit tests ...", flush=True)
    started = time.perf_counter()
    outcome = repair_audit(config, audit_generator(config, inputs, base), inputs, out, base)
    print(f"[auditai run] fine-tuning and re-audit done in {time.perf_counter() - started:.1f} s\n{outcome.finetune.describe()}\n")
    print(repair_table(outcome.rows))
    if outcome.after is None:
        print(f"\nrepair: the original model is kept ({outcome.finetune.message}); see {out / REPAIR_RECORD}")
        return EXIT_SPEC_FAILED
    print(f"\nrepaired audit verdict: {outcome.after['verdict'].upper()}; certificates in {out / REPAIRED_DIR}, comparison in {out / REPAIR_RECORD}")
    if not outcome.passed:
        return EXIT_SPEC_FAILED
    repaired = candidate_gate_config(config, outcome, inputs, out)
    _, candidate = outcome.finetune.audit_settings(config.model, inputs)
    return _gate_and_report(repaired, argparse.Namespace(**{**vars(args), "out": out / REPAIRED_DIR}), base, candidate, EXIT_OK)


def cmd_certificate_check(args: argparse.Namespace) -> int:
    from auditai_ops.verify.check import check_certificate

    config, base = _config_and_base(args)
    inputs = resolve_inputs(args.out, config.inputs, base)
    if args.head is not None:
        inputs = replace(inputs, head=args.head)
    all_passed = True
    for path in args.certificates:
        checks = check_certificate(path, config, audit_generator(config, inputs, base), inputs, base, args.sample)
        passed = all(c.passed for c in checks)
        all_passed &= passed
        print(f"{path}: {'VALID' if passed else 'INVALID'}")
        for check in checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    return EXIT_OK if all_passed else EXIT_SPEC_FAILED


def checkout_module(name: str) -> ModuleType:
    """A module of this repository's checkout outside the library (pipelines/), found from $AUDITAI_REPO, the working directory or the package's own checkout."""
    relative = Path(*name.split(".")).with_suffix(".py")
    candidates = [Path(os.environ["AUDITAI_REPO"])] if os.environ.get("AUDITAI_REPO") else []
    candidates += [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    root = next((c for c in candidates if (c / relative).is_file()), None)
    if root is None:
        raise AuditInputError(f"{relative}: not found; run `auditai kfp` inside the auditai-ops repository or set AUDITAI_REPO to it")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise AuditInputError(f"{relative}: needs the package '{error.name}' (install the kfp extra: pip install 'auditai-ops[kfp]')") from None


def cmd_kfp(args: list[str]) -> int:
    kfp_cli = checkout_module("pipelines.kfp_cli")
    parser = argparse.ArgumentParser(prog="auditai kfp", description="Kubeflow Pipelines: compile, submit, schedule, or run the audit pipeline locally.")
    kfp_cli.add_arguments(parser)
    return kfp_cli.main(parser.parse_args(args))


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (anything else is a usage error, exit 2)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


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
    verify = step("verify", cmd_verify, "prove or falsify every unit test; write certificates, summary.json, junit.xml", device=True)
    verify.add_argument("--shard", default=None, metavar="i/N", help="verify only shard i of N (0-based) into OUT/shards/; combine with `auditai merge`")
    merge = step("merge", cmd_merge, "combine the shard files of `verify --shard` into certificates, summary.json, junit.xml")
    merge.add_argument("shards", nargs="*", type=Path, metavar="SHARDS", help="shard files or folders holding them (default: OUT/shards)")
    step("report", cmd_report, "write the self-contained HTML report <out>/report.html")
    step("gate", cmd_gate, "register the audited model in MLflow; set the alias only past passing, matching certificates (exit 0 set, 1 refused, 2 error)")
    promote = step("promote", cmd_promote, "set an alias on a model version only if its own certificates pass and match its weights (exit 0, 1 refused, 2 error)")
    promote.add_argument("--model", required=True, help="registered model name")
    chosen = promote.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--version", default=None, help="the version to promote")
    chosen.add_argument("--alias", default=None, help="the version an alias points at (e.g. certified)")
    promote.add_argument("--to", required=True, metavar="ALIAS", help="the alias to set, e.g. production")
    check_version = step("check-version", cmd_check_version, "re-check a registered version's certificates and weights, read-only (exit 0 passes, 1 refused, 2 error)")
    check_version.add_argument("--model", required=True, help="registered model name")
    checked = check_version.add_mutually_exclusive_group(required=True)
    checked.add_argument("--version", default=None, help="the version to check")
    checked.add_argument("--alias", default=None, help="the version an alias points at (e.g. certified)")
    step("finetune", cmd_finetune, "certified fine-tuning against the failing unit tests (summary.json) or finetune.specs; writes a candidate model", device=True)
    run = step("run", cmd_run, "every step end to end into --out, then the gate and the HTML report (finetune.repair: fine-tune, re-audit, gate the candidate)", device=True)
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
    check.add_argument("--head", type=Path, default=None, help="the classifier head to check against instead of the config's or --out's (e.g. a fine-tuned candidate)")
    check.add_argument(
        "--sample", type=_positive_int, default=None, metavar="POINTS", help="also evaluate the model at POINTS evenly spaced points of the box for every verified sample"
    )
    check.set_defaults(handler=cmd_certificate_check)

    sub.add_parser("kfp", help="Kubeflow Pipelines: compile, submit, schedule, run-local (see `auditai kfp --help`)", add_help=False)
    return parser


def _check_out(out: object) -> None:
    """--out names a folder, or a path that can become one: nothing on the way to it may be a file."""
    if not isinstance(out, Path):
        return
    for candidate in (out, *out.parents):
        if candidate.is_dir():
            return
        if candidate.exists() or candidate.is_symlink():
            raise AuditInputError(f"--out '{out}': '{candidate}' exists and is not a folder; expected a folder, or a path where one can be made")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # one process per step: see auditai_ops.allocator
    args = build_parser().parse_args(argv) if argv[:1] != ["kfp"] else None
    try:
        if args is None:
            return cmd_kfp(argv[1:])
        _check_out(getattr(args, "out", None))
        return args.handler(args)
    except AuditInputError as error:
        message = " ".join(str(error).splitlines())  # the contract: one line
        print(f"auditai: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("auditai: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.filename is None:  # no file to name: keep the traceback
            logging.getLogger("auditai").exception("internal error")
            return EXIT_ERROR
        # the file system refused (permissions, a full disk, a file where a folder should be): not a bug, and the file says what to fix
        target = f"'{error.filename}'" + (f" -> '{error.filename2}'" if error.filename2 else "")
        print(f"auditai: error: {target}: {error.strerror or type(error).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # a bug, not bad input: keep the traceback, but never exit 1 ("spec failed")
        logging.getLogger("auditai").exception("internal error")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
