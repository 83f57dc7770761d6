"""Typed audit configuration, validated from YAML at the edge.

Every section has embedded defaults, so a config file only states what differs. A misspelt
or mistyped field is reported with its full path (``unit_tests[0].range.low``) and what was
expected, as an `AuditInputError`.

Every setting that sizes memory or time has an upper bound (generous for real use; the
comments say how memory scales with it), so a typo such as ``falsify_grid: 200000000`` is a
one-line error instead of a 12.8 GB allocation. NaN and infinite numbers are refused
everywhere. The YAML itself is read by `parse_yaml`: at most `MAX_CONFIG_BYTES`, UTF-8, and
refused before validation when its aliases would expand past `MAX_YAML_NODES` nodes (a
"billion laughs" document) or nest deeper than `MAX_YAML_DEPTH`.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auditai_ops.errors import AuditInputError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
BoundMethod = Literal["forward", "forward+backward", "IBP", "CROWN", "CROWN-IBP", "alpha-CROWN"]


def _count(upper: int, lower: int = 1) -> Any:
    """An integer setting in [lower, upper]: the bound is part of the type, so its error names the field and the limit."""
    return Annotated[int, Field(ge=lower, le=upper)]


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


Seed = Annotated[int, Field(ge=0, lt=2**32)]
"""Seeds of numpy's and torch's generators: 0 <= seed < 2**32."""
PathText = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]
"""A file path, URI or module reference."""
LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
BATCH_LIMIT = 65536
"""Largest batch of any training or bounding loop: memory is linear in it (activations, or linear bounds, per row)."""
EPOCH_LIMIT = 10_000
MAX_SAMPLES = 1_000_000
"""Most samples of one unit test: its certificate holds one record per sample (about 300 bytes of JSON each)."""
MAX_LATENT_DIM = 4096
"""Widest latent space (also the bound of latents files read, latent.latents_file)."""
MAX_IMAGE_SIDE = 1024
"""Largest image height or width (also the bound of datasets read, data.datasets)."""
MAX_KWARGS_NODES = 1000
MAX_KWARGS_DEPTH = 8


def _check_plain(value: Any, path: str, seen: list[int], depth: int = 0) -> None:
    """`value` is JSON-like (str, finite number, bool, None, lists, string-keyed mappings), small and shallow."""
    seen[0] += 1
    if seen[0] > MAX_KWARGS_NODES:
        raise ValueError(f"more than {MAX_KWARGS_NODES} values in all")
    if depth > MAX_KWARGS_DEPTH:
        raise ValueError(f"nested deeper than {MAX_KWARGS_DEPTH} levels (at '{path}')")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"keys must be strings, got {type(key).__name__} {key!r}" + (f" in '{path}'" if path else ""))
            _check_plain(item, f"{path}.{key}" if path else key, seen, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{path}[{index}]", seen, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"'{path}' must be a finite number, got {value}")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise ValueError(f"'{path}' must be a string, number, boolean, null, list or mapping, got {type(value).__name__}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the images come from: ``mnist`` (built in, offline), ``fashion-mnist`` (Debian's dataset-fashion-mnist), a ``.npz`` file or an image folder.

    Images are grayscale or RGB, (N, H, W), (N, H, W, C) or (N, C, H, W) in a `.npz` (data.datasets).
    """

    dataset: PathText = "mnist"
    # How many images are read; memory is linear in it (4 bytes per pixel, plus the latents).
    train_limit: _count(100_000_000) | None = None
    test_limit: _count(100_000_000) | None = None


class LatentConfig(_Section):
    """The convolutional VAE that maps images to latents (the generator)."""

    # The VAE has one stride-2 stage more per doubling of the image size beyond 28 px (latent.vae);
    # channels are the first stage's feature maps and every later one's. Its weights grow as
    # channels[1] x (H/2^stages) x (W/2^stages) x latent_dim (its linear layers), its
    # activations as batch_size x channels x H x W; the products with the image size are checked
    # when the VAE is made (latent.vae.MAX_VAE_WEIGHTS) and before it trains (mapping.MAX_BATCH_ACTIVATIONS).
    latent_dim: _count(MAX_LATENT_DIM) = 16
    channels: tuple[_count(1024), _count(1024)] = (32, 64)
    epochs: _count(EPOCH_LIMIT) = 6
    batch_size: _count(BATCH_LIMIT) = 128
    learning_rate: LearningRate = 2e-3
    beta: Annotated[float, Field(ge=0.0, le=1e6)] = 1.0
    seed: Seed = 0


