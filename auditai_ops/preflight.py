"""Check every input of the steps about to run before any of them trains anything.

`auditai run` trains the VAE, finds the directions and trains the head before it verifies;
an audited classifier the verifier cannot bound, or a unit test naming a direction that will
not exist, used to surface only after all that training. `preflight` loads and checks, in
seconds, what the given steps will read:

* the output folder can be written;
* the dataset loads, its training split is large enough for `latent.batch_size` and its
  images fit the team's generator (when map-latents runs), or the latents file has every
  split, one latent dimension and the generator's (when it is an input);
* the generator: the team's own encoder and decoder (loaded, boundable, shapes chained), the
  given or earlier VAE, or, when map-latents will train one, an untrained VAE of the configured
  architecture standing in for it;
* the directions: the attributes to probe exist and `directions.pca_components` fits the
  latent dimension, or the given directions load and live in the latent space;
* the unit tests name existing directions with calibrated units (`resolve_unit_tests` on the
  directions to come);
* the audited model: built as `verify` builds it (`build_audited_model`: the team's classifier
  loaded, every layer checked, composed with the decoder), then accepted by the verifier's
  own layer walk (`check_supported`, `flatten_layers`) and run once on latents of the right
  dimension, giving one logit per class; the head, when it is an input, takes those latents;
* `verify.device` is available.

`plan_run` decides which steps `auditai run` skips because the config's `inputs` section
hands in their outputs, and `given_inputs` names those artifacts for the certificates.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auditai_ops.config import AuditConfig
from auditai_ops.data.attributes import measured_attribute_names
from auditai_ops.data.datasets import SPLITS, Dataset, load_dataset
from auditai_ops.data.npz import open_npz
from auditai_ops.directions.discover import Direction, load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator, vae_generator
from auditai_ops.latent.mapping import load_vae
from auditai_ops.latent.vae import VAE, VAEArchitecture
from auditai_ops.layers import check_supported
from auditai_ops.layout import StepInputs, resolve_inputs

MAP_LATENTS, DISCOVER_DIRECTIONS, TRAIN_CLASSIFIER, VERIFY = "map-latents", "discover-directions", "train-classifier", "verify"
TRAINING_STEPS = (MAP_LATENTS, DISCOVER_DIRECTIONS, TRAIN_CLASSIFIER)
"""The steps of `auditai run` before verify, in order; each one's outputs may be handed in instead."""
INPUT_NAMES = ("vae", "latents", "directions", "head")
_REPLACED_BY = {MAP_LATENTS: ("vae", "latents"), DISCOVER_DIRECTIONS: ("directions",), TRAIN_CLASSIFIER: ("head",)}


def given_inputs(config: AuditConfig, base_dir: Path | None = None) -> dict[str, Path]:
    """The artifacts the config's `inputs` section hands in (input name -> path, relative ones against `base_dir`): the audit reuses them."""
    resolved = resolve_inputs(Path(), config.inputs, base_dir)
    return {name: getattr(resolved, name) for name in INPUT_NAMES if getattr(config.inputs, name) is not None}


@dataclass(frozen=True)
class RunPlan:
    """The training steps `auditai run` runs, and those it skips with the inputs that replace their outputs."""

    steps: tuple[str, ...]
    skipped: dict[str, dict[str, Path]]


def plan_run(config: AuditConfig, base_dir: Path | None = None) -> RunPlan:
    """Skip map-latents when the latents are given (with the VAE that encoded them, unless the team brings its generator),
    discover-directions when the directions are, train-classifier when the head is.

    Directions and a head belong to one latent space: they are refused when map-latents would
    train a new VAE (no `inputs.vae` and no team generator), and so are latents without the
    generator that encoded them.
    """
    given = given_inputs(config, base_dir)
    own = config.generator.encoder is not None
    if own and "vae" in given:
        raise AuditInputError("inputs.vae: the config brings its own generator (generator.encoder and generator.decoder); drop inputs.vae")
    if not own and "latents" in given and "vae" not in given:
        raise AuditInputError("inputs.latents: latents are reused only with the generator that encoded them; give inputs.vae too (or generator.encoder and generator.decoder)")
    trains_vae = not own and "vae" not in given
    for name in ("directions", "head"):
        if name in given and trains_vae:
            raise AuditInputError(
                f"inputs.{name}: reused {name} belong to the latent space they were made in, but `auditai run` would train a new VAE; "
                "give inputs.vae and inputs.latents of the same run too (or generator.encoder and generator.decoder)"
            )
    skipped: dict[str, dict[str, Path]] = {}
    for step, names in _REPLACED_BY.items():
        needed = ("latents",) if step == MAP_LATENTS and own else names
        if all(name in given for name in needed):
            skipped[step] = {name: given[name] for name in needed}
    return RunPlan(tuple(step for step in TRAINING_STEPS if step not in skipped), skipped)


