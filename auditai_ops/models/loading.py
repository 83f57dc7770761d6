"""Load a user's classifier, encoder or decoder as a module the verifier can bound.

`load_model` accepts TorchScript files, ONNX files, `pkg.module:factory` plus safetensors
weights, the project's own safetensors+json records and MLflow model URIs, and returns an
eval-mode module that `check_supported` accepts. Whenever the module had to be converted,
the result is compared with the original on random inputs of the declared input shape
(`_check_same_outputs`), and a difference raises.

Routes:

* TorchScript: rebuilt from torch's own layer classes when the scripted tree provably is
  made of them (auditai_ops.models.torchscript); otherwise (a custom forward, such as a
  residual block) exported to ONNX by torch's TorchScript-based exporter and converted
  (auditai_ops.models.onnx_convert).
* ONNX: converted, to an nn.Sequential when the graph is a chain and to a torch.fx
  GraphModule otherwise (residual additions, concatenations); checked against onnx's
  reference evaluator.
* factory, pickled module, MLflow `pt2`: used as they are when `check_supported` accepts
  them, otherwise exported to ONNX and converted like TorchScript.

Pickle-based files (torch.save'd models, .pkl, MLflow's pickled pytorch flavor) are never
unpickled unless `trust_pickle=True`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import parse_yaml
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.layers import UnsupportedLayerError, check_supported
from auditai_ops.modelio import load_safetensors_into
from auditai_ops.models.onnx_convert import convert_onnx, load_onnx, reference_outputs, require_onnx
from auditai_ops.models.source import PICKLE_SUFFIXES, TORCHSCRIPT_SUFFIXES, ModelSource, sniff_torch_file
from auditai_ops.models.torchscript import NotRebuildable, rebuild_script_module

__all__ = ["LoadedModel", "ModelMismatchError", "PickleLoadWarning", "load_model", "load_model_detailed", "weights_sha256"]

_LOGGER = logging.getLogger(__name__)
TOLERANCE = 1e-5
"""Converted and original outputs may differ by at most TOLERANCE * max(1, max |original output|)."""
_CHECK_SEED = 0


class PickleLoadWarning(UserWarning):
    """A model was unpickled because the user passed trust_pickle=True."""


class ModelMismatchError(AuditInputError):
    """A converted model does not compute what the original computes."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model with how it was obtained: `route` names the format and conversion, `file` the file read."""

    module: nn.Module
    route: str
    file: str | None
    weights_sha256: str


def weights_sha256(module: nn.Module) -> str:
    """The sha256 of a module's state_dict (names, dtypes, shapes and bytes), as auditai_ops.fileio computes it."""
    return sha256_state_dict(module.state_dict())


def load_model(source: ModelSource, *, input_shape: tuple[int, ...], trust_pickle: bool = False) -> nn.Module:
    """An eval-mode module that check_supported accepts and that matches the original on random inputs of shape (2, *input_shape)."""
    return load_model_detailed(source, input_shape=input_shape, trust_pickle=trust_pickle).module


def load_model_detailed(source: ModelSource, *, input_shape: tuple[int, ...], trust_pickle: bool = False) -> LoadedModel:
    """`load_model`, also telling the route taken, the file read and the weights' sha256."""
    shape = _check_input_shape(input_shape)
    loader = _LOADERS.get(source.kind)
    if loader is None:
        raise AuditInputError(f"model '{source.reference}': unknown kind {source.kind!r}")
    module, route, file = loader(source, shape, trust_pickle)
    module.eval()
    check_supported(module)
    _check_forward(module, shape, file or source.reference)
    _check_finite_weights(module, file or source.reference)
    _LOGGER.info("loaded model '%s' via %s", source.reference, route)
    return LoadedModel(module, route, file, weights_sha256(module))


_Loaded = tuple[nn.Module, str, str | None]


# -- files ----------------------------------------------------------------------------------


