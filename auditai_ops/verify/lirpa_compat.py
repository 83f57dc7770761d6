"""Run auto_LiRPA (PyPI's 0.3, or a newer one such as 0.7.1 from source) under torch 2.13,
and wrap the few calls the verifier needs.

auto_LiRPA 0.3 was written for torch 1.12. This module patches it at runtime (never by
copying its source) and only where the loaded auto_LiRPA lacks a capability: each patch
probes for it first (signatures, attributes, a constructor tried), and no version string is
compared, so a newer auto_LiRPA is left untouched where it already fits. `applied_patches()`
lists what was done, for the certificate log; `auto_lirpa_version()` is the `__version__`
of the module loaded (a source checkout on sys.path shadows the installed distribution,
which is then logged as a warning). API renamed after 0.3 (root_name, the intermediate-bounds
keyword and option, the alpha start-node records) is looked up the same way.

Layers beyond the chain that 0.3 always bounded (pooling, other activations, ...) are bounded
through auto_LiRPA only where the loaded version does: `check_bounded_by_auto_lirpa` probes
each such layer alone and refuses the model, naming the layer and the version, otherwise.

Bound methods (all sound: every output of the network on the box lies within the bounds):

* IBP: interval arithmetic layer by layer.
* CROWN: every output is bounded by a linear function of the input, obtained by back-
  substituting linear relaxations of the activations; the box is then concretised.
* CROWN-IBP: CROWN for the last layer, IBP for the intermediate (pre-activation) bounds.
* alpha-CROWN: CROWN whose lower relaxation slopes (alpha) of the activations are
  optimised by gradient ascent on the bound. Here the intermediate bounds are fixed to
  CROWN's and only the slopes used for the final specification are optimised. (0.3's own
  alpha-CROWN, with auto_LiRPA's alpha initialisation, re-bounds every intermediate layer in every iteration: on a small
  decoder+CNN at batch 16 that took 30 s per iteration and 9 GB, against 2.7 s and
  0.6 GB in all this way, for nearly the same width.) Every slope in the feasible set
  gives a sound bound, so the result is the elementwise maximum of the optimised and the
  CROWN bound.

Speed: these graphs run many small tensor ops. Where torch's intra-op threads outnumber
the free cores (another busy process), OpenMP waits make them 10 to 40 times slower
(a Sigmoid+Tanh build: 0.2 s on one thread, 2 to 9 s on two contended ones), so set
`torch.set_num_threads` to the cores actually free.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.metadata
import inspect
import itertools
import logging
import threading
import types
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from auditai_ops.layers import CHAIN_LAYERS, SUPPORTED_LAYERS, UnsupportedLayerError, check_supported

if TYPE_CHECKING:
    from auto_LiRPA import BoundedModule

__all__ = [
    "METHODS",
    "SUPPORTED_LAYERS",
    "BoundMethod",
    "UnsupportedLayerError",
    "applied_patches",
    "auto_lirpa_version",
    "build_bounded_module",
    "build_trainable_bounded_module",
    "check_bounded_by_auto_lirpa",
    "check_supported",
    "compute_margin_lower_bounds",
    "training_margin_lower_bounds",
    "import_auto_lirpa",
]

BoundMethod = Literal["IBP", "CROWN", "CROWN-IBP", "alpha-CROWN"]
METHODS: tuple[BoundMethod, ...] = ("IBP", "CROWN", "CROWN-IBP", "alpha-CROWN")

_LOGGER = logging.getLogger(__name__)
_LOCK = threading.Lock()
_APPLIED: list[str] = []
_AUTO_LIRPA: types.ModuleType | None = None
# Options of every BoundedModule. Patches mode crashes on decoder-like graphs and rejects
# padded ConvTranspose2d. Sparse-features alpha only saves memory, and 0.3's leaves stale
# indices behind (an indentation bug in BoundRelu.init_opt_parameters) whenever a ReLU layer
# has too many unstable neurons; the alphas made here (final specification only) are small.
_BOUND_OPTS: dict[str, Any] = {"conv_mode": "matrix", "sparse_features_alpha": False}


def applied_patches() -> tuple[str, ...]:
    """Names of the compatibility patches applied so far (empty before `import_auto_lirpa`)."""
    return tuple(_APPLIED)


def import_auto_lirpa() -> types.ModuleType:
    """Import auto_LiRPA quietly, applying the patches that this torch/auto_LiRPA pair needs.

    Idempotent and thread-safe. The process's warning filters, root logging handlers and
    stdout are left as they were; auto_LiRPA's own loggers are set to WARNING.
    """
    global _AUTO_LIRPA
    with _LOCK:
        if _AUTO_LIRPA is None:
            _patch_onnx_opset_setter()
            with _quiet_import():
                module = _import_checking_numpy()
            for name, logger in list(logging.root.manager.loggerDict.items()):
                if name.split(".")[0] == "auto_LiRPA" and isinstance(logger, logging.Logger):
                    logger.setLevel(logging.WARNING)
            # Each patch probes for the capability it adds and no-ops where the loaded
            # auto_LiRPA already has it: no version string is compared.
            _patch_named_members(module)
            _patch_matmul_ibp_spec(module)
            _patch_node_attribute_access(module)
            _patch_conv_transpose_padding(module)
            _warn_if_shadowed(module)
            _AUTO_LIRPA = module
        return _AUTO_LIRPA


def auto_lirpa_version() -> str:
    """`__version__` of the auto_LiRPA module this process loads, or "not installed".

    A source checkout earlier on sys.path shadows the installed distribution, whose
    metadata would then name another version than the one that computes the bounds.
    """
    try:
        module = import_auto_lirpa()
    except ModuleNotFoundError as exc:
        if exc.name != "auto_LiRPA":
            raise
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def _warn_if_shadowed(module: types.ModuleType) -> None:
    """Log (WARNING) when the loaded auto_LiRPA is not the installed distribution's version."""
    loaded = str(getattr(module, "__version__", "unknown"))
    try:
        installed = importlib.metadata.version("auto_LiRPA")
    except importlib.metadata.PackageNotFoundError:
        return
    if installed != loaded:
        _LOGGER.warning(
            "auto_LiRPA %s is loaded from %s, shadowing the installed distribution %s",
            loaded,
            module.__file__,
            installed,
        )