@dataclass(frozen=True)
class Preflight:
    """What the checks loaded, for the steps to reuse.

    `generator`: the team's own, or the given or earlier VAE; None when map-latents trains the
    VAE (then later steps load what it writes). `latent_dim` and `num_classes` as the audit will
    see them; `seconds`: how long the checks took.
    """

    generator: Generator | None
    latent_dim: int
    num_classes: int
    seconds: float


def preflight(
    config: AuditConfig,
    base_dir: Path | None,
    out_dir: Path,
    steps: Collection[str],
    inputs: StepInputs,
    given: Mapping[str, str | Path] | None = None,
    out_field: str = "--out",
) -> Preflight:
    """Load and check every input of `steps` (see the module docstring); the first problem is an AuditInputError naming its file or field.

    `inputs`: where the steps read earlier artifacts; `given`: which of them the config hands in
    (named `inputs.<name>` in errors); a step not in `steps` is taken as done, its outputs read
    from `inputs`. With map-latents in `steps` and `inputs.vae` given, the given VAE encodes the
    dataset instead of a new one being trained.
    """
    started = time.perf_counter()
    unknown = set(steps) - {*TRAINING_STEPS, VERIFY}
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}")
    given = dict(given or {})
    for name, path in given.items():
        _check_exists(f"inputs.{name}", Path(path), directory=name == "directions")
    if VERIFY in steps:
        if not config.unit_tests:
            raise AuditInputError("unit_tests: no unit tests are configured; add at least one under 'unit_tests'")
        from auditai_ops.verify.engine import resolve_device

        resolve_device(config.verify.device)
    _check_writable(Path(out_dir), out_field)

    generator = _generator(config, base_dir, steps, inputs, given)
    if MAP_LATENTS in steps:
        dataset = load_dataset(config.data.dataset, base_dir)
        image_shape, num_classes, attributes = _check_dataset(config, dataset, generator)
        latent_dim = generator.latent_dim if generator is not None else config.latent.latent_dim
    else:
        with _field("latents", given):
            latent_dim, num_classes, attributes = _check_latents(inputs.latents, f"latents '{inputs.latents}'", generator)
        image_shape = generator.input_shape if generator is not None else None

    directions = _directions(config, steps, inputs, given, latent_dim, attributes)
    if VERIFY in steps:
        from auditai_ops.verify.unit_tests import resolve_unit_tests

        resolve_unit_tests(config.unit_tests, directions)
        head_trained = TRAIN_CLASSIFIER in steps
        uses_head = config.model.mode == "latent" or config.model.classifier is None
        if uses_head and not head_trained:
            _check_head(inputs.head, given, latent_dim, num_classes)
        if not (uses_head and head_trained):
            assert image_shape is not None  # known from the dataset or the generator whenever a generator is needed
            stand_in = generator if generator is not None else _untrained_vae(config, image_shape)
            _check_audited_network(config, stand_in, inputs, base_dir, num_classes)
    return Preflight(generator, latent_dim, num_classes, time.perf_counter() - started)


def _label(name: str, path: Path, given: Mapping[str, str | Path]) -> str:
    return f"inputs.{name} '{path}'" if name in given else f"{name} '{path}'"


@contextmanager
def _field(name: str, given: Mapping[str, str | Path]) -> Iterator[None]:
    """Prefix the errors of loading a given input with its field, `inputs.<name>: `."""
    try:
        yield
    except AuditInputError as error:
        if name not in given:
            raise
        raise AuditInputError(f"inputs.{name}: {error}") from None


