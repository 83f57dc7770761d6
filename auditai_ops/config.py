"""Typed audit configuration, validated from YAML at the edge.

Every section has embedded defaults, so a config file only states what differs. A misspelt
or mistyped field is reported with its full path (``unit_tests[0].range.low``) and what was
expected, as an `AuditInputError`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auditai_ops.errors import AuditInputError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
BoundMethod = Literal["forward", "forward+backward", "IBP", "CROWN", "CROWN-IBP", "alpha-CROWN"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the images come from: ``mnist`` (built in, offline), a ``.npz`` file or an image folder."""

    dataset: str = "mnist"
    train_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None


class LatentConfig(_Section):
    """The convolutional VAE that maps images to latents (the generator)."""

    latent_dim: PositiveInt = 16
    channels: tuple[PositiveInt, PositiveInt] = (32, 64)
    epochs: PositiveInt = 6
    batch_size: PositiveInt = 128
    learning_rate: Annotated[float, Field(gt=0.0)] = 2e-3
    beta: NonNegativeFloat = 1.0
    seed: int = 0


class DirectionsConfig(_Section):
    """Supervised attribute directions, PCA directions, and how their effect is measured."""

    attributes: tuple[str, ...] = ("slant", "thickness", "width", "height")
    pca_components: Annotated[int, Field(ge=0)] = 4
    ridge: NonNegativeFloat = 1e-2
    effect_samples: PositiveInt = 512
    effect_max_step: Annotated[float, Field(gt=0.0)] = 1.5
    effect_points: Annotated[int, Field(ge=3)] = 7
    strip_samples: PositiveInt = 6
    strip_points: Annotated[int, Field(ge=2)] = 9
    seed: int = 0


class ClassifierConfig(_Section):
    """The audited model of the paper's setting: an MLP head on the generator's encoder."""

    hidden: tuple[PositiveInt, ...] = (256, 256)
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 256
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    seed: int = 0


class RangeConfig(_Section):
    """An interval of the semantic parameter, in the attribute's units or in latent units."""

    low: float
    high: float
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
    samples: PositiveInt | None = None

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

    methods: tuple[BoundMethod, ...] = ("forward+backward",)
    refine_method: BoundMethod | None = None
    samples: PositiveInt = 1000
    batch_size: PositiveInt = 1024
    block_size: PositiveInt = 256
    falsify_grid: Annotated[int, Field(ge=2)] = 33
    falsify_steps: Annotated[int, Field(ge=0)] = 10
    falsify_restarts: PositiveInt = 2
    max_pieces: PositiveInt = 64
    seconds_per_test: Annotated[float, Field(gt=0.0)] = 300.0
    min_margin: NonNegativeFloat = 1e-5
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    curve_fractions: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = (0.25, 0.5, 0.75)
    device: str = "cpu"
    seed: int = 0

    @field_validator("methods")
    @classmethod
    def _non_empty(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if not methods:
            raise ValueError("at least one bound method is needed")
        return methods

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
            raise ValueError(f"expected 'cpu', 'cuda' or 'cuda:N', got '{device}'")
        return device


class NormalizationConfig(_Section):
    """Per-channel input normalisation of the audited pixel classifier: x -> (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[Annotated[float, Field(gt=0.0)], ...]

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
    classifier: str | None = None
    weights: str | None = None
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    trust_pickle: bool = False
    normalization: NormalizationConfig | None = None

    @model_validator(mode="after")
    def _pixel_only(self) -> ModelConfig:
        if self.mode == "latent" and (self.classifier or self.normalization or self.weights):
            raise ValueError("'classifier', 'weights' and 'normalization' apply to mode: pixel only")
        if self.weights and not self.classifier:
            raise ValueError("'weights' needs a 'classifier' of the form 'package.module:factory'")
        return self


class GeneratorConfig(_Section):
    """A team's own generator instead of the VAE that `map-latents` trains.

    `encoder` maps images (B, 1, H, W) in [0, 1] to latents (B, D) and `decoder` maps them
    back; each is a TorchScript file, an ONNX file, 'package.module:factory' or an MLflow URI,
    made of layers the verifier can bound.
    """

    encoder: str | None = None
    decoder: str | None = None
    image_shape: tuple[PositiveInt, PositiveInt] = (28, 28)
    trust_pickle: bool = False

    @model_validator(mode="after")
    def _both_or_neither(self) -> GeneratorConfig:
        if (self.encoder is None) != (self.decoder is None):
            raise ValueError("give both 'encoder' and 'decoder', or neither (then map-latents trains the VAE)")
        return self


class InputsConfig(_Section):
    """Artifacts of earlier steps to read instead of those in the output folder (paths relative to the config)."""

    vae: str | None = None
    latents: str | None = None
    directions: str | None = None
    head: str | None = None


class TrackingConfig(_Section):
    """MLflow tracking: `uri` (else $MLFLOW_TRACKING_URI, else sqlite in `<out>/mlflow/`), experiment, artifact location (e.g. s3://...)."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "auditai"
    artifact_location: str | None = None


class GateConfig(_Section):
    """The model-registry gate: the registered model's name, the alias it sets, its time limit, whether `auditai run` ends with it, and whether certificates must be signed."""

    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)] = "auditai-model"
    alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=100)] = "certified"
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 600.0
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
    specs: tuple[str, ...] | None = None
    method: Literal["IBP", "CROWN-IBP"] = "CROWN-IBP"
    epochs: PositiveInt = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    ramp_epochs: Annotated[int, Field(ge=0)] = 3
    range_margin: NonNegativeFloat = 0.1
    pieces: PositiveInt = 8
    kappa_start: Probability = 1.0
    kappa_end: Probability = 0.7
    learning_rate: Annotated[float, Field(gt=0.0)] = 5e-4
    weight_decay: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 512
    samples_per_epoch: PositiveInt | None = 4000
    clean_accuracy_drop: Probability = 0.01
    validation_samples: PositiveInt = 1000
    early_stop_margin: Probability = 0.02
    seed: int = 0

    @model_validator(mode="after")
    def _schedule_fits(self) -> FinetuneConfig:
        if self.warmup_epochs + self.ramp_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs + ramp_epochs ({self.warmup_epochs} + {self.ramp_epochs}) must be < epochs ({self.epochs}): the full range needs an epoch")
        if self.specs is not None and not self.specs:
            raise ValueError("specs: name at least one unit test, or leave it out to take the failing ones")
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
    unit_tests: tuple[UnitTestConfig, ...] = ()

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
    shown = "" if error["type"] == "value_error" or isinstance(got, dict | list | tuple) or got is None else f" (got {got!r})"
    return f"{path}: {message}{shown}"


def parse_config(raw: Any, source: str = "config") -> AuditConfig:
    """Validate a decoded YAML document into an `AuditConfig`, naming every bad field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AuditInputError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors())
        raise AuditInputError(f"{source}: {problems}") from None


def load_config(path: Path | None) -> AuditConfig:
    """Read and validate a YAML config file; `None` gives the embedded defaults."""
    if path is None:
        return AuditConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise AuditInputError(f"config file '{path}': cannot be read ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise AuditInputError(f"config file '{path}': not valid YAML ({error})") from None
    return parse_config(raw, source=f"config file '{path}'")