def _record(name: str) -> None:
    if name not in _APPLIED:
        _APPLIED.append(name)
        _LOGGER.debug("auto_LiRPA compatibility patch applied: %s", name)


def _patch_onnx_opset_setter() -> None:
    """0.3 imports `torch.onnx.symbolic_helper._set_opset_version`, removed from torch 2.x."""
    # By full name: `from torch.onnx import symbolic_helper` gives the torchscript exporter's
    # module in torch 2.13, not the `torch.onnx.symbolic_helper` that 0.3 imports from.
    symbolic_helper = importlib.import_module("torch.onnx.symbolic_helper")
    if hasattr(symbolic_helper, "_set_opset_version"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        from torch.onnx._globals import GLOBALS  # type: ignore[no-redef]  # torch 2.0 to 2.8

    def _set_opset_version(opset_version: int) -> None:
        GLOBALS.export_onnx_opset_version = opset_version

    symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    _record("torch.onnx.symbolic_helper._set_opset_version")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Undo auto_LiRPA's import side effects on the process.

    0.3 calls `warnings.simplefilter('once')` and `logging.basicConfig(stream=sys.stdout)` at
    import; warning filters and root handlers are restored afterwards. Its `torch.jit.script`
    decorators are run with torch's deprecation warning silenced, or replaced by a
    passthrough (plain eager functions) where torch no longer has `torch.jit.script`.
    """
    root = logging.getLogger()
    root_handlers = list(root.handlers)
    had_script = hasattr(torch.jit, "script")
    original_script = getattr(torch.jit, "script", None)

    def script_quietly(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if original_script is None:
            return obj
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
            return original_script(obj, *args, **kwargs)

    if not had_script:
        _record("torch.jit.script passthrough")
    torch.jit.script = script_quietly  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            yield
    finally:
        if had_script:
            torch.jit.script = original_script  # type: ignore[assignment]
        else:
            del torch.jit.script
        for handler in list(root.handlers):
            if handler not in root_handlers:
                root.removeHandler(handler)


def _import_checking_numpy() -> types.ModuleType:
    """Import auto_LiRPA, turning 0.3's NumPy 2 failure into an actionable message."""
    try:
        return importlib.import_module("auto_LiRPA")
    except ImportError as exc:
        if "arraysetops" not in str(exc):
            raise
        raise ImportError(
            "auto_LiRPA 0.3 imports numpy.lib.arraysetops, which NumPy 2 removed; "
            f"install numpy<2 (found numpy {importlib.metadata.version('numpy')})"
        ) from exc


class _NodeWithItems:
    """A `torch._C.Node` view that reads attributes as `node[name]` (removed in torch 2.x)."""

    __slots__ = ("_node",)

    def __init__(self, node: torch._C.Node) -> None:
        self._node = node

    def __getitem__(self, name: str) -> Any:
        return getattr(self._node, self._node.kindOf(name))(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)


class _GraphWithItemNodes:
    """A `torch._C.Graph` view whose `nodes()` are `_NodeWithItems`."""

    __slots__ = ("_graph",)

    def __init__(self, graph: torch._C.Graph) -> None:
        self._graph = graph

    def nodes(self) -> Iterator[_NodeWithItems]:
        return (_NodeWithItems(node) for node in self._graph.nodes())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


def _patch_node_attribute_access(module: types.ModuleType) -> None:
    """0.3's graph parser reads ONNX node attributes as `node[k]`; torch 2.x dropped that.

    Newer parsers read them through their own `get_node_attribute` helper.
    """
    parse_graph_module = importlib.import_module(f"{module.__name__}.parse_graph")
    if hasattr(torch._C.Node, "__getitem__") or hasattr(parse_graph_module, "get_node_attribute"):
        return
    original = parse_graph_module.parse_graph

    @functools.wraps(original)
    def parse_graph(graph: torch._C.Graph, inputs: Any, params: Any) -> Any:
        return original(_GraphWithItemNodes(graph), inputs, params)

    parse_graph_module.parse_graph = parse_graph
    _record("auto_LiRPA.parse_graph.parse_graph: node[k] attribute access")


def _patch_named_members(module: types.ModuleType) -> None:
    """torch 2.x passes `remove_duplicate` to `_named_members`; 0.3's override lacks it.

    0.3's version always removes duplicates, which is also torch's default.
    """
    bounded_module = module.BoundedModule
    if "remove_duplicate" in inspect.signature(bounded_module._named_members).parameters:
        return
    if "remove_duplicate" not in inspect.signature(nn.Module._named_members).parameters:
        return
    original = bounded_module._named_members

    @functools.wraps(original)
    def _named_members(
        self: nn.Module,
        get_members_fn: Any,
        prefix: str = "",
        recurse: bool = True,
        remove_duplicate: bool = True,
    ) -> Any:
        return original(self, get_members_fn, prefix, recurse)

    bounded_module._named_members = _named_members
    _record("auto_LiRPA.BoundedModule._named_members: accept remove_duplicate")


def _patch_conv_transpose_padding(module: types.ModuleType) -> None:
    """Let BoundConvTranspose take padding and output_padding in matrix mode.

    0.3 asserts both are zero, 0.7 that output_padding is, yet their IBP
    (`F.conv_transpose2d` with them) and matrix-mode backward (`F.conv2d(A, W, stride,
    padding)`, the adjoint of the transposed convolution whatever its output_padding <
    stride) already honour them; the exact-range tests check this on every version they
    run against. Patches mode does not, so there the assertions stay. The constructor is
    run on zero paddings and the real ones set after. Probed: a version whose constructor
    accepts a padded layer is left alone.
    """
    convolution = importlib.import_module(f"{module.__name__}.operators.convolution")
    bound_cls = convolution.BoundConvTranspose
    if _accepts_padded_conv_transpose(bound_cls):
        return
    original = bound_cls.__init__

    @functools.wraps(original)
    def __init__(
        self: Any, attr: dict[str, Any], inputs: Any, output_index: int, options: Any
    ) -> None:
        if (options or {}).get("conv_mode", "matrix") != "matrix":
            original(self, attr, inputs, output_index, options)
            return
        pads = list(attr["pads"])
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise NotImplementedError(f"asymmetric ConvTranspose padding {pads} is not supported")
        output_padding = list(attr.get("output_padding", [0, 0]))
        original(
            self,
            {**attr, "pads": [0] * len(pads), "output_padding": [0] * len(output_padding)},
            inputs,
            output_index,
            options,
        )
        self.attr = attr
        self.padding = [pads[0], pads[1]]
        self.output_padding = output_padding

    bound_cls.__init__ = __init__
    _record("auto_LiRPA BoundConvTranspose: padding/output_padding in matrix mode")


def _accepts_padded_conv_transpose(bound_cls: type) -> bool:
    """Whether `bound_cls` builds a matrix-mode 3x3 stride-2 layer with padding and output_padding 1."""
    attr = {
        "pads": [1, 1, 1, 1],
        "output_padding": [1, 1],
        "strides": [2, 2],
        "dilations": [1, 1],
        "group": 1,
        "kernel_shape": [3, 3],
    }
    try:
        bound_cls(attr, [], 0, {"conv_mode": "matrix"})
    except AssertionError:
        return False
    return True


def _patch_matmul_ibp_spec(module: types.ModuleType) -> None:
    """IBP merges the spec C into a final linear node: `interval_propagate(*v, C=C)`.

    A bias-free nn.Linear traces to MatMul, whose 0.3 override drops the keyword
    (TypeError). Its parent BoundLinear's version handles C (bounds of (C W) x + C b, the
    exact interval of an affine map) and MatMul's weight layout (via transB), so forward to it.
    """
    linear = importlib.import_module(f"{module.__name__}.operators.linear")
    matmul_cls = linear.BoundMatMul
    if "C" in inspect.signature(matmul_cls.interval_propagate).parameters:
        return

    def interval_propagate(self: Any, *v: Any, C: torch.Tensor | None = None) -> Any:
        return linear.BoundLinear.interval_propagate(self, *v, C=C)

    matmul_cls.interval_propagate = interval_propagate
    _record("auto_LiRPA BoundMatMul.interval_propagate: accept the spec C")


def build_bounded_module(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    device: str | torch.device = "cpu",
) -> BoundedModule:
    """Check `model`, then trace it into an auto_LiRPA BoundedModule (matrix conv mode).

    Build once per model and reuse: the module serves other batch sizes than the example's
    (tested from 8 up to 4096), and Sigmoid/Tanh layers precompute a tangent lookup table.
    The module wraps a private copy of `model` in eval mode: auto_LiRPA would otherwise move
    `model` to `device` and flip its parameters' `requires_grad` on every bound computation.
    """
    check_supported(model)
    inputs = tuple(t.to(device) for t in example_inputs)
    private = _without_dropout(copy.deepcopy(model))
    check_bounded_by_auto_lirpa(private, inputs)
    bounded = _verifier_bounded_module(private, inputs, device)
    # Eval: BoundParams.forward sets requires_grad to the mode, so no weight gradients are
    # computed during alpha-CROWN; a train() call would also switch BatchNorm to batch statistics.
    bounded.eval()
    _check_trace(bounded, private, inputs)
    return bounded


def _verifier_bounded_module(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str | torch.device
) -> BoundedModule:
    """auto_LiRPA's BoundedModule of `model` with the options `compute_margin_lower_bounds` needs.

    alpha-CROWN: intermediate bounds are passed in fixed, and alphas are created there for the
    final specification only.
    """
    lirpa = import_auto_lirpa()
    bounded = lirpa.BoundedModule(model, inputs, bound_opts=copy.deepcopy(_BOUND_OPTS), device=device)
    bounded.set_bound_opts(
        {"optimize_bound_args": {_fix_intermediate_bounds_option(bounded): True, "init_alpha": False}}
    )
    return bounded


def _without_dropout(model: nn.Module) -> nn.Module:
    """`model` (a private copy) with every eval-mode Dropout, the identity, replaced by nn.Identity.

    auto_LiRPA traces Dropout into a node that misbehaves in eval mode (0.3 applies a mask, 0.7
    fails to build). Training-mode Dropout was refused by `check_supported`.
    """
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Dropout) and path:
            parent, _, name = path.rpartition(".")
            model.get_submodule(parent).register_module(name, nn.Identity())
    return model