def _check_exists(field: str, path: Path, directory: bool) -> None:
    if directory and not path.is_dir():
        raise AuditInputError(f"{field}: '{path}' is not a folder (expected the directions/ folder of a run, with directions.json and directions.npz)")
    if not directory and not path.is_file():
        raise AuditInputError(f"{field}: '{path}' not found")


def _check_writable(out_dir: Path, field: str) -> None:
    """The output folder exists or can be created, and a file can be written in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".auditai-write-check-"):
            pass
    except OSError as error:
        raise AuditInputError(f"{field} '{out_dir}': cannot write there ({error.strerror or error})") from None


def _generator(config: AuditConfig, base_dir: Path | None, steps: Collection[str], inputs: StepInputs, given: Mapping[str, str | Path]) -> Generator | None:
    """The team's own generator, or the VAE the steps read (the given one; or the earlier one unless map-latents trains it); None when map-latents trains the VAE."""
    from auditai_ops.models.generator import load_generator

    if config.generator.encoder is not None:
        return load_generator(config.generator, Path(), base_dir)
    if MAP_LATENTS in steps and "vae" not in given:
        return None
    if not ({MAP_LATENTS, DISCOVER_DIRECTIONS, VERIFY} & set(steps)):
        return None  # train-classifier alone reads only the latents
    with _field("vae", given):
        vae, _ = load_vae(inputs.vae)
    return vae_generator(vae)


def _check_dataset(config: AuditConfig, dataset: Dataset, generator: Generator | None) -> tuple[tuple[int, int, int], int, set[str]]:
    """The dataset's image shape (C, H, W), classes and attributes, checked against the generator and the training settings."""
    where = f"data.dataset '{config.data.dataset}'"
    train = dataset.train.head(config.data.train_limit)
    test = dataset.test.head(config.data.test_limit)
    channels, height, width = (int(n) for n in train.images.shape[1:])
    if generator is None and len(train) < config.latent.batch_size:
        raise AuditInputError(f"latent.batch_size: {config.latent.batch_size} is larger than the training split ({len(train)} images)")
    if generator is not None and generator.image_shape != (height, width):
        field = "generator.image_shape" if config.generator.encoder is not None else "inputs.vae"
        raise AuditInputError(f"{field}: the generator makes {generator.image_shape[0]}x{generator.image_shape[1]} images, but {where} has {height}x{width}")
    if generator is not None and generator.image_channels != channels:
        field = "generator.image_channels" if config.generator.encoder is not None else "inputs.vae"
        raise AuditInputError(f"{field}: the generator makes images of {generator.image_channels} channel(s), but {where} has {channels}")
    if len(test) == 0 or len(dataset.valid) == 0:
        raise AuditInputError(f"{where}: the test and validation splits need at least one image each")
    if dataset.num_classes < 2:
        raise AuditInputError(f"{where}: expected labels of at least two classes, got {dataset.num_classes}")
    columns = set(dataset.train.attributes or {})
    attributes = set(measured_attribute_names(config.directions.attributes, config.directions.measure, channels, columns)) | columns
    return (channels, height, width), dataset.num_classes, attributes


def _check_latents(path: Path, where: str, generator: Generator | None) -> tuple[int, int, set[str]]:
    """The latent dimension, classes and attributes of a latents file, every split read and checked, their dimensions against each other and the generator's."""
    from auditai_ops.latent.latents_file import MISSING_HINT, read_latent_split

    dims = {split: read_latent_split(path, split).latent_dim for split in SPLITS}
    with open_npz(path, where, MISSING_HINT) as archive:
        classes = archive.read("num_classes")
        attributes = {key.removeprefix("train_attr_") for key in archive.files if key.startswith("train_attr_")}
    if len(set(dims.values())) != 1:
        raise AuditInputError(f"{where}: the splits' latents have different dimensions {dims}")
    if classes.shape != () or not np.issubdtype(classes.dtype, np.integer) or int(classes) < 2:
        raise AuditInputError(f"{where}: key 'num_classes': expected one integer >= 2, got {classes!r}")
    latent_dim = dims["train"]
    if generator is not None and latent_dim != generator.latent_dim:
        raise AuditInputError(f"{where}: latents of dimension {latent_dim}, but the generator ({generator.source}) has {generator.latent_dim}")
    return latent_dim, int(classes), attributes