def _load_torch_file(source: ModelSource, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    return _torch_file(Path(source.reference), shape, trust_pickle)


def _torch_file(path: Path, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    if not path.is_file():
        raise AuditInputError(f"model '{path}': file not found")
    kind = sniff_torch_file(path)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise AuditInputError(f"model '{path}': not a readable TorchScript archive ({_first_line(error)})") from None
        module, route = _from_script(scripted, shape, str(path))
        return module, route, str(path)
    if kind == "pickle":
        return _from_pickle(path, shape, trust_pickle)
    raise AuditInputError(f"model '{path}': neither a TorchScript archive nor a PyTorch file (corrupt, or another format)")


def _from_pickle(path: Path, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    _require_trust(path, "a pickle-based PyTorch file (torch.save of a whole model, or a .pkl)", trust_pickle)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:  # unpickling raises anything
        try:
            import pickle

            with path.open("rb") as handle:
                obj = pickle.load(handle)  # the user opted in with trust_pickle
        except Exception:
            raise AuditInputError(f"model '{path}': cannot be unpickled ({_describe_error(error)})") from None
    if isinstance(obj, torch.jit.ScriptModule):
        module, route = _from_script(obj, shape, str(path))
        return module, f"pickle -> {route}", str(path)
    if isinstance(obj, nn.Module):
        module, route = _make_boundable(obj, shape, str(path))
        return module, f"pickle: {route}", str(path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditInputError(f"model '{path}': holds a state_dict, not a model; give the architecture as `pkg.module:factory` with these weights saved as .safetensors")
    raise AuditInputError(f"model '{path}': holds a {type(obj).__name__}, not a torch module")


def _require_trust(path: Path, what: str, trust_pickle: bool) -> None:
    if not trust_pickle:
        raise AuditInputError(
            f"model '{path}': refused to load {what}: unpickling runs arbitrary code from the file. "
            "If you trust its source, opt in with trust_pickle=True; better, save the model as TorchScript, ONNX or safetensors weights with a `pkg.module:factory`"
        )
    warnings.warn(f"unpickling model '{path}' because trust_pickle=True: this runs code from the file", PickleLoadWarning, stacklevel=4)


def _load_onnx_source(source: ModelSource, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    return _onnx_file(Path(source.reference), shape)


def _onnx_file(path: Path, shape: tuple[int, ...]) -> _Loaded:
    model = load_onnx(path)
    module = convert_onnx(model, shape, str(path))
    _check_same_outputs(_onnx_reference(model), module, shape, str(path), "its ONNX graph (onnx reference evaluator)")
    return module, "onnx: converted to verifier layers", str(path)


def _onnx_reference(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX graph as a function, run in chunks when its batch size is fixed."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    value = next(i for i in graph.input if i.name not in initializers)
    dims = value.type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0

    def run(x: torch.Tensor) -> torch.Tensor:
        if not fixed:
            return torch.from_numpy(reference_outputs(model, x.numpy()))
        chunks = []
        for start in range(0, x.shape[0], fixed):
            part = x[start : start + fixed]
            padded = torch.cat([part, part[:1].expand(fixed - part.shape[0], *part.shape[1:])]) if part.shape[0] < fixed else part
            chunks.append(torch.from_numpy(reference_outputs(model, padded.numpy()))[: part.shape[0]])
        return torch.cat(chunks)

    return run


# -- factory and the project's own records ---------------------------------------------------


def _load_factory(source: ModelSource, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    module_name, _, attribute = source.reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise AuditInputError(f"model '{source.reference}': cannot import module '{module_name}' ({error})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AuditInputError(f"model '{source.reference}': module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise AuditInputError(f"model '{source.reference}': '{attribute}' is not callable")
    try:
        module = target(**source.kwargs)
    except TypeError as error:
        raise AuditInputError(f"model '{source.reference}': calling the factory with {sorted(source.kwargs)} failed ({error})") from None
    if not isinstance(module, nn.Module):
        raise AuditInputError(f"model '{source.reference}': the factory returned a {type(module).__name__}, not a torch module")
    weights = Path(source.weights or "")
    _load_safetensors_into(module, weights)
    module.eval()
    module, route = _make_boundable(module, shape, source.reference)
    return module, f"factory {source.reference} + {weights.name}: {route}", str(weights)


def _load_safetensors_into(module: nn.Module, path: Path) -> None:
    if path.suffix != ".safetensors":
        raise AuditInputError(
            f"model weights '{path}': expected a .safetensors file (convert a state_dict with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'weights.safetensors'))"
        )
    load_safetensors_into(module, path, "do not fit the factory's module")


def _load_auditai(source: ModelSource, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    return _auditai_record(Path(source.reference), shape, source.kwargs)


def _auditai_record(path: Path, shape: tuple[int, ...], kwargs: dict[str, Any]) -> _Loaded:
    from auditai_ops.modelio import load_module, read_record

    record = read_record(path)
    kind = record["kind"]
    if kind == "mlp_head":
        from auditai_ops.classifier.head import load_head

        head, _ = load_head(path)
        return head, "auditai record: mlp_head", str(path)
    if kind == "vae":
        from auditai_ops.latent.vae import VAE, VAEArchitecture

        vae, _ = load_module(path, "vae", lambda arch: VAE(VAEArchitecture.from_dict(arch)))
        assert isinstance(vae, VAE)
        arch = vae.arch
        part = kwargs.get("part")
        if part is None:
            part = "decoder" if shape == (arch.latent_dim,) else "encoder" if shape == (arch.image_channels, arch.image_height, arch.image_width) else None
        if part not in ("encoder", "decoder"):
            raise AuditInputError(
                f"model '{path}': a VAE record; choose its part with kwargs {{part: encoder|decoder}} "
                f"(input shape {shape} is neither the latent ({arch.latent_dim},) nor the image ({arch.image_channels}, {arch.image_height}, {arch.image_width}))"
            )
        return getattr(vae, part), f"auditai record: vae {part}", str(path)
    raise AuditInputError(f"model record '{path.with_suffix('.json')}': kind '{kind}' cannot be loaded as a model (expected mlp_head or vae)")


# -- MLflow -----------------------------------------------------------------------------------


def _load_mlflow(source: ModelSource, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    local = Path(source.reference)
    if local.is_dir():
        return _load_artifacts(local, shape, trust_pickle, source)
    with tempfile.TemporaryDirectory(prefix="auditai-mlflow-") as folder:
        downloaded = _download_mlflow(source.reference, Path(folder))
        try:
            module, route, file = _load_artifacts(downloaded, shape, trust_pickle, source)
        except AuditInputError as error:  # name the artifact by its URI, not by the temporary folder
            raise type(error)(str(error).replace(f"{folder}/", f"{source.reference} -> ")) from None
        relative = Path(file).relative_to(folder) if file else None
        return module, f"mlflow {source.reference} -> {route}", f"{source.reference} [{relative}]" if relative else source.reference


def _download_mlflow(uri: str, folder: Path) -> Path:
    try:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise AuditInputError(f"model '{uri}': loading MLflow models needs mlflow: pip install auditai-ops[tracking]") from None
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except (MlflowException, OSError, ValueError) as error:
        raise AuditInputError(f"model '{uri}': cannot download the MLflow artifacts ({_first_line(error)})") from None


def _load_artifacts(root: Path, shape: tuple[int, ...], trust_pickle: bool, source: ModelSource) -> _Loaded:
    """Detect the format of downloaded artifacts (a file, or an MLflow model folder) and load them."""
    if root.is_file():
        return _load_file_by_content(root, shape, trust_pickle, source)
    flavors = _mlflow_flavors(root)
    if "pytorch" in flavors:
        data = root / str(flavors["pytorch"].get("model_data", "data"))
        if (data / "model.pth").is_file():
            return _torch_file(data / "model.pth", shape, trust_pickle)
        if (data / "model.pt2").is_file():
            return _load_pt2(data / "model.pt2", shape, trust_pickle)
    if "onnx" in flavors:
        onnx_file = root / str(flavors["onnx"].get("data", "model.onnx"))
        if onnx_file.is_file():
            return _onnx_file(onnx_file, shape)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    safe = [p for p in files if _is_safe_model_file(p)]
    if len(safe) == 1:
        return _load_file_by_content(safe[0], shape, trust_pickle, source)
    listing = ", ".join(str(p.relative_to(root)) for p in files[:20]) or "nothing"
    if len(safe) > 1:
        raise AuditInputError(f"model '{source.reference}': several model files ({', '.join(str(p.relative_to(root)) for p in safe)}); point the URI at one of them")
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES or (p.suffix in TORCHSCRIPT_SUFFIXES and sniff_torch_file(p) == "pickle")]
    if len(pickles) == 1:
        return _from_pickle(pickles[0], shape, trust_pickle)
    raise AuditInputError(
        f"model '{source.reference}': no TorchScript, ONNX or auditai safetensors+json model found (found: {listing}); MLmodel flavors: {sorted(flavors) or 'none'}"
    )


def _mlflow_flavors(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "MLmodel"
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AuditInputError(f"model '{path}': not a readable MLmodel file ({_first_line(error)})") from None
    content = parse_yaml(text, f"model '{path}' (MLmodel)")
    flavors = content.get("flavors", {}) if isinstance(content, dict) else {}
    return {str(k): v for k, v in flavors.items() if isinstance(v, dict)} if isinstance(flavors, dict) else {}


def _is_safe_model_file(path: Path) -> bool:
    if path.suffix == ".onnx":
        return True
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return sniff_torch_file(path) == "torchscript"
    return path.suffix == ".safetensors" and path.with_suffix(".json").is_file()


def _load_file_by_content(path: Path, shape: tuple[int, ...], trust_pickle: bool, source: ModelSource) -> _Loaded:
    if path.suffix == ".onnx":
        return _onnx_file(path, shape)
    if path.suffix in (".safetensors", ".json"):
        return _auditai_record(path.with_suffix(".safetensors"), shape, source.kwargs)
    if path.suffix == ".pt2":
        return _load_pt2(path, shape, trust_pickle)
    return _torch_file(path, shape, trust_pickle)


def _load_pt2(path: Path, shape: tuple[int, ...], trust_pickle: bool) -> _Loaded:
    """A torch.export archive (MLflow's default pytorch format): its weights are pickled, so it needs trust unless MLflow vouches for it."""
    if not _pt2_is_pickle_free(path):
        _require_trust(path, "a torch.export (.pt2) archive whose weights are unpickled on load", trust_pickle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:  # torch.export raises many types
        raise AuditInputError(f"model '{path}': cannot be loaded as a torch.export archive ({_describe_error(error)})") from None
    module, route = _make_boundable(module, shape, str(path))
    return module, f"torch.export: {route}", str(path)


def _pt2_is_pickle_free(path: Path) -> bool:
    """MLflow's (private) check that every record in the archive is JSON or accepted by torch's weights_only loader."""
    try:
        from mlflow.pytorch import _validate_pt2_archive_is_pickle_free  # type: ignore[attr-defined]
    except ImportError:
        return False
    try:
        _validate_pt2_archive_is_pickle_free(str(path))
    except Exception:  # MlflowException: not provably pickle-free
        return False
    return True


# -- making a module boundable ------------------------------------------------------------------


def _from_script(scripted: torch.jit.ScriptModule, shape: tuple[int, ...], origin: str) -> tuple[nn.Module, str]:
    scripted.eval()
    try:
        plain = rebuild_script_module(scripted)
        check_supported(plain)
    except (NotRebuildable, UnsupportedLayerError) as error:
        _LOGGER.info("model '%s': not rebuilt from its TorchScript layers (%s); converting through ONNX", origin, error)
        reason = str(error)
    else:
        _check_same_outputs(scripted, plain, shape, origin, "the TorchScript module")
        return plain, "torchscript: rebuilt from torch layers (same TorchScript graph)"
    module = _through_onnx(scripted, shape, origin, reason)
    _check_same_outputs(scripted, module, shape, origin, "the TorchScript module")
    return module, "torchscript: exported to ONNX and converted to verifier layers"


def _make_boundable(module: nn.Module, shape: tuple[int, ...], origin: str) -> tuple[nn.Module, str]:
    """`module` itself when the verifier accepts it, else its ONNX export converted to verifier layers."""
    with contextlib.suppress(NotImplementedError):  # torch.export's modules refuse eval(); they are exported in one mode
        module.eval()
    try:
        check_supported(module)
    except UnsupportedLayerError as error:
        converted = _through_onnx(module, shape, origin, str(error))
        _check_same_outputs(module, converted, shape, origin, "the original module")
        return converted, "exported to ONNX and converted to verifier layers"
    return module, "used as is"


def _through_onnx(module: nn.Module, shape: tuple[int, ...], origin: str, reason: str) -> nn.Module:
    try:
        require_onnx()
    except AuditInputError as error:
        raise AuditInputError(f"model '{origin}': {reason}; converting it needs ONNX support: {error}") from None
    graph = _export_onnx(module, shape, origin)
    try:
        return convert_onnx(graph, shape, f"{origin} (exported to ONNX)")
    except AuditInputError as error:
        raise AuditInputError(f"{error} [the module was exported to ONNX because {reason}]") from None


def _export_onnx(module: nn.Module, shape: tuple[int, ...], origin: str) -> Any:
    """Export with torch's TorchScript-based exporter (dynamo=False: the dynamo one needs onnxscript)."""
    onnx = require_onnx()
    buffer = io.BytesIO()
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(_CHECK_SEED))
    target = _ModeLocked(module) if isinstance(module, torch.fx.GraphModule) else module
    try:
        with warnings.catch_warnings(), _quiet_torch_onnx():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                target,
                (example,),
                buffer,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as error:  # the exporter raises many types
        raise AuditInputError(f"model '{origin}': cannot be exported to ONNX for conversion ({_describe_error(error)})") from None
    return onnx.load_from_string(buffer.getvalue())


class _ModeLocked(nn.Module):
    """Wraps a torch.export module, whose train()/eval() raise, for the exporter (which calls train(False))."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True) -> _ModeLocked:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x)


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- checks -------------------------------------------------------------------------------------


def _check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise AuditInputError(f"input_shape: expected a tuple of positive integers, got {input_shape!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise AuditInputError(f"input_shape: expected a non-empty tuple of positive integers, got {input_shape!r}")
    return shape


def _check_inputs(shape: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    return [torch.randn(2, *shape, generator=generator), torch.rand(2, *shape, generator=generator)]


def _check_same_outputs(original: Callable[[torch.Tensor], Any], converted: nn.Module, shape: tuple[int, ...], origin: str, what: str) -> None:
    """Raise ModelMismatchError unless `converted` matches `original` on random inputs of shape (2, *shape)."""
    for x in _check_inputs(shape):
        with torch.no_grad():
            try:
                expected = original(x)
            except Exception as error:  # a user's module may raise anything
                raise AuditInputError(f"model '{origin}': fails on inputs of shape {tuple(x.shape)} ({_describe_error(error)})") from None
            got = converted(x)
        if not isinstance(expected, torch.Tensor):
            raise AuditInputError(f"model '{origin}': returns a {type(expected).__name__}; a model must return one tensor")
        if got.shape != expected.shape:
            raise ModelMismatchError(f"model '{origin}': the converted model's output shape {tuple(got.shape)} differs from {what}'s {tuple(expected.shape)}")
        expected = expected.float()
        scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
        difference = float((got - expected).abs().max()) if expected.numel() else 0.0
        if not np.isfinite(difference) or difference > TOLERANCE * scale:
            raise ModelMismatchError(f"model '{origin}': the converted model differs from {what} by up to {difference:.3g} on random inputs (tolerance {TOLERANCE * scale:.3g})")


def _check_forward(module: nn.Module, shape: tuple[int, ...], origin: str) -> None:
    x = _check_inputs(shape)[1]
    with torch.no_grad():
        try:
            out = module(x)
        except Exception as error:  # a user's module may raise anything
            raise AuditInputError(f"model '{origin}': does not accept inputs of shape {tuple(x.shape)} ({_describe_error(error)})") from None
    if not isinstance(out, torch.Tensor):
        raise AuditInputError(f"model '{origin}': returns a {type(out).__name__}; a model must return one tensor")
    if not torch.isfinite(out).all():
        raise AuditInputError(f"model '{origin}': returns NaN or infinite values on random inputs of shape {tuple(x.shape)}")


def _check_finite_weights(module: nn.Module, origin: str) -> None:
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AuditInputError(f"model '{origin}': tensor '{name}' contains NaN or infinite values")


def _describe_error(error: BaseException) -> str:
    line = _first_line(error)
    name = type(error).__name__
    return line if line.startswith(name) else f"{name}: {line}"


def _first_line(error: BaseException) -> str:
    """The line of an error message that says what went wrong (TorchScript's is its last)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1]
    return lines[0]


_LOADERS: dict[str, Callable[[ModelSource, tuple[int, ...], bool], _Loaded]] = {
    "torchscript": _load_torch_file,
    "pickle": _load_torch_file,
    "onnx": _load_onnx_source,
    "factory": _load_factory,
    "auditai": _load_auditai,
    "mlflow": _load_mlflow,
}