def check_bounded_by_auto_lirpa(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Refuse (UnsupportedLayerError) a layer that the loaded auto_LiRPA cannot bound.

    Decided by probing, not by version: each layer of a type beyond `_CORE_LAYERS` (which every
    auto_LiRPA this project runs on bounds) is traced alone, at the input shape it gets in
    `model`, and bounded by every method in `METHODS`. So a newer auto_LiRPA that bounds more
    ops natively (MaxPool, say) is used for them. Results are cached per layer configuration
    and shape. The message names the layer, the auto_LiRPA version and what failed. Probes
    run on the CPU, whatever the device of `model`.
    """
    shapes: dict[str, set[tuple[int, ...]]] = {}
    hooks = []
    for path, module in model.named_modules():
        if type(module) in SUPPORTED_LAYERS and type(module) not in _CORE_LAYERS:

            def record(_: nn.Module, args: tuple[Any, ...], path: str = path) -> None:
                shapes.setdefault(path, set()).add(tuple(args[0].shape[1:]))

            hooks.append(module.register_forward_pre_hook(record))
    if not hooks:
        return
    state = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = example_inputs[0].device if state is None else state.device
    try:
        with torch.no_grad():
            model(*(t[:1].to(device) for t in example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    for path, layer_shapes in shapes.items():
        for shape in sorted(layer_shapes):
            problem = _probe_layer(modules[path], shape)
            if problem is not None:
                raise UnsupportedLayerError(
                    path or "<root>",
                    modules[path],
                    f"cannot be bounded through auto_LiRPA {auto_lirpa_version()} ({problem}); "
                    "the project's own methods (forward, forward+backward) bound it",
                )


_CORE_LAYERS: frozenset[type[nn.Module]] = frozenset(CHAIN_LAYERS)
_PROBED: dict[tuple[str, str, tuple[int, ...]], str | None] = {}


def _probe_layer(layer: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Why auto_LiRPA cannot trace and bound `layer` alone on inputs of `shape`, or None if it can."""
    settings = sorted((name, repr(value)) for name, value in vars(layer).items() if not name.startswith("_"))
    key = (f"{type(layer).__module__}.{type(layer).__qualname__}", repr(settings), shape)
    if key in _PROBED:
        return _PROBED[key]
    probe = nn.Sequential(_Scale(), copy.deepcopy(layer), nn.Flatten()).cpu().eval()
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    problem = None
    try:
        with _quiet_probe():
            bounded = _verifier_bounded_module(probe, (x,), x.device)
            bounded.eval()
            with torch.no_grad():
                expected = probe(x)
                traced = torch.allclose(bounded(x), expected, rtol=1e-4, atol=1e-5)
            if not traced:
                problem = "its traced graph computes another function"
            else:
                C = torch.ones(2, 1, expected.shape[1])
                for method in METHODS:
                    compute_margin_lower_bounds(bounded, (x,), x - 0.1, x + 0.1, C, method, alpha_iterations=2)
    except Exception as exc:  # noqa: BLE001 - any failure means this auto_LiRPA cannot bound the layer
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"[:300]
    _PROBED[key] = problem
    return problem


class _Scale(nn.Module):
    """x times a parameter equal to 1: the probed layer reads an intermediate node, as in a model,
    and the probe has a parameter (0.3 takes its bound dtype from the first one)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@contextlib.contextmanager
def _quiet_probe() -> Iterator[None]:
    """Silence auto_LiRPA's error logs and torch's export warnings for a probe that may fail."""
    loggers = [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.split(".")[0] == "auto_LiRPA" and isinstance(logger, logging.Logger)
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _fix_intermediate_bounds_option(bounded: BoundedModule) -> str:
    """The optimize_bound_args key that keeps given intermediate bounds fixed (renamed after 0.3)."""
    known = bounded.bound_opts["optimize_bound_args"]
    for name in ("fix_interm_bounds", "fix_intermediate_layer_bounds"):
        if name in known:
            return name
    raise NotImplementedError(
        f"auto_LiRPA {auto_lirpa_version()} has no option to fix intermediate bounds "
        "(fix_interm_bounds or fix_intermediate_layer_bounds), which alpha-CROWN here needs"
    )


def _intermediate_bounds_keyword(bounded: BoundedModule) -> str:
    """compute_bounds' keyword for given intermediate bounds (renamed after 0.3)."""
    parameters = inspect.signature(bounded.compute_bounds).parameters
    return "interm_bounds" if "interm_bounds" in parameters else "intermediate_layer_bounds"


def _root_names(bounded: BoundedModule) -> list[str]:
    """Names of the graph's input and parameter nodes (`root_name` in 0.3, `root_names` after)."""
    names = getattr(bounded, "root_names", None)
    return list(bounded.root_name if names is None else names)


def build_trainable_bounded_module(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    trainable: list[nn.Parameter],
    device: str | torch.device = "cpu",
) -> BoundedModule:
    """Trace `model` itself (no private copy), so that bounds are differentiable in `trainable`.

    auto_LiRPA's graph holds `model`'s own parameter tensors, so an optimiser over
    `trainable` updates `model`. In train mode every BoundParams node switches its tensor's
    `requires_grad` on at each forward; here only the nodes of `trainable` train, every other
    parameter (a frozen decoder, say) and every BatchNorm stay in eval mode, so BatchNorm
    keeps its running statistics: the network trained is the network the verifier audits.
    """
    check_supported(model)
    for path, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            raise UnsupportedLayerError(
                path or "<root>", module, "is not supported in certified training (auto_LiRPA's train mode would apply its random masks)"
            )
    lirpa = import_auto_lirpa()
    inputs = tuple(t.to(device) for t in example_inputs)
    check_bounded_by_auto_lirpa(model, inputs)
    bounded = lirpa.BoundedModule(model, inputs, bound_opts=copy.deepcopy(_BOUND_OPTS), device=device)
    training = {id(p) for p in trainable}
    bounded.train()
    for node in bounded._modules.values():
        frozen_parameter = isinstance(node, lirpa.operators.BoundParams) and id(node.param) not in training
        if frozen_parameter or isinstance(node, lirpa.operators.BoundBatchNormalization):
            node.eval()
    missing = training - {id(p) for p in bounded.parameters()}
    if missing:
        raise ValueError(f"the traced graph does not hold {len(missing)} of the {len(training)} parameters to train")
    _check_trace(bounded, model, inputs)
    return bounded


def training_margin_lower_bounds(
    bounded: BoundedModule,
    inputs: tuple[torch.Tensor, ...],
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    C: torch.Tensor,
    method: Literal["IBP", "CROWN-IBP"],
) -> torch.Tensor:
    """Lower bounds [B, S] of `C @ f(x, *inputs[1:])` over the box, differentiable in the traced parameters.

    IBP: interval arithmetic; CROWN-IBP: IBP for the intermediate bounds and a CROWN
    back-substitution from the margins (matrix mode). Both are sound; they are what
    certified training minimises (alpha-CROWN's come back detached, CROWN's cost seconds).
    """
    if method not in ("IBP", "CROWN-IBP"):
        raise ValueError(f"method must be IBP or CROWN-IBP for training, got {method!r}")
    lirpa = import_auto_lirpa()
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=x_lower, x_U=x_upper)
    args = (lirpa.BoundedTensor(inputs[0], ptb), *inputs[1:])
    if method == "IBP":
        lower, _ = bounded.compute_bounds(x=args, C=C, method="IBP")
    else:
        lower, _ = bounded.compute_bounds(x=args, C=C, method="CROWN-IBP", bound_upper=False)
    return lower