class DirectionsConfig(_Section):
    """Supervised attribute directions, PCA directions, and how their effect is measured.

    `attributes` names the attribute directions: attributes measured by code (the stroke family
    slant, thickness, width, height, area; the generic family brightness, contrast, size,
    centroid_x, centroid_y, orientation, hue, saturation; see data.attributes) or the dataset's
    own `attr_<name>` columns (binary 0/1 columns get a logistic probe, calibrated in logits).
    `measure` lists the code-measured attributes that every direction's disentanglement
    evidence compares against; by default, every attribute of the families named.
    """

    attributes: Annotated[tuple[Annotated[str, Field(max_length=100)], ...], Field(max_length=64)] = ("slant", "thickness", "width", "height")
    measure: Annotated[tuple[Annotated[str, Field(max_length=100)], ...], Field(max_length=64)] | None = None
    pca_components: _count(MAX_LATENT_DIM, lower=0) = 4
    ridge: Annotated[float, Field(ge=0.0, le=1e12)] = 1e-2
    # Each direction decodes effect_samples x effect_points images at once (4 bytes per pixel,
    # and the attribute measurement upsamples them), so both are bounded and so is their product.
    effect_samples: _count(100_000) = 512
    effect_max_step: Annotated[float, Field(gt=0.0, le=1e3)] = 1.5
    effect_points: _count(1001, lower=3) = 7
    # The traversal strip of each direction is a PNG of strip_samples x strip_points images.
    strip_samples: _count(100) = 6
    strip_points: _count(100, lower=2) = 9
    seed: Seed = 0

    @model_validator(mode="after")
    def _effect_images(self) -> DirectionsConfig:
        if self.effect_samples * self.effect_points > 1_000_000:
            raise ValueError(f"effect_samples x effect_points = {self.effect_samples} x {self.effect_points} images are decoded at once; keep the product <= 1000000")
        return self


class ClassifierConfig(_Section):
    """The audited model of the paper's setting: an MLP head on the generator's encoder."""

    # The head's weights grow as the product of neighbouring widths (8192 x 8192 = 67M weights,
    # 268 MB); bounding it (and fine-tuning it) holds one batch x width x classes per layer.
    hidden: Annotated[tuple[_count(8192), ...], Field(max_length=16)] = (256, 256)
    epochs: _count(EPOCH_LIMIT) = 30
    batch_size: _count(BATCH_LIMIT) = 256
    learning_rate: LearningRate = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0, le=1e3)] = 1e-4
    seed: Seed = 0


class RangeConfig(_Section):
    """An interval of the semantic parameter, in the attribute's units or in latent units."""

    low: Annotated[float, Field(ge=-1e6, le=1e6)]
    high: Annotated[float, Field(ge=-1e6, le=1e6)]
    units: Literal["attribute", "latent"] = "attribute"

    @model_validator(mode="after")
    def _ordered(self) -> RangeConfig:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class UnitTestConfig(_Section):
    """One semantically aligned unit test: one or more directions, their ranges, a property and a threshold.

    With k directions (a list) the set is the k-dimensional box of their ranges (a list of
    the same length). The threshold applies to the certified accuracy over the samples, or,
    with `threshold_on: lower_confidence_bound`, to its one-sided Clopper-Pearson bound.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)]
    direction: tuple[str, ...]
    range: tuple[RangeConfig, ...]
    property: Literal["true_label", "clean_prediction"] = "true_label"
    threshold: Probability = 0.9
    threshold_on: Literal["estimate", "lower_confidence_bound"] = "estimate"
    samples: _count(MAX_SAMPLES) | None = None

    @field_validator("direction", "range", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single direction (range) is a list of one."""
        return value if isinstance(value, list | tuple) else (value,)

    @model_validator(mode="after")
    def _ranges_match_directions(self) -> UnitTestConfig:
        if not 1 <= len(self.direction) <= 3:
            raise ValueError(f"a unit test varies 1 to 3 directions, got {len(self.direction)}")
        if len(self.range) != len(self.direction):
            raise ValueError(f"{len(self.direction)} direction(s) need as many ranges, got {len(self.range)}")
        if len(set(self.direction)) != len(self.direction):
            raise ValueError(f"directions {list(self.direction)} repeat a direction")
        return self


