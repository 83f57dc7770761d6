"""Convert an ONNX graph into a module of layers the verifier can bound.

Only the `onnx` package is used (to read the protobuf, and its reference evaluator to fold
constant subgraphs and to check the result); onnx2torch is not, since it imports
torchvision. A chain graph, where each layer feeds the next, becomes an nn.Sequential;
any other graph becomes a torch.fx.GraphModule of one placeholder, call_module nodes,
`operator.add` of two tensors of the same shape, `torch.cat(..., dim=1)` and one output.
Supported data ops, each mapped to one layer:

* Gemm, MatMul (data @ constant) -> nn.Linear; an Add/Sub/Mul/Div by one constant per
  output channel right after a Gemm, MatMul, Conv or ConvTranspose whose output nothing
  else reads is folded into its weights and bias (the MatMul+Add pattern, a temperature);
* Conv -> nn.Conv2d, ConvTranspose -> nn.ConvTranspose2d (strides, symmetric pads,
  output_padding, dilations, groups), BatchNormalization -> nn.BatchNorm1d/2d in eval mode;
* MaxPool -> nn.MaxPool2d, AveragePool -> nn.AvgPool2d (ONNX's count_include_pad),
  GlobalAveragePool and ReduceMean over H and W -> nn.AdaptiveAvgPool2d(1) (then nn.Flatten
  without keepdims), Resize/Upsample -> nn.Upsample where the coordinate mapping is torch's;
* Relu, LeakyRelu, Sigmoid, Tanh, Elu, Softplus, Gelu; x * Sigmoid(x) -> nn.SiLU, and the
  Erf form x * 0.5 * (1 + Erf(x / sqrt(2))) that torch exports below opset 20 -> nn.GELU;
* Flatten (axis 1) -> nn.Flatten; Reshape, Squeeze and Unsqueeze that keep the batch
  dimension first -> nn.Flatten or ViewAs (batch stays symbolic); Identity, Dropout
  (inference) -> nn.Identity;
* Add of two tensors of the same shape (residual connections), Concat along channels;
* Sub/Div/Mul/Add by scalars or per-channel constants of an image input ->
  PerChannelNormalize, when the combined scale is positive.

Nodes whose inputs are all constants, and Shape of a data tensor, are evaluated (for two
batch sizes when the batch is symbolic, so that a reshape target like
`[x.size(0), -1]` is recognised as keeping the batch). Anything else raises
AuditInputError naming the node and its op type.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.layers import SUPPORTED_LAYERS, PerChannelNormalize, UnsupportedLayerError, ViewAs, check_supported

if TYPE_CHECKING:
    import onnx

__all__ = ["SUPPORTED_ONNX_OPS", "convert_onnx", "load_onnx", "reference_outputs", "require_onnx"]

SUPPORTED_ONNX_OPS: tuple[str, ...] = (
    "Gemm",
    "MatMul",
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Resize",
    "Upsample",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Softplus",
    "Gelu",
    "Erf",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Concat",
    "Add",
    "Sub",
    "Mul",
    "Div",
)
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
_SYMBOLIC_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Concat"})  # these read several tensors, or values kept symbolic
_SYMBOLIC_BATCHES = (2, 3)
_ONNX_FLOAT = 1
_GELU_PATTERN = "x * 0.5 * (1 + erf(x / sqrt(2)))"


def require_onnx() -> Any:
    """Import `onnx`, or explain how to install it."""
    try:
        import onnx
    except ImportError:
        raise AuditInputError("reading ONNX models needs the `onnx` package: pip install auditai-ops[onnx]") from None
    return onnx


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file (external data next to it is loaded too)."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise AuditInputError(f"model '{path}': file not found") from None
    except (DecodeError, OSError, ValueError, RuntimeError) as error:
        raise AuditInputError(f"model '{path}': not a valid ONNX file ({type(error).__name__}: {error})") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AuditInputError(f"model '{path}': not a valid ONNX model ({first})") from None
    if not model.graph.node:
        raise AuditInputError(f"model '{path}': not a valid ONNX model (the graph has no nodes)")
    return model


def reference_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The graph's output for input `x`, computed by onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in initializers)
    return np.asarray(ReferenceEvaluator(model).run(None, {name: x})[0])


def convert_onnx(model: onnx.ModelProto, input_shape: tuple[int, ...], origin: str) -> nn.Module:
    """An eval-mode module computing the same function as the graph `model`: an nn.Sequential for a chain, else a torch.fx.GraphModule.

    `input_shape` is the per-sample input shape (without the batch dimension).
    """
    return _Converter(model, tuple(int(d) for d in input_shape), origin).run()


@dataclass
class _Layer:
    """One call in the converted graph: a module, or operator.add / torch.cat, reading data tensors by name."""

    target: nn.Module | Callable[..., torch.Tensor]
    inputs: list[str]
    output: str
    nodes: list[str]
    foldable_axis: int | None = None  # the channel axis of a Linear/Conv output whose bias can absorb an Add


@dataclass(frozen=True)
class _Affine:
    """A per-channel affine map of the graph input: input * scale + shift."""

    scale: np.ndarray
    shift: np.ndarray
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Product:
    """`scale * x**has_x * (1 + erf(x / sqrt 2))**has_erf` of the data tensor `base`, or `erf(x / sqrt 2)` when erf_only.

    Kept symbolic until it is GELU (0.5 * x * (1 + erf)); `error` says why it cannot be computed otherwise.
    """

    base: str
    scale: float
    has_x: bool
    has_erf: bool
    error: str
    erf_only: bool = False
    nodes: tuple[str, ...] = ()


class _Converter:
    def __init__(self, model: onnx.ModelProto, input_shape: tuple[int, ...], origin: str) -> None:
        self.onnx = require_onnx()
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.origin = origin
        self.input_shape = input_shape
        self.opsets = {(entry.domain or ""): int(entry.version) for entry in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 13))
        initializers = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        inputs = [value for value in self.graph.input if value.name not in initializers]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise AuditInputError(f"model '{origin}': the ONNX graph has {len(inputs)} inputs and {len(self.graph.output)} outputs; exactly one of each is supported")
        self.input_name = inputs[0].name
        self.batches = self._batches(inputs[0])
        self.consts: dict[str, list[np.ndarray]] = {name: [value] * len(self.batches) for name, value in initializers.items()}
        self.shapes: dict[str, tuple[int, ...]] = {self.input_name: input_shape}
        self.layers: list[_Layer] = []
        self.producers: dict[str, _Layer] = {}
        self.affines: dict[str, _Affine] = {}
        self.products: dict[str, _Product] = {}
        self.uses: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for output in self.graph.output:
            self.uses[output.name] = self.uses.get(output.name, 0) + 1

    # -- graph walk ---------------------------------------------------------------------

    def run(self) -> nn.Module:
        for index, node in enumerate(self.graph.node):
            self._visit(node, index)
        output = self.graph.output[0].name
        if output in self.consts:
            raise AuditInputError(f"model '{self.origin}': the ONNX graph's output '{output}' does not depend on its input")
        if output not in self.shapes:
            raise AuditInputError(f"model '{self.origin}': the ONNX graph's output '{output}' is not produced by any node")
        return self._build(self._value(output))

    def _build(self, output: str) -> nn.Module:
        """An nn.Sequential when the layers that the output needs form a chain, else a GraphModule."""
        needed, live = {output}, []
        for layer in reversed(self.layers):
            if layer.output in needed:
                live.append(layer)
                needed.update(layer.inputs)
        live.reverse()
        feeds = [self.input_name] + [layer.output for layer in live]
        if feeds[-1] == output and all(isinstance(layer.target, nn.Module) and layer.inputs == [feeds[index]] for index, layer in enumerate(live)):
            return nn.Sequential(*[layer.target for layer in live] or [nn.Identity()]).float().eval()
        graph = torch.fx.Graph()
        root = nn.Module()
        values = {self.input_name: graph.placeholder("x")}
        modules = 0
        for layer in live:
            args = [values[name] for name in layer.inputs]
            if isinstance(layer.target, nn.Module):
                root.add_module(str(modules), layer.target)  # named like nn.Sequential's layers
                values[layer.output] = graph.call_module(str(modules), tuple(args))
                modules += 1
            elif layer.target is torch.cat:
                values[layer.output] = graph.call_function(torch.cat, (args,), {"dim": 1})
            else:
                values[layer.output] = graph.call_function(layer.target, tuple(args))
        graph.output(values[output])
        return torch.fx.GraphModule(root, graph, class_name="ConvertedOnnxGraph").float().eval()

    def _describe(self, node: onnx.NodeProto, index: int | None = None) -> str:
        name = node.name or f"#{index if index is not None else '?'}"
        return f"model '{self.origin}': ONNX node '{name}' ({node.op_type})"

    def _visit(self, node: onnx.NodeProto, index: int) -> None:
        desc = self._describe(node, index)
        if node.domain not in ("", "ai.onnx"):
            raise self._unsupported(node, index, f"op '{node.domain}.{node.op_type}' from a custom domain")
        if node.op_type in _RANDOM_OPS:
            raise self._unsupported(node, index, f"op type '{node.op_type}' (random)")
        present = [name for name in node.input if name]
        data = [name for name in present if name not in self.consts]
        for name in data:
            if name not in self.shapes:
                raise AuditInputError(f"{desc}: its input '{name}' is not produced by an earlier node (is the graph topologically sorted?)")
        if node.op_type == "Shape" and data:
            self._fold_shape(node, data[0])
            return
        if not data:
            self._fold(node, desc)
            return
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None:
            raise self._unsupported(node, index, f"op type '{node.op_type}'")
        for extra in node.output[1:]:
            if extra and self.uses.get(extra, 0):
                raise AuditInputError(f"{desc}: its extra output '{extra}' is used (training-mode outputs are not supported)")
        if node.op_type in _SYMBOLIC_OPS:
            handler(node, desc, data)
            return
        if len(data) > 1:
            raise AuditInputError(
                f"{desc} reads the tensors {', '.join(repr(n) for n in data)}; tensors combine only by Add (residual connections), "
                "Concat along channels, and Mul in x * sigmoid(x) (SiLU)"
            )
        handler(node, desc, self._value(data[0]))

    def _unsupported(self, node: onnx.NodeProto, index: int, what: str) -> AuditInputError:
        return AuditInputError(
            f"{self._describe(node, index)}: {what} is not supported by the verifier. Supported ONNX ops: {', '.join(SUPPORTED_ONNX_OPS)} "
            "(on constants any op is evaluated, e.g. Shape/Gather/Concat computing a reshape target)"
        )

    # -- constants ----------------------------------------------------------------------

    def _batches(self, value: onnx.ValueInfoProto) -> tuple[int, ...]:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != _ONNX_FLOAT:
            raise AuditInputError(f"model '{self.origin}': the ONNX input '{value.name}' has element type {tensor_type.elem_type}; only float32 (1) is supported")
        if not tensor_type.HasField("shape"):
            return _SYMBOLIC_BATCHES
        dims = list(tensor_type.shape.dim)
        declared = ["?" if not d.HasField("dim_value") else str(d.dim_value) for d in dims]
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(dims) != len(self.input_shape) + 1 or any(f is not None and f != want for f, want in zip(fixed[1:], self.input_shape, strict=False)):
            raise AuditInputError(
                f"model '{self.origin}': the ONNX input '{value.name}' has shape ({', '.join(declared)}), "
                f"which does not fit the declared input shape (batch, {', '.join(map(str, self.input_shape))})"
            )
        return (fixed[0],) if fixed[0] else _SYMBOLIC_BATCHES

    def _fold_shape(self, node: onnx.NodeProto, name: str) -> None:
        attributes = self._attributes(node)
        values = []
        for batch in self.batches:
            full = np.array([batch, *self.shapes[name]], dtype=np.int64)
            start, end = attributes.get("start", 0), attributes.get("end", len(full))
            values.append(full[start:end])
        self.consts[node.output[0]] = values

    def _fold(self, node: onnx.NodeProto, desc: str) -> None:
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(node, opsets=self.opsets)
            results = [evaluator.run(None, {name: self.consts[name][v] for name in node.input if name}) for v in range(len(self.batches))]
        except Exception as error:  # the reference evaluator raises many types
            raise AuditInputError(f"{desc}: cannot evaluate this constant node ({type(error).__name__}: {error})") from None
        for position, name in enumerate(node.output):
            if name:
                self.consts[name] = [np.asarray(result[position]) for result in results]

    def _static(self, name: str, desc: str) -> np.ndarray:
        values = self.consts[name]
        if any(v.shape != values[0].shape or not np.array_equal(v, values[0]) for v in values[1:]):
            raise AuditInputError(f"{desc}: the constant '{name}' depends on the batch size")
        return values[0]

    def _weight(self, node: onnx.NodeProto, position: int, desc: str, ndim: int | tuple[int, ...]) -> np.ndarray:
        if len(node.input) <= position or not node.input[position] or node.input[position] not in self.consts:
            raise AuditInputError(f"{desc}: input {position} must be a constant (an initializer)")
        value = self._static(node.input[position], desc)
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.ndim not in allowed:
            raise AuditInputError(f"{desc}: input {position} has shape {value.shape}; expected {' or '.join(map(str, allowed))} dimensions")
        return value.astype(np.float32)

    def _optional(self, node: onnx.NodeProto, position: int, desc: str) -> np.ndarray | None:
        if len(node.input) <= position or not node.input[position]:
            return None
        if node.input[position] not in self.consts:
            raise AuditInputError(f"{desc}: input {position} must be a constant (an initializer)")
        return self._static(node.input[position], desc).astype(np.float32)

    def _attributes(self, node: onnx.NodeProto) -> dict[str, Any]:
        helper = self.onnx.helper
        values = {}
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            values[attribute.name] = value.decode() if isinstance(value, bytes) else value
        return values

    # -- layers ---------------------------------------------------------------------------

    def _value(self, name: str) -> str:
        """`name` as a computed tensor: a pending input normalisation or GELU becomes its layer; other symbolic values raise."""
        affine = self.affines.pop(name, None)
        if affine is not None:
            if not np.all(affine.scale > 0) or not np.all(np.isfinite(affine.scale)):
                raise AuditInputError(
                    f"model '{self.origin}': ONNX nodes {list(affine.nodes)} scale the input by {affine.scale.tolist()}; "
                    "only per-channel normalisation with a positive scale ((x - mean) / std, std > 0) is supported"
                )
            module = PerChannelNormalize((-affine.shift / affine.scale).tolist(), (1.0 / affine.scale).tolist())
            self._add_layer(module, [self.input_name], name, list(affine.nodes), f"model '{self.origin}': ONNX nodes {list(affine.nodes)}")
            return name
        product = self.products.pop(name, None)
        if product is None:
            return name
        if product.has_x and product.has_erf and math.isclose(product.scale, 0.5, rel_tol=1e-6):
            self._add_layer(nn.GELU(), [self._value(product.base)], name, list(product.nodes), f"model '{self.origin}': ONNX nodes {list(product.nodes)} (GELU)")
            return name
        raise AuditInputError(product.error)

    def _add_layer(
        self, target: nn.Module | Callable[..., torch.Tensor], inputs: list[str], output: str, nodes: list[str], desc: str, foldable_axis: int | None = None
    ) -> tuple[int, ...]:
        """Append a layer computing `output` from `inputs`; returns its per-sample output shape."""
        if isinstance(target, nn.Module):
            target = target.float().eval()
            if type(target) in SUPPORTED_LAYERS:  # configuration checks (e.g. ConvTranspose geometry) name the node; the loader checks the whole module
                try:
                    check_supported(target)
                except UnsupportedLayerError as error:
                    raise AuditInputError(f"{desc}: converts to a layer the verifier cannot bound: {error}") from None
        with torch.no_grad():
            try:
                out = (
                    target(*[torch.zeros(1, *self.shapes[name]) for name in inputs])
                    if target is not torch.cat
                    else torch.cat([torch.zeros(1, *self.shapes[name]) for name in inputs], dim=1)
                )
            except RuntimeError as error:
                shapes = " and ".join(str(self.shapes[name]) for name in inputs)
                raise AuditInputError(f"{desc}: does not fit its input of shape {shapes} ({error})") from None
        layer = _Layer(target, list(inputs), output, list(nodes), foldable_axis)
        self.layers.append(layer)
        self.producers[output] = layer
        self.shapes[output] = tuple(out.shape[1:])
        return self.shapes[output]

    def _append(self, module: nn.Module, node: onnx.NodeProto, desc: str, x: str, foldable_axis: int | None = None) -> tuple[int, ...]:
        return self._add_layer(module, [x], node.output[0], [node.name], desc, foldable_axis)

    def _image(self, desc: str, x: str) -> tuple[int, ...]:
        sample = self.shapes[x]
        if len(sample) != 3:
            raise AuditInputError(f"{desc}: expects an input of shape (C, H, W) per sample, got {sample}")
        return sample

    def _op_Relu(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.ReLU(), node, desc, x)

    def _op_LeakyRelu(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.LeakyReLU(float(self._attributes(node).get("alpha", 0.01))), node, desc, x)

    def _op_Sigmoid(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.Sigmoid(), node, desc, x)

    def _op_Tanh(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.Tanh(), node, desc, x)

    def _op_Elu(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.ELU(float(self._attributes(node).get("alpha", 1.0))), node, desc, x)

    def _op_Softplus(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.Softplus(), node, desc, x)  # log(1 + exp(x)); torch returns x above 20, within 2e-9 of it

    def _op_Gelu(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        approximate = self._attributes(node).get("approximate", "none")
        if approximate not in ("none", "tanh"):
            raise AuditInputError(f"{desc}: approximate={approximate!r} is not supported (expected 'none' or 'tanh')")
        self._append(nn.GELU(approximate=approximate), node, desc, x)

    def _op_Identity(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._append(nn.Identity(), node, desc, x)

    def _op_Dropout(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts or bool(np.any(self._static(node.input[2], desc))):
                raise AuditInputError(f"{desc}: training mode is not supported")
        if int(self._attributes(node).get("is_test", 1)) == 0 and self.opset < 7:
            raise AuditInputError(f"{desc}: training mode is not supported")
        self._append(nn.Identity(), node, desc, x)

    # -- pooling and resampling -----------------------------------------------------------------

    def _pool_window(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[dict[str, Any], tuple[int, int], dict[str, Any], tuple[int, int], tuple[int, int]]:
        """attributes, kernel, geometry, and the output sizes (H, W) with floor and with ceil rounding."""
        attributes = self._attributes(node)
        sample = self._image(desc, x)
        kernel = tuple(int(k) for k in attributes.get("kernel_shape", []))
        if len(kernel) != 2:
            raise AuditInputError(f"{desc}: kernel_shape {list(kernel)}: only 2-D pooling is supported")
        geometry = self._window_geometry(attributes, desc, kernel, sample[1:], transposed=False)
        sizes = []
        for rounding in (math.floor, math.ceil):
            sizes.append(
                tuple(
                    int(rounding((sample[1 + axis] + 2 * geometry["padding"][axis] - (kernel[axis] - 1) * geometry["dilation"][axis] - 1) / geometry["stride"][axis])) + 1
                    for axis in range(2)
                )
            )
        return attributes, (kernel[0], kernel[1]), geometry, sizes[0], sizes[1]

    def _op_MaxPool(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes, kernel, geometry, floor, ceil = self._pool_window(node, desc, x)
        ceil_mode = int(attributes.get("ceil_mode", 0)) == 1 and ceil != floor
        module = nn.MaxPool2d(kernel, stride=geometry["stride"], padding=geometry["padding"], dilation=geometry["dilation"], ceil_mode=ceil_mode)
        shape = self._append(module, node, desc, x)
        if shape[1:] != (ceil if ceil_mode else floor):
            raise AuditInputError(f"{desc}: ceil_mode=1 gives an output of size {ceil} in ONNX and {shape[1:]} in torch; export with ceil_mode=0")

    def _op_AveragePool(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes, kernel, geometry, floor, ceil = self._pool_window(node, desc, x)
        if geometry["dilation"] != (1, 1):
            raise AuditInputError(f"{desc}: dilations {list(geometry['dilation'])} are not supported (torch's AvgPool2d has none)")
        if int(attributes.get("ceil_mode", 0)) == 1 and ceil != floor:
            raise AuditInputError(f"{desc}: ceil_mode=1 adds partial windows here, whose divisor differs between ONNX and torch; export with ceil_mode=0")
        include_pad = int(attributes.get("count_include_pad", 0)) == 1
        self._append(nn.AvgPool2d(kernel, stride=geometry["stride"], padding=geometry["padding"], count_include_pad=include_pad), node, desc, x)

    def _op_GlobalAveragePool(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._image(desc, x)
        self._append(nn.AdaptiveAvgPool2d(1), node, desc, x)

    def _op_ReduceMean(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        sample = self._image(desc, x)
        if len(node.input) > 1 and node.input[1]:
            axes = self._static(node.input[1], desc).astype(np.int64).reshape(-1).tolist()
        else:
            axes = list(attributes.get("axes", []))
        if sorted(axis % (len(sample) + 1) for axis in axes) != [2, 3]:
            raise AuditInputError(f"{desc}: ReduceMean over axes {axes}; only the mean over H and W (axes 2 and 3, global average pooling) is supported")
        if int(attributes.get("keepdims", 1)) == 1:
            self._append(nn.AdaptiveAvgPool2d(1), node, desc, x)
            return
        pooled = f"{node.output[0]}:pooled"
        self._add_layer(nn.AdaptiveAvgPool2d(1), [x], pooled, [node.name], desc)
        self._add_layer(nn.Flatten(), [pooled], node.output[0], [node.name], desc)

    def _op_Resize(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        if self.opset < 11:
            raise AuditInputError(f"{desc}: Resize of opset {self.opset} is not supported; export with opset 11 or later")
        if int(attributes.get("antialias", 0)) != 0 or attributes.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise AuditInputError(f"{desc}: antialias and keep_aspect_ratio_policy are not supported")
        if "axes" in attributes and sorted(axis % 4 for axis in attributes["axes"]) != [2, 3]:
            raise AuditInputError(f"{desc}: resizes axes {list(attributes['axes'])}; only H and W (axes 2 and 3) are supported")
        self._upsample(
            node,
            desc,
            x,
            attributes.get("mode", "nearest"),
            attributes.get("coordinate_transformation_mode", "half_pixel"),
            attributes.get("nearest_mode", "round_prefer_floor"),
            scales=self._optional(node, 2, desc),
            sizes=self._resize_sizes(node, desc, x),
        )

    def _resize_sizes(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, int] | None:
        """Resize's output (H, W) from its `sizes` input, which must keep the batch (it may be computed from it) and the channels."""
        if len(node.input) <= 3 or not node.input[3]:
            return None
        if node.input[3] not in self.consts:
            raise AuditInputError(f"{desc}: input 3 must be a constant (an initializer)")
        targets = [tuple(int(s) for s in np.asarray(value).reshape(-1)) for value in self.consts[node.input[3]]]
        if not targets[0]:
            return None
        channels = self.shapes[x][0]
        axes = "axes" in self._attributes(node)  # then sizes holds (H, W) only
        keeps = all(len(t) == (2 if axes else 4) and (axes or t[:2] == (batch, channels)) for t, batch in zip(targets, self.batches, strict=True))
        if not keeps or len({t[-2:] for t in targets}) != 1 or min(targets[0][-2:]) < 1:
            raise AuditInputError(f"{desc}: sizes {list(targets[0])} do not keep the batch and the channels of its input (batch, {channels}, H, W)")
        return targets[0][-2], targets[0][-1]

    def _op_Upsample(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        scales = np.asarray(attributes["scales"], dtype=np.float32) if "scales" in attributes else self._optional(node, 1, desc)
        self._upsample(node, desc, x, attributes.get("mode", "nearest"), "asymmetric", "floor", scales=scales, sizes=None)

    def _upsample(self, node: onnx.NodeProto, desc: str, x: str, mode: str, coordinates: str, nearest_mode: str, scales: np.ndarray | None, sizes: tuple[int, int] | None) -> None:
        """nn.Upsample for a Resize/Upsample node whose output pixels torch computes the same way."""
        channels, height, width = self._image(desc, x)
        if sizes is not None:
            out = sizes
            factors: tuple[float, float] | None = None
        elif scales is not None and scales.size:
            values = [float(s) for s in scales.reshape(-1)]
            values = [1.0, 1.0, *values] if len(values) == 2 else values
            if len(values) != 4 or values[:2] != [1.0, 1.0] or min(values[2:]) <= 0:
                raise AuditInputError(f"{desc}: scales {scales.tolist()}; only positive scales of H and W are supported")
            factors = (values[2], values[3])
            out = (int(math.floor(height * factors[0])), int(math.floor(width * factors[1])))
        else:
            raise AuditInputError(f"{desc}: has neither scales nor sizes")
        module: nn.Module
        if mode == "nearest":
            integral = out[0] % height == 0 and out[1] % width == 0 and (factors is None or factors == (out[0] / height, out[1] / width))
            exact = (coordinates == "asymmetric" and nearest_mode == "floor") or (coordinates in ("half_pixel", "pytorch_half_pixel") and nearest_mode.startswith("round_prefer_"))
            if not integral or not exact:
                raise AuditInputError(
                    f"{desc}: nearest resizing from {(height, width)} to {out} with coordinate_transformation_mode={coordinates!r}, nearest_mode={nearest_mode!r} "
                    "is not torch's; supported: integer scale factors, with asymmetric + floor or half_pixel + round_prefer_floor/ceil"
                )
            module = nn.Upsample(scale_factor=(float(out[0] // height), float(out[1] // width)), mode="nearest")
        elif mode == "linear":
            if coordinates == "align_corners":
                align = True
            elif coordinates == "half_pixel" or (coordinates == "pytorch_half_pixel" and min(out) > 1):
                align = False
            else:
                raise AuditInputError(
                    f"{desc}: linear resizing with coordinate_transformation_mode={coordinates!r} is not torch's bilinear; supported: half_pixel, pytorch_half_pixel, align_corners"
                )
            module = nn.Upsample(size=out, mode="bilinear", align_corners=align) if factors is None else nn.Upsample(scale_factor=factors, mode="bilinear", align_corners=align)
        else:
            raise AuditInputError(f"{desc}: mode {mode!r} is not supported (nearest and linear are)")
        shape = self._append(module, node, desc, x)
        if shape[1:] != out:
            raise AuditInputError(f"{desc}: resizes {(height, width)} to {out} in ONNX but to {shape[1:]} in torch")

    # -- shapes and linear layers -----------------------------------------------------------------

    def _op_Flatten(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        rank = len(self.shapes[x]) + 1
        axis = int(self._attributes(node).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis != 1:
            raise AuditInputError(f"{desc}: Flatten with axis {axis} mixes the batch dimension with features; only axis 1 is supported")
        self._append(nn.Flatten(), node, desc, x)

    def _op_Reshape(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        if len(node.input) > 1 and node.input[1]:
            targets = [np.asarray(v).astype(np.int64).reshape(-1) for v in self.consts[node.input[1]]]
        elif "shape" in attributes:
            targets = [np.asarray(attributes["shape"], dtype=np.int64)] * len(self.batches)
        else:
            raise AuditInputError(f"{desc}: has no target shape")
        allow_zero = int(attributes.get("allowzero", 0)) == 1
        sample = self.shapes[x]
        outputs = [_resolve_reshape(target.tolist(), [batch, *sample], allow_zero) for target, batch in zip(targets, self.batches, strict=True)]
        keeps_batch = all(out is not None and out[0] == batch for out, batch in zip(outputs, self.batches, strict=True))
        rests = {tuple(out[1:]) for out in outputs if out is not None}
        if not keeps_batch or len(rests) != 1:
            raise AuditInputError(
                f"{desc}: reshapes {tuple(['batch', *sample])} to {targets[0].tolist()}, which does not keep the batch dimension first; "
                "only reshapes of the per-sample features (e.g. x.view(-1, C, H, W) or x.view(x.size(0), -1)) are supported"
            )
        self._reshape(node, desc, x, rests.pop())

    def _reshape(self, node: onnx.NodeProto, desc: str, x: str, rest: tuple[int, ...]) -> None:
        """A reshape of the per-sample features to `rest` (the batch stays first)."""
        module: nn.Module
        if rest == self.shapes[x]:
            module = nn.Identity()
        elif len(rest) == 1:
            module = nn.Flatten()
        else:
            module = ViewAs(rest)
        self._append(module, node, desc, x)

    def _op_Squeeze(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._squeeze(node, desc, x, unsqueeze=False)

    def _op_Unsqueeze(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        self._squeeze(node, desc, x, unsqueeze=True)

    def _squeeze(self, node: onnx.NodeProto, desc: str, x: str, unsqueeze: bool) -> None:
        """Squeeze/Unsqueeze of per-sample axes (never the batch): a reshape."""
        sample = list(self.shapes[x])
        if len(node.input) > 1 and node.input[1]:
            axes = self._static(node.input[1], desc).astype(np.int64).reshape(-1).tolist()
        else:
            axes = list(self._attributes(node).get("axes", []))
        rank = len(sample) + 1 + (len(axes) if unsqueeze else 0)
        axes = sorted(int(axis) % rank for axis in axes) if axes else []
        if not axes or 0 in axes or (not unsqueeze and any(sample[axis - 1] != 1 for axis in axes)):
            raise AuditInputError(f"{desc}: only squeezing or unsqueezing given per-sample axes (not the batch, axis 0) is supported, got axes {axes or 'none'}")
        full = ["batch", *sample]
        for axis in axes if unsqueeze else reversed(axes):
            if unsqueeze:
                full.insert(axis, 1)
            else:
                del full[axis]
        self._reshape(node, desc, x, tuple(int(d) for d in full[1:]))

    def _op_Gemm(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        if node.input[0] != x or int(attributes.get("transA", 0)) != 0:
            raise AuditInputError(f"{desc}: only Gemm(data, constant) without transA is supported")
        weight = self._weight(node, 1, desc, 2)
        weight = (weight if int(attributes.get("transB", 0)) else weight.T) * float(attributes.get("alpha", 1.0))
        bias = self._optional(node, 2, desc)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            if bias is not None:
                vector = _per_channel(bias * float(attributes.get("beta", 1.0)), (weight.shape[0],), 0)
                if vector is None:
                    raise AuditInputError(f"{desc}: its bias of shape {bias.shape} is not one value per output")
                linear.bias.copy_(torch.from_numpy(vector))  # type: ignore[union-attr]
        self._append(linear, node, desc, x, foldable_axis=-1)

    def _op_MatMul(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        if node.input[0] != x:
            raise AuditInputError(f"{desc}: only MatMul(data, constant) is supported (the data must be the first operand)")
        weight = self._weight(node, 1, desc, 2)
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        self._append(linear, node, desc, x, foldable_axis=-1)

    def _window_geometry(self, attributes: dict[str, Any], desc: str, kernel: tuple[int, ...], spatial: tuple[int, ...], transposed: bool) -> dict[str, Any]:
        """Stride, symmetric padding and dilation of a 2-D convolution or pooling window (auto_pad resolved)."""
        strides = list(attributes.get("strides", [1, 1]))
        dilations = list(attributes.get("dilations", [1, 1]))
        pads = list(attributes.get("pads", [0, 0, 0, 0]))
        auto_pad = attributes.get("auto_pad", "NOTSET")
        if auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER") and not transposed and len(spatial) == 2 and len(strides) == len(dilations) == len(kernel) == 2:
            pads = [0, 0, 0, 0]
            for axis in range(2):
                out = math.ceil(spatial[axis] / strides[axis])
                total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - spatial[axis])
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                pads[axis], pads[axis + 2] = begin, total - begin
        elif auto_pad != "NOTSET":
            raise AuditInputError(f"{desc}: auto_pad={auto_pad} is not supported here; export with explicit pads")
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
            raise AuditInputError(f"{desc}: only 2-D convolutions and pooling are supported")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise AuditInputError(f"{desc}: asymmetric padding {pads} (top, left, bottom, right) is not supported")
        return {"stride": tuple(strides), "padding": (pads[0], pads[1]), "dilation": tuple(dilations)}

    def _conv_geometry(self, node: onnx.NodeProto, desc: str, kernel: tuple[int, int], spatial: tuple[int, ...], transposed: bool) -> dict[str, Any]:
        attributes = self._attributes(node)
        if list(attributes.get("kernel_shape", kernel)) != list(kernel):
            raise AuditInputError(f"{desc}: kernel_shape {attributes['kernel_shape']} differs from its weight's {list(kernel)}")
        geometry = self._window_geometry(attributes, desc, kernel, spatial, transposed)
        return {**geometry, "groups": int(attributes.get("group", 1)), "attributes": attributes}

    def _op_Conv(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        weight = self._weight(node, 1, desc, 4)
        bias = self._optional(node, 2, desc)
        sample = self.shapes[x]
        if len(sample) != 3:
            raise AuditInputError(f"{desc}: expects an input of shape (C, H, W) per sample, got {sample}")
        geometry = self._conv_geometry(node, desc, (weight.shape[2], weight.shape[3]), sample[1:], transposed=False)
        groups = geometry["groups"]
        conv = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            (weight.shape[2], weight.shape[3]),
            stride=geometry["stride"],
            padding=geometry["padding"],
            dilation=geometry["dilation"],
            groups=groups,
            bias=bias is not None,
        )
        _copy_weights(conv, weight, bias, desc)
        self._append(conv, node, desc, x, foldable_axis=0)

    def _op_ConvTranspose(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        weight = self._weight(node, 1, desc, 4)
        bias = self._optional(node, 2, desc)
        sample = self.shapes[x]
        if len(sample) != 3:
            raise AuditInputError(f"{desc}: expects an input of shape (C, H, W) per sample, got {sample}")
        geometry = self._conv_geometry(node, desc, (weight.shape[2], weight.shape[3]), sample[1:], transposed=True)
        attributes = geometry["attributes"]
        groups = geometry["groups"]
        conv = nn.ConvTranspose2d(
            weight.shape[0],
            weight.shape[1] * groups,
            (weight.shape[2], weight.shape[3]),
            stride=geometry["stride"],
            padding=geometry["padding"],
            output_padding=tuple(attributes.get("output_padding", [0, 0])),
            groups=groups,
            bias=bias is not None,
            dilation=geometry["dilation"],
        )
        _copy_weights(conv, weight, bias, desc)
        shape = self._append(conv, node, desc, x, foldable_axis=0)
        if "output_shape" in attributes and list(attributes["output_shape"])[-2:] != list(shape[-2:]):
            raise AuditInputError(f"{desc}: output_shape {list(attributes['output_shape'])} is not supported (export with explicit pads and output_padding)")

    def _op_BatchNormalization(self, node: onnx.NodeProto, desc: str, x: str) -> None:
        attributes = self._attributes(node)
        if int(attributes.get("training_mode", 0)) != 0 or int(attributes.get("spatial", 1)) != 1:
            raise AuditInputError(f"{desc}: only inference-mode, spatial batch normalisation is supported")
        scale, shift, mean, var = (self._weight(node, position, desc, 1) for position in (1, 2, 3, 4))
        sample = self.shapes[x]
        norm: nn.Module
        if len(sample) == 3:
            norm = nn.BatchNorm2d(scale.shape[0], eps=float(attributes.get("epsilon", 1e-5)))
        elif len(sample) in (1, 2):
            norm = nn.BatchNorm1d(scale.shape[0], eps=float(attributes.get("epsilon", 1e-5)))
        else:
            raise AuditInputError(f"{desc}: inputs of shape {sample} per sample are not supported")
        with torch.no_grad():
            for tensor, value in ((norm.weight, scale), (norm.bias, shift), (norm.running_mean, mean), (norm.running_var, var)):
                if tuple(tensor.shape) != value.shape:  # type: ignore[union-attr]
                    raise AuditInputError(f"{desc}: parameter of shape {value.shape}, expected {tuple(tensor.shape)}")  # type: ignore[union-attr]
                tensor.copy_(torch.from_numpy(value))  # type: ignore[union-attr]
        self._append(norm, node, desc, x)

    # -- elementwise arithmetic -------------------------------------------------------------

    def _op_Concat(self, node: onnx.NodeProto, desc: str, data: list[str]) -> None:
        if len(data) != len([name for name in node.input if name]):
            raise AuditInputError(f"{desc}: concatenates data with constants; only tensors computed from the input can be concatenated")
        inputs = [self._value(name) for name in data]
        rank = len(self.shapes[inputs[0]]) + 1
        axis = int(self._attributes(node).get("axis", 1))
        if axis % rank != 1:
            raise AuditInputError(f"{desc}: concatenates along axis {axis}; only the channel axis 1 is supported")
        shapes = [self.shapes[name] for name in inputs]
        if any(len(shape) != rank - 1 or shape[1:] != shapes[0][1:] for shape in shapes):
            raise AuditInputError(f"{desc}: its inputs of shapes {shapes} differ beyond the channel axis")
        if len(inputs) == 1:
            self._append(nn.Identity(), node, desc, inputs[0])
        else:
            self._add_layer(torch.cat, inputs, node.output[0], [node.name], desc)

    def _op_Erf(self, node: onnx.NodeProto, desc: str, data: list[str]) -> None:
        error = f"{desc}: Erf is supported only inside GELU, {_GELU_PATTERN}"
        product = self.products.get(data[0])
        if product is None or product.erf_only or not product.has_x or product.has_erf or not math.isclose(product.scale, 1 / math.sqrt(2), rel_tol=1e-6):
            raise AuditInputError(error)
        self._define(node, data[0], _Product(product.base, 1.0, False, False, error, erf_only=True, nodes=(*product.nodes, node.name)))

    def _define(self, node: onnx.NodeProto, x: str, value: _Product | _Affine) -> None:
        """Record the symbolic value of the node's output (its shape is its data input's)."""
        name = node.output[0]
        self.shapes[name] = self.shapes[x]
        if isinstance(value, _Product):
            self.products[name] = value
        else:
            self.affines[name] = value

    def _arithmetic(self, node: onnx.NodeProto, desc: str, data: list[str]) -> None:
        if len(data) == 2:
            self._combine(node, desc, data[0], data[1])
            return
        op = node.op_type
        x = data[0]
        data_first = node.input[0] == x
        constant = self._static(node.input[1] if data_first else node.input[0], desc).astype(np.float64)
        sample = self.shapes[x]
        if x == self.input_name or x in self.affines:  # the input, or arithmetic on it
            self._define(node, x, self._affine(node, desc, x, constant, data_first))
            return
        if x in self.products:
            self._define(node, x, self._scale_product(node, desc, self.products[x], constant, data_first))
            return
        layer = self.producers.get(x)
        if layer is not None and layer.foldable_axis is not None and self.uses.get(x, 0) == 1 and (data_first or op in ("Add", "Mul")):
            vector = _per_channel(constant, sample, layer.foldable_axis % len(sample))
            if vector is not None and (op in ("Add", "Sub") or np.all(vector != 0)) and _fold_into(layer.target, op, vector):  # type: ignore[arg-type]
                layer.nodes.append(node.name)
                del self.producers[layer.output]
                layer.output = node.output[0]
                self.producers[layer.output] = layer
                self.shapes[layer.output] = sample
                return
        error = (
            f"{desc}: elementwise {op} with a constant is supported only right after Gemm/MatMul/Conv/ConvTranspose "
            "(one value per output channel, folded into its weights and bias), or as a per-channel normalisation right after an image input"
        )
        if op in ("Mul", "Div") and (data_first or op == "Mul") and constant.size == 1 and float(constant.reshape(-1)[0]) != 0:
            value = float(constant.reshape(-1)[0])
            self._define(node, x, _Product(x, value if op == "Mul" else 1 / value, True, False, error, nodes=(node.name,)))  # may be part of GELU
            return
        raise AuditInputError(error)

    _op_Add = _op_Sub = _op_Mul = _op_Div = _arithmetic

    def _scale_product(self, node: onnx.NodeProto, desc: str, product: _Product, constant: np.ndarray, data_first: bool) -> _Product:
        """A symbolic GELU part times, divided by, or (erf + 1) plus a scalar constant."""
        op = node.op_type
        value = float(constant.reshape(-1)[0]) if constant.size == 1 else math.nan
        nodes = (*product.nodes, node.name)
        if product.erf_only and op == "Add" and value == 1.0:
            return _Product(product.base, 1.0, False, True, f"{desc}: 1 + erf(x / sqrt(2)) is supported only inside GELU, {_GELU_PATTERN}", nodes=nodes)
        if not product.erf_only and op in ("Mul", "Div") and (data_first or op == "Mul") and math.isfinite(value) and value != 0:
            return _Product(product.base, product.scale * (value if op == "Mul" else 1 / value), product.has_x, product.has_erf, product.error, nodes=nodes)
        raise AuditInputError(product.error)

    def _combine(self, node: onnx.NodeProto, desc: str, a: str, b: str) -> None:
        """Add (residual), Mul in SiLU or GELU: the ops that combine two tensors."""
        op = node.op_type
        if op == "Add":
            a, b = self._value(a), self._value(b)
            if self.shapes[a] != self.shapes[b]:
                raise AuditInputError(f"{desc}: adds tensors of shapes {self.shapes[a]} and {self.shapes[b]}; only tensors of the same shape are added (no broadcasting)")
            self._add_layer(operator.add, [a, b], node.output[0], [node.name], desc)
            return
        if op == "Mul":
            for x, gate in ((a, b), (b, a)):
                layer = self.producers.get(gate)
                if layer is not None and type(layer.target) is nn.Sigmoid and layer.inputs == [x]:
                    self._add_layer(nn.SiLU(), [x], node.output[0], [*layer.nodes, node.name], desc)
                    return
            first, second = self._as_product(a), self._as_product(b)
            if first.base == second.base and not (first.erf_only or second.erf_only) and first.has_x != second.has_x and first.has_erf != second.has_erf:
                error = f"{desc}: x * (1 + erf(x / sqrt(2))) is supported only inside GELU, {_GELU_PATTERN}"
                self._define(node, a, _Product(first.base, first.scale * second.scale, True, True, error, nodes=(*first.nodes, *second.nodes, node.name)))
                return
            raise AuditInputError(f"{desc}: multiplies two tensors; only x * sigmoid(x) (SiLU) and GELU, {_GELU_PATTERN}, are supported")
        raise AuditInputError(f"{desc}: {op} of two tensors is not supported; tensors combine only by Add (residual connections), Concat along channels, and Mul in SiLU and GELU")

    def _as_product(self, name: str) -> _Product:
        return self.products.get(name) or _Product(name, 1.0, True, False, "", nodes=())

    def _affine(self, node: onnx.NodeProto, desc: str, x: str, constant: np.ndarray, data_first: bool) -> _Affine:
        """The input normalisation so far (the identity on the input itself) followed by this node."""
        sample = self.shapes[x]
        if len(sample) != 3:
            raise AuditInputError(f"{desc}: elementwise arithmetic on the input is supported only as per-channel normalisation of images (C, H, W), got {sample}")
        vector = _per_channel(constant, sample, 0)
        if vector is None:
            raise AuditInputError(f"{desc}: its constant of shape {constant.shape} is not one value per channel")
        previous = self.affines.get(x) or _Affine(np.ones(sample[0]), np.zeros(sample[0]))
        scale, shift = previous.scale, previous.shift
        op = node.op_type
        if op == "Add":
            shift = shift + vector
        elif op == "Sub" and data_first:
            shift = shift - vector
        elif op == "Sub":
            scale, shift = -scale, vector - shift
        elif op == "Mul":
            scale, shift = scale * vector, shift * vector
        elif op == "Div" and data_first and np.all(vector != 0):
            scale, shift = scale / vector, shift / vector
        else:
            raise AuditInputError(f"{desc}: only division of the data by a non-zero constant is supported")
        return _Affine(scale, shift, (*previous.nodes, node.name))


def _resolve_reshape(target: list[int], full: list[int], allow_zero: bool) -> list[int] | None:
    """ONNX Reshape's output shape for an input of shape `full`, or None when it does not fit."""
    out = []
    for index, dim in enumerate(target):
        if dim == 0 and not allow_zero:
            if index >= len(full):
                return None
            dim = full[index]
        out.append(int(dim))
    total = math.prod(full)
    if out.count(-1) > 1:
        return None
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known <= 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if math.prod(out) == total and all(d > 0 for d in out) else None


def _per_channel(constant: np.ndarray, sample: tuple[int, ...], axis: int) -> np.ndarray | None:
    """The constant as one value per entry of `axis` of a per-sample tensor, or None when it varies otherwise."""
    try:
        full = np.broadcast_to(constant, (1, *sample))[0]
    except ValueError:
        return None
    moved = np.moveaxis(full, axis, 0).reshape(sample[axis], -1)
    if not np.all(moved == moved[:, :1]):
        return None
    return np.array(moved[:, 0], dtype=np.float32)


def _copy_weights(module: nn.Conv2d | nn.ConvTranspose2d, weight: np.ndarray, bias: np.ndarray | None, desc: str) -> None:
    if tuple(module.weight.shape) != weight.shape:
        raise AuditInputError(f"{desc}: weight of shape {weight.shape}, expected {tuple(module.weight.shape)}")
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            if bias.shape != (module.out_channels,):
                raise AuditInputError(f"{desc}: bias of shape {bias.shape}, expected ({module.out_channels},)")
            module.bias.copy_(torch.from_numpy(bias))  # type: ignore[union-attr]


def _fold_into(module: nn.Module, op: str, vector: np.ndarray) -> bool:
    """Fold `output <op> vector` (one value per output channel) into a Linear/Conv/ConvTranspose; False when it cannot be."""
    values = torch.from_numpy(np.array(vector, dtype=np.float32))
    with torch.no_grad():
        if op in ("Add", "Sub"):
            delta = -values if op == "Sub" else values
            if module.bias is None:  # type: ignore[union-attr]
                module.bias = nn.Parameter(delta.clone())  # type: ignore[assignment]
            else:
                module.bias.add_(delta)  # type: ignore[union-attr, operator]
            return True
        if isinstance(module, nn.ConvTranspose2d) and module.groups != 1:
            return False
        factor = values if op == "Mul" else 1.0 / values
        axis = 1 if isinstance(module, nn.ConvTranspose2d) else 0  # the output-channel axis of the weight
        shape = [1] * module.weight.dim()  # type: ignore[union-attr, operator]
        shape[axis] = -1
        module.weight.mul_(factor.view(shape))  # type: ignore[union-attr, operator]
        if module.bias is not None:  # type: ignore[union-attr]
            module.bias.mul_(factor)  # type: ignore[union-attr, operator]
    return True