def _check_trace(
    bounded: BoundedModule, model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> None:
    """The traced graph must reproduce `model` at the example batch size and at another one.

    Tracing records `x.size(0)` as a constant, so `x.view(x.size(0), ...)` would pin the
    batch size; `x.view(-1, ...)` and nn.Flatten do not.
    """
    batch = inputs[0].shape[0]
    other = tuple(torch.cat([t, t[:1]]) for t in inputs)
    with torch.no_grad():
        for args in (inputs, other):
            expected = model(*args)
            try:
                got = bounded(*args)
            except RuntimeError as exc:
                raise ValueError(
                    f"the traced model fails at batch size {args[0].shape[0]} (built at {batch}); "
                    "reshape with -1 as the batch dimension, e.g. x.view(-1, C, H, W), not "
                    f"x.view(x.size(0), ...): {exc}"
                ) from exc
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                raise ValueError(
                    f"the traced model differs from the model at batch size {args[0].shape[0]} "
                    f"(max abs difference {(got - expected).abs().max().item():.3g}); its forward "
                    "may depend on the input values or batch size"
                )


def compute_margin_lower_bounds(
    bounded: BoundedModule,
    inputs: tuple[torch.Tensor, ...],
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    C: torch.Tensor,
    method: BoundMethod,
    *,
    alpha_iterations: int = 20,
) -> torch.Tensor:
    """Lower bounds of `C @ f(x, *inputs[1:])` over the box `x_lower <= x <= x_upper`.

    `inputs[0]` is a point of the box (used only for the forward pass), the other inputs are
    fixed. `C` has shape [B, S, n_out]; the result has shape [B, S]. For an upper bound of
    row c, ask for the lower bound of -c.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if alpha_iterations < 0:
        raise ValueError(f"alpha_iterations must be >= 0, got {alpha_iterations}")
    x0 = inputs[0]
    if x_lower.shape != x0.shape or x_upper.shape != x0.shape:
        raise ValueError(
            f"box shapes {tuple(x_lower.shape)}/{tuple(x_upper.shape)} differ from the "
            f"perturbed input's {tuple(x0.shape)}"
        )
    if bool((x_lower > x_upper).any()):
        raise ValueError("x_lower must be <= x_upper elementwise")
    if C.dim() != 3 or C.shape[0] != x0.shape[0]:
        raise ValueError(f"C must have shape [B={x0.shape[0]}, S, n_out], got {tuple(C.shape)}")
    lirpa = import_auto_lirpa()
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), x_L=x_lower, x_U=x_upper)
    args = (lirpa.BoundedTensor(x0, ptb), *inputs[1:])
    if method == "alpha-CROWN":
        return _alpha_crown_lower(bounded, args, C, alpha_iterations)
    with torch.no_grad():
        if method == "IBP":
            lower, _ = bounded.compute_bounds(x=args, C=C, method="IBP")
        else:
            lower, _ = bounded.compute_bounds(x=args, C=C, method=method, bound_upper=False)
    return lower.detach()


def _alpha_crown_lower(
    bounded: BoundedModule, args: tuple[torch.Tensor, ...], C: torch.Tensor, iterations: int
) -> torch.Tensor:
    """alpha-CROWN with CROWN's intermediate bounds fixed; only final-spec slopes optimised.

    The CROWN pass runs in auto_LiRPA's 'init' stage, which records the relaxation that the
    slopes start from (so iteration 0 reproduces CROWN). Alphas are then created for the
    final node only: 0.3 would create them for every intermediate layer too, which costs
    memory and breaks for Sigmoid/Tanh after a convolution (a torch.Size used as an int).
    """
    activations = list(bounded.optimizable_activations)
    for node in activations:
        node.opt_init()
    try:
        with torch.no_grad():
            # A forward pass first, as auto_LiRPA's own init_alpha does: compute_bounds keeps each
            # node's input_shape from the last forward, whose batch size MaxPool's alphas take.
            bounded(*args)
            crown, _ = bounded.compute_bounds(x=args, C=C, method="backward", bound_upper=False)
        crown = crown.detach()
        used = [n for n in activations if n.used and n.perturbed]
        if not used or iterations == 0:
            return crown
        final_name = bounded.final_name
        roots = set(_root_names(bounded))
        fixed = {
            name: (node.lower.detach(), node.upper.detach())
            for name, node in bounded._modules.items()
            if name != final_name
            and name not in roots
            and node.perturbed
            and getattr(node, "lower", None) is not None
            and getattr(node, "upper", None) is not None
        }
        for node in used:
            # The library's own start-node records (their layout differs between versions),
            # kept for the final node only.
            starts = bounded.get_alpha_crown_start_nodes(node, c=C, final_node_name=final_name)
            node.init_opt_parameters([start for start in starts if start[0] == final_name])
        bounded.set_bound_opts(
            {"optimize_bound_args": {"iteration": iterations, "early_stop_patience": iterations}}
        )
        with torch.enable_grad(), warnings.catch_warnings():
            # 0.3 steps its lr scheduler after the last, optimizer-free iteration.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            optimised, _ = bounded.compute_bounds(
                x=args,
                C=C,
                method="CROWN-Optimized",
                bound_upper=False,
                **{_intermediate_bounds_keyword(bounded): fixed},
            )
        return torch.maximum(crown, optimised.detach())
    finally:
        for node in activations:
            node.opt_end()