class VerifyConfig(_Section):
    """How unit tests are proved: bound methods in order, counterexample search, branch-and-bound budget, device."""

    methods: Annotated[tuple[BoundMethod, ...], Field(max_length=12)] = ("forward+backward",)
    refine_method: BoundMethod | None = None
    samples: _count(MAX_SAMPLES) = 1000
    # Pieces of the latent box are bounded batch_size at a time: memory is linear in it (the
    # linear bounds of every layer, per piece and class).
    batch_size: _count(BATCH_LIMIT) = 1024
    # Branch and bound keeps up to block_size x max_pieces open pieces (a few k-dim boxes
    # each); both are bounded and so is their product.
    block_size: _count(65536) = 256
    max_pieces: _count(65536) = 64
    # The branch and bound of one unit test splits at most this many pieces in all (each split
    # adds one piece to a sample), shared among the blocks in proportion to their samples, so
    # the verdicts depend neither on timing nor on the shard layout. 65536 cannot trip at the
    # default samples and max_pieces (1000 x 63 splits); it caps runs with many more samples.
    max_splits_per_test: _count(2**40, lower=0) = 65536
    # The counterexample search evaluates falsify_grid (+ restarts) points per piece, in chunks
    # of about 65536 points, so one piece needs falsify_grid x latent_dim floats at least:
    # 200000000 would take 12.8 GB.
    falsify_grid: _count(4096, lower=2) = 33
    falsify_steps: _count(10_000, lower=0) = 10
    falsify_restarts: _count(1024) = 2
    # Wall-clock budget of one unit test: opt-in, since what it leaves undecided depends on the
    # machine's speed and load (certificates then say `budget_exhausted: time`).
    seconds_per_test: Annotated[float, Field(gt=0.0, le=7 * 86400.0)] | None = None
    # Points (counterexample search, dense sampling) and boxes (auto_LiRPA bounds) are processed
    # in chunks whose estimated activation memory stays under this many MiB (the network's
    # widest layer, with convolution work buffers, per point): peak memory does not grow with
    # batch_size or falsify_grid. A fixed setting, not the machine's free memory, so chunks are
    # the same on every machine.
    chunk_memory_mb: _count(1 << 20, lower=16) = 256
    min_margin: Annotated[float, Field(ge=0.0, le=1e6)] = 1e-5
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    curve_fractions: Annotated[tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...], Field(max_length=100)] = (0.25, 0.5, 0.75)
    device: Annotated[str, Field(max_length=64)] = "cpu"
    seed: Seed = 0

    @field_validator("methods")
    @classmethod
    def _non_empty(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if not methods:
            raise ValueError("at least one bound method is needed")
        return methods

    @model_validator(mode="after")
    def _open_pieces(self) -> VerifyConfig:
        if self.block_size * self.max_pieces > 2**24:
            raise ValueError(f"block_size x max_pieces = {self.block_size} x {self.max_pieces} open pieces at most; keep the product <= {2**24}")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
            raise ValueError(f"expected 'cpu', 'cuda' or 'cuda:N', got '{device}'")
        return device


class NormalizationConfig(_Section):
    """Per-channel input normalisation of the audited pixel classifier: x -> (x - mean) / std."""

    mean: Annotated[tuple[Annotated[float, Field(ge=-1e6, le=1e6)], ...], Field(max_length=64)]
    std: Annotated[tuple[Annotated[float, Field(gt=0.0, le=1e6)], ...], Field(max_length=64)]

    @model_validator(mode="after")
    def _one_per_channel(self) -> NormalizationConfig:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        return self


class ModelConfig(_Section):
    """The audited model.

    latent mode: the head trained by `train-classifier` on the generator's latents (model =
    head o encoder; the head is verified on the latent box). pixel mode: a classifier on
    images, verified as classifier o decoder over the latent box with the decoder inside
    the bounded graph; `classifier` is a TorchScript file, an ONNX file, 'package.module:factory'
    (with safetensors `weights`), or an MLflow model URI; without it, head o encoder is
    audited on decoded images. With another form than a factory, `weights` replace the loaded
    classifier's (a fine-tuned candidate written by `auditai finetune`).
    """

    mode: Literal["latent", "pixel"] = "latent"
    classifier: PathText | None = None
    weights: PathText | None = None
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of a 'package.module:factory' classifier: JSON-like values only, at most
    MAX_KWARGS_NODES values nested at most MAX_KWARGS_DEPTH deep (they are hashed, logged and shown)."""
    trust_pickle: bool = False
    normalization: NormalizationConfig | None = None

    @field_validator("factory_kwargs")
    @classmethod
    def _plain_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        _check_plain(kwargs, "", [0])
        return kwargs

    @model_validator(mode="after")
    def _pixel_only(self) -> ModelConfig:
        if self.mode == "latent" and (self.classifier or self.normalization or self.weights):
            raise ValueError("'classifier', 'weights' and 'normalization' apply to mode: pixel only")
        if self.weights and not self.classifier:
            raise ValueError("'weights' needs a 'classifier' of the form 'package.module:factory'")
        return self


class GeneratorConfig(_Section):
    """A team's own generator instead of the VAE that `map-latents` trains.

    `encoder` maps images (B, C, H, W) in [0, 1] to latents (B, D) and `decoder` maps them
    back; each is a TorchScript file, an ONNX file, 'package.module:factory' or an MLflow URI,
    made of layers the verifier can bound. `image_shape` is (H, W), `image_channels` is C:
    1 (grayscale) or 3 (RGB).
    """

    encoder: PathText | None = None
    decoder: PathText | None = None
    image_shape: tuple[_count(MAX_IMAGE_SIDE), _count(MAX_IMAGE_SIDE)] = (28, 28)
    image_channels: Literal[1, 3] = 1
    trust_pickle: bool = False

    @model_validator(mode="after")
    def _both_or_neither(self) -> GeneratorConfig:
        if (self.encoder is None) != (self.decoder is None):
            raise ValueError("give both 'encoder' and 'decoder', or neither (then map-latents trains the VAE)")
        return self


class InputsConfig(_Section):
    """Artifacts of earlier steps to read instead of those in the output folder (paths relative to the config)."""

    vae: PathText | None = None
    latents: PathText | None = None
    directions: PathText | None = None
    head: PathText | None = None


class TrackingConfig(_Section):
    """MLflow tracking: `uri` (else $MLFLOW_TRACKING_URI, else sqlite in `<out>/mlflow/`), experiment, artifact location (e.g. s3://...)."""

    enabled: bool = True
    uri: PathText | None = None
    experiment: Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_no_nul)] = "auditai"
    artifact_location: PathText | None = None