def _directions(config: AuditConfig, steps: Collection[str], inputs: StepInputs, given: Mapping[str, str | Path], latent_dim: int, attributes: set[str]) -> dict[str, Direction]:
    """The directions the unit tests will see: the given or earlier ones, loaded; or stand-ins for those discover-directions will find.

    The stand-ins have the names and units of the directions to come: attributes calibrated, PCA components in latent units.
    """
    if DISCOVER_DIRECTIONS in steps:
        settings = config.directions
        unknown = [a for a in settings.attributes if a not in attributes]
        if unknown:
            raise AuditInputError(f"directions.attributes: unknown attribute(s) {unknown}; measured attributes are {sorted(attributes)}")
        if settings.pca_components > latent_dim:
            raise AuditInputError(f"directions.pca_components: {settings.pca_components} exceeds the latent dimension {latent_dim}")
        zero = np.zeros(latent_dim, np.float32)
        planned = [Direction(a, "attribute", zero, "units", 1.0) for a in settings.attributes]
        planned += [Direction(f"pca{i + 1}", "pca", zero, "latent", None) for i in range(settings.pca_components)]
        return {d.name: d for d in planned}
    if VERIFY not in steps:
        return {}
    with _field("directions", given):
        directions = load_directions(inputs.directions)
    for name, direction in directions.items():
        if direction.vector.shape != (latent_dim,):
            raise AuditInputError(
                f"{_label('directions', inputs.directions, given)}: direction '{name}' has shape {direction.vector.shape}, but the latents have dimension {latent_dim}"
            )
    return directions


def _check_head(path: Path, given: Mapping[str, str | Path], latent_dim: int, num_classes: int) -> None:
    """The head the audit reads takes latents of the audit's dimension and has a logit for every class."""
    from auditai_ops.classifier.head import load_head

    with _field("head", given):
        _, record = load_head(path)
    architecture, where = record["architecture"], _label("head", path, given)
    if int(architecture["latent_dim"]) != latent_dim:
        raise AuditInputError(f"{where}: a head for latents of dimension {architecture['latent_dim']}, but the latents have dimension {latent_dim}")
    if int(architecture["num_classes"]) < num_classes:
        raise AuditInputError(f"{where}: a head with {architecture['num_classes']} classes, but the labels have {num_classes}")


def _untrained_vae(config: AuditConfig, image_shape: tuple[int, int, int]) -> Generator:
    """A VAE of the configured architecture with random weights: the shapes and layers of the one map-latents will train."""
    with torch.random.fork_rng(devices=[]):
        vae = VAE(VAEArchitecture(image_shape[1], image_shape[2], config.latent.latent_dim, config.latent.channels, image_shape[0]))
    return vae_generator(vae.eval(), "the VAE map-latents will train")


def _check_audited_network(config: AuditConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None, num_classes: int) -> None:
    """Build the audited network as verify does, let the verifier's layer walk accept it, and run it once on latents."""
    from auditai_ops.verify.audited_model import build_audited_model
    from auditai_ops.verify.linear_bounds import flatten_layers

    settings = config.model
    audited = build_audited_model(settings, generator, inputs, base_dir)
    what = f"model.classifier '{settings.classifier}'" if settings.classifier is not None else f"model (mode {settings.mode})"
    chain = f"{generator.source} -> {'normalization -> ' if settings.normalization is not None else ''}{settings.classifier or 'head'}"
    example = torch.zeros(2, generator.latent_dim)
    try:
        check_supported(audited.network)
        flatten_layers(audited.network, example)
        with torch.no_grad():
            logits = audited.network(example)
    except AuditInputError as error:
        raise AuditInputError(f"{what}: the audited network ({chain}) cannot be bounded: {error}") from None
    except Exception as error:  # a shape mismatch between decoder, normalisation and classifier raises anything
        line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise AuditInputError(f"{what}: the audited network ({chain}) fails on latents of shape {tuple(example.shape)} ({type(error).__name__}: {line})") from None
    if logits.dim() != 2 or logits.shape[1] < num_classes:
        raise AuditInputError(
            f"{what}: the audited network ({chain}) returns shape {tuple(logits.shape)}; expected (batch, classes) with at least the {num_classes} classes of the labels"
        )
    if not torch.isfinite(logits).all():
        raise AuditInputError(f"{what}: the audited network ({chain}) returns NaN or infinite logits")