class GateConfig(_Section):
    """The model-registry gate: the registered model's name, the alias it sets, its time limit, whether `auditai run` ends with it, and whether certificates must be signed."""

    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)] = "auditai-model"
    alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=100)] = "certified"
    timeout_seconds: Annotated[float, Field(gt=0.0, le=7 * 86400.0)] = 600.0
    on_run: bool = True
    require_signature: bool = False
    """Refuse certificates without a valid HMAC signature for AUDITAI_SIGNING_KEY (and refuse to decide when the key is unset)."""


class FinetuneConfig(_Section):
    """Certified fine-tuning of the audited model against unit tests it fails (`auditai finetune`; `repair: true` in `auditai run`).

    Training minimises kappa * clean cross-entropy + (1 - kappa) * robust cross-entropy, the
    latter on the IBP or CROWN-IBP lower bounds of the margins over each spec's latent box.
    Epochs: `warmup_epochs` of clean loss, then `ramp_epochs` in which the box grows from the
    point t = 0 to the spec's box widened by `range_margin` (and kappa moves from
    `kappa_start` to `kappa_end`), then the full box. Each box is bounded as `pieces` equal
    sub-boxes (the worst one counts): the branch and bound of the audit, in miniature. After every epoch past the warm-up,
    certified accuracy at the spec's box is measured by the verifier on `validation_samples`
    of the valid split (disjoint from the audit's test samples); training stops once every
    spec clears its threshold by `early_stop_margin`. A candidate whose clean accuracy on the
    valid split drops by more than `clean_accuracy_drop` is never kept.
    """

    repair: bool = False
    specs: Annotated[tuple[Annotated[str, Field(max_length=80)], ...], Field(max_length=1000)] | None = None
    method: Literal["IBP", "CROWN-IBP"] = "CROWN-IBP"
    epochs: _count(EPOCH_LIMIT) = 10
    warmup_epochs: _count(EPOCH_LIMIT, lower=0) = 1
    ramp_epochs: _count(EPOCH_LIMIT, lower=0) = 3
    range_margin: Annotated[float, Field(ge=0.0, le=100.0)] = 0.1
    # Every training sample is bounded on `pieces` sub-boxes with gradients kept: memory is
    # linear in batch_size x pieces (rows through the network), so that product is bounded too.
    pieces: _count(4096) = 8
    kappa_start: Probability = 1.0
    kappa_end: Probability = 0.7
    learning_rate: LearningRate = 5e-4
    weight_decay: Annotated[float, Field(ge=0.0, le=1e3)] = 0.0
    batch_size: _count(BATCH_LIMIT) = 512
    samples_per_epoch: _count(100_000_000) | None = 4000
    clean_accuracy_drop: Probability = 0.01
    validation_samples: _count(MAX_SAMPLES) = 1000
    early_stop_margin: Probability = 0.02
    seed: Seed = 0

    @model_validator(mode="after")
    def _schedule_fits(self) -> FinetuneConfig:
        if self.warmup_epochs + self.ramp_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs + ramp_epochs ({self.warmup_epochs} + {self.ramp_epochs}) must be < epochs ({self.epochs}): the full range needs an epoch")
        if self.specs is not None and not self.specs:
            raise ValueError("specs: name at least one unit test, or leave it out to take the failing ones")
        if self.batch_size * self.pieces > 2**21:
            raise ValueError(f"batch_size x pieces = {self.batch_size} x {self.pieces} boxes are bounded per step; keep the product <= {2**21}")
        return self


class AuditConfig(_Section):
    """A whole audit: the pipeline steps' settings and the unit tests."""

    inputs: InputsConfig = InputsConfig()
    tracking: TrackingConfig = TrackingConfig()
    gate: GateConfig = GateConfig()
    model: ModelConfig = ModelConfig()
    generator: GeneratorConfig = GeneratorConfig()
    data: DataConfig = DataConfig()
    latent: LatentConfig = LatentConfig()
    directions: DirectionsConfig = DirectionsConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    verify: VerifyConfig = VerifyConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    unit_tests: Annotated[tuple[UnitTestConfig, ...], Field(max_length=1000)] = ()

    @field_validator("unit_tests")
    @classmethod
    def _unique_names(cls, tests: tuple[UnitTestConfig, ...]) -> tuple[UnitTestConfig, ...]:
        seen: set[str] = set()
        for test in tests:
            if test.name in seen:
                raise ValueError(f"unit test name '{test.name}' is used twice")
            seen.add(test.name)
        return tests


def _field_path(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_at(location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config section class that holds the field at `location`, for 'did you mean' hints."""
    model: Any = AuditConfig
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _describe(error: dict[str, Any]) -> str:
    location = tuple(error["loc"])
    path = _field_path(location)
    if error["type"] == "extra_forbidden":
        model = _model_at(location)
        known = list(model.model_fields) if model is not None else []
        hint = difflib.get_close_matches(str(location[-1]), known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else (f" (known fields: {', '.join(known)})" if known else "")
        return f"{path}: unknown field{suggestion}"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if error["type"] == "value_error" or isinstance(got, dict | list | tuple) or got is None else f" (got {_short_repr(got)})"
    return f"{path}: {message}{shown}"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_config(raw: Any, source: str = "config") -> AuditConfig:
    """Validate a decoded YAML document into an `AuditConfig`, naming every bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AuditInputError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as error:
        errors = error.errors()
        problems = "; ".join(_describe(e) for e in errors[:10]) + (f"; and {len(errors) - 10} more problems" if len(errors) > 10 else "")
        raise AuditInputError(f"{source}: {_one_line(problems)}") from None


MAX_CONFIG_BYTES = 2**20
"""A config file or text is at most 1 MiB (the shipped examples are under 2 kB)."""
MAX_YAML_NODES = 50_000
"""Most YAML nodes a config may stand for, every alias counted as the nodes it repeats."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of a config, aliases followed (PyYAML composes recursively)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses, before anything is constructed, documents nested deeper
    than MAX_YAML_DEPTH or whose aliases expand past MAX_YAML_NODES nodes ("billion laughs": the
    loaded object shares nodes, but whatever walks it, validation, hashing or logging, expands them)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            if self._nodes > MAX_YAML_NODES:  # early, before composing the rest; aliases are expanded in the count of compose_document
                raise yaml.composer.ComposerError(None, None, f"the document has more than {MAX_YAML_NODES} nodes", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _expanded_size(node, {}, set(), 1)
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], depth: int) -> int:
    """The number of nodes `node` stands for with every alias expanded; refuses cycles, depth and size past the limits."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it (a recursive document)", node.start_mark)
    if depth > MAX_YAML_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded", node.start_mark)
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    open_nodes.add(key)
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_nodes, depth + 1)
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"the document expands to more than {MAX_YAML_NODES} nodes once aliases are expanded", node.start_mark)
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """A YAML error on one line, with the 1-based line and column where the problem is."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = _one_line(error.problem or error.context or "malformed document")
        context = f" ({_one_line(error.context)})" if error.context and error.problem else ""
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML{where}: {problem}{context}"
    if isinstance(error, yaml.reader.ReaderError):
        position = int(error.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        character = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        return f"not valid YAML at line {line}, column {column}: unacceptable character {character} ({_one_line(error.reason)})"
    return f"not valid YAML: {_one_line(str(error))}"


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, read with `_BoundedLoader`; any problem is one line naming `source`, the line and the column."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise AuditInputError(f"{source}: larger than the limit of {MAX_CONFIG_BYTES:,} bytes")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise AuditInputError(f"{source}: {_yaml_problem(error, text)}") from None
    except RecursionError:
        raise AuditInputError(f"{source}: not valid YAML: nested too deeply") from None
    except (ValueError, KeyError, TypeError, OverflowError) as error:  # an explicit tag (!!int, !!float, !!bool, !!timestamp) on a value it cannot read
        raise AuditInputError(f"{source}: not valid YAML: a tagged value cannot be read ({_one_line(str(error))})") from None


def read_config_text(path: Path) -> str:
    """The text of a config file: at most MAX_CONFIG_BYTES of UTF-8 (a BOM is allowed)."""
    where = f"config file '{path}'"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise AuditInputError(f"{where}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise AuditInputError(f"{where}: larger than the limit of {MAX_CONFIG_BYTES:,} bytes; a config is a short YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AuditInputError(f"{where}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); expected a YAML config") from None


def load_config(path: Path | None) -> AuditConfig:
    """Read and validate a YAML config file; `None` gives the embedded defaults."""
    if path is None:
        return AuditConfig()
    path = Path(path)
    source = f"config file '{path}'"
    return parse_config(parse_yaml(read_config_text(path), source), source=source)
