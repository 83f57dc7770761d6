"""Convert a chain-shaped ONNX graph into an nn.Sequential of layers the verifier can bound.

Only the `onnx` package is used (to read the protobuf, and its reference evaluator to fold
constant subgraphs and to check the result); onnx2torch is not, since it imports
torchvision. Supported data ops, each mapped to one verifier layer:

* Gemm, MatMul (data @ constant) -> nn.Linear; an Add/Sub/Mul/Div by one constant per
  output channel right after a Gemm, MatMul, Conv or ConvTranspose is folded into its
  weights and bias (the MatMul+Add pattern, a temperature on the logits);
* Conv -> nn.Conv2d, ConvTranspose -> nn.ConvTranspose2d (strides, symmetric pads,
  output_padding, dilations, groups), BatchNormalization -> nn.BatchNorm1d/2d in eval mode;
* Relu, LeakyRelu, Sigmoid, Tanh; Flatten (axis 1) -> nn.Flatten; Reshape that keeps the
  batch dimension first -> nn.Flatten or ViewAs (batch stays symbolic); Identity, Dropout
  (inference) -> nn.Identity;
* Sub/Div/Mul/Add by scalars or per-channel constants right after an image input ->
  PerChannelNormalize, when the combined scale is positive.

Nodes whose inputs are all constants, and Shape of a data tensor, are evaluated (for two
batch sizes when the batch is symbolic, so that a reshape target like
`[x.size(0), -1]` is recognised as keeping the batch). The data nodes must form a chain;
anything else raises AuditInputError naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.layers import PerChannelNormalize, UnsupportedLayerError, ViewAs, check_supported

if TYPE_CHECKING:
    import onnx

__all__ = ["SUPPORTED_ONNX_OPS", "convert_onnx", "load_onnx", "reference_outputs", "require_onnx"]

SUPPORTED_ONNX_OPS: tuple[str, ...] = (
    "Gemm",
    "MatMul",
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Add",
    "Sub",
    "Mul",
    "Div",
)
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
_SYMBOLIC_BATCHES = (2, 3)
_ONNX_FLOAT = 1


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


def convert_onnx(model: onnx.ModelProto, input_shape: tuple[int, ...], origin: str) -> nn.Sequential:
    """An eval-mode nn.Sequential computing the same function as the chain-shaped graph `model`.

    `input_shape` is the per-sample input shape (without the batch dimension).
    """
    return _Converter(model, tuple(int(d) for d in input_shape), origin).run()


@dataclass
class _Layer:
    module: nn.Module
    nodes: list[str]
    foldable_axis: int | None = None  # the channel axis of a Linear/Conv output whose bias can absorb an Add


@dataclass
class _Affine:
    scale: np.ndarray
    shift: np.ndarray
    nodes: list[str] = field(default_factory=list)


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
        self.current = self.input_name
        self.layers: list[_Layer] = []
        self.affine: _Affine | None = None
        self.uses: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for output in self.graph.output:
            self.uses[output.name] = self.uses.get(output.name, 0) + 1

    # -- graph walk ---------------------------------------------------------------------

    def run(self) -> nn.Sequential:
        for index, node in enumerate(self.graph.node):
            self._visit(node, index)
        output = self.graph.output[0].name
        if output != self.current:
            if output in self.consts:
                raise AuditInputError(f"model '{self.origin}': the ONNX graph's output '{output}' does not depend on its input")
            raise AuditInputError(
                f"model '{self.origin}': the ONNX graph's output '{output}' is not the end of the layer chain ('{self.current}'); only chain graphs are supported"
            )
        self._flush_affine()
        modules = [layer.module for layer in self.layers] or [nn.Identity()]
        return nn.Sequential(*modules).float().eval()

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
        if len(data) > 1:
            raise AuditInputError(
                f"{desc} combines the tensors {', '.join(repr(n) for n in data)} (e.g. a residual connection); only chain graphs, where each layer feeds the next, are supported"
            )
        if data[0] != self.current:
            raise AuditInputError(
                f"{desc} reads '{data[0]}', not the previous layer's output '{self.current}': the graph branches; only chain graphs, where each layer feeds the next, are supported"
            )
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None:
            raise self._unsupported(node, index, f"op type '{node.op_type}'")
        for extra in node.output[1:]:
            if extra and self.uses.get(extra, 0):
                raise AuditInputError(f"{desc}: its extra output '{extra}' is used (training-mode outputs are not supported)")
        shape = handler(node, desc, data[0])
        self.shapes[node.output[0]] = shape
        self.current = node.output[0]

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

    def _append(self, module: nn.Module, node: onnx.NodeProto, desc: str, x: str, foldable_axis: int | None = None) -> tuple[int, ...]:
        self._flush_affine()
        module = module.float().eval()
        try:
            check_supported(module)
        except UnsupportedLayerError as error:
            raise AuditInputError(f"{desc}: converts to a layer the verifier cannot bound: {error}") from None
        with torch.no_grad():
            try:
                out = module(torch.zeros(1, *self.shapes[x]))
            except RuntimeError as error:
                raise AuditInputError(f"{desc}: does not fit its input of shape {self.shapes[x]} ({error})") from None
        self.layers.append(_Layer(module, [node.name], foldable_axis))
        return tuple(out.shape[1:])

    def _op_Relu(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        return self._append(nn.ReLU(), node, desc, x)

    def _op_LeakyRelu(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        return self._append(nn.LeakyReLU(float(self._attributes(node).get("alpha", 0.01))), node, desc, x)

    def _op_Sigmoid(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        return self._append(nn.Sigmoid(), node, desc, x)

    def _op_Tanh(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        return self._append(nn.Tanh(), node, desc, x)

    def _op_Identity(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        return self._append(nn.Identity(), node, desc, x)

    def _op_Dropout(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts or bool(np.any(self._static(node.input[2], desc))):
                raise AuditInputError(f"{desc}: training mode is not supported")
        if int(self._attributes(node).get("is_test", 1)) == 0 and self.opset < 7:
            raise AuditInputError(f"{desc}: training mode is not supported")
        return self._append(nn.Identity(), node, desc, x)

    def _op_Flatten(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        rank = len(self.shapes[x]) + 1
        axis = int(self._attributes(node).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis != 1:
            raise AuditInputError(f"{desc}: Flatten with axis {axis} mixes the batch dimension with features; only axis 1 is supported")
        return self._append(nn.Flatten(), node, desc, x)

    def _op_Reshape(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
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
        rest = rests.pop()
        if rest == sample:
            module: nn.Module = nn.Identity()
        elif len(rest) == 1:
            module = nn.Flatten()
        else:
            module = ViewAs(rest)
        return self._append(module, node, desc, x)

    def _op_Gemm(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
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
        return self._append(linear, node, desc, x, foldable_axis=-1)

    def _op_MatMul(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        if node.input[0] != x:
            raise AuditInputError(f"{desc}: only MatMul(data, constant) is supported (the data must be the first operand)")
        weight = self._weight(node, 1, desc, 2)
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        return self._append(linear, node, desc, x, foldable_axis=-1)

    def _conv_geometry(self, node: onnx.NodeProto, desc: str, kernel: tuple[int, int], spatial: tuple[int, ...], transposed: bool) -> dict[str, Any]:
        attributes = self._attributes(node)
        strides = list(attributes.get("strides", [1, 1]))
        dilations = list(attributes.get("dilations", [1, 1]))
        pads = list(attributes.get("pads", [0, 0, 0, 0]))
        auto_pad = attributes.get("auto_pad", "NOTSET")
        if list(attributes.get("kernel_shape", kernel)) != list(kernel):
            raise AuditInputError(f"{desc}: kernel_shape {attributes['kernel_shape']} differs from its weight's {list(kernel)}")
        if auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER") and not transposed and len(spatial) == 2:
            pads = [0, 0, 0, 0]
            for axis in range(2):
                out = math.ceil(spatial[axis] / strides[axis])
                total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - spatial[axis])
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                pads[axis], pads[axis + 2] = begin, total - begin
        elif auto_pad != "NOTSET":
            raise AuditInputError(f"{desc}: auto_pad={auto_pad} is not supported here; export with explicit pads")
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
            raise AuditInputError(f"{desc}: only 2-D convolutions are supported")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise AuditInputError(f"{desc}: asymmetric padding {pads} (top, left, bottom, right) is not supported")
        return {"stride": tuple(strides), "padding": (pads[0], pads[1]), "dilation": tuple(dilations), "groups": int(attributes.get("group", 1)), "attributes": attributes}

    def _op_Conv(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
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
        return self._append(conv, node, desc, x, foldable_axis=0)

    def _op_ConvTranspose(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
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
        return shape

    def _op_BatchNormalization(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
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
        return self._append(norm, node, desc, x)

    # -- elementwise arithmetic with constants ---------------------------------------------

    def _arithmetic(self, node: onnx.NodeProto, desc: str, x: str) -> tuple[int, ...]:
        op = node.op_type
        data_first = node.input[0] == x
        constant = self._static(node.input[1] if data_first else node.input[0], desc).astype(np.float64)
        sample = self.shapes[x]
        if not self.layers:  # right after the input, or after other arithmetic on it
            return self._accumulate_affine(node, desc, x, constant, data_first)
        last = self.layers[-1] if self.layers else None
        if last is not None and last.foldable_axis is not None and (data_first or op in ("Add", "Mul")):
            vector = _per_channel(constant, sample, last.foldable_axis % len(sample))
            if vector is not None and (op in ("Add", "Sub") or np.all(vector != 0)) and _fold_into(last.module, op, vector):
                last.nodes.append(node.name)
                return sample
        raise AuditInputError(
            f"{desc}: elementwise {op} with a constant is supported only right after Gemm/MatMul/Conv/ConvTranspose "
            "(one value per output channel, folded into its weights and bias), or as a per-channel normalisation right after an image input"
        )

    _op_Add = _op_Sub = _op_Mul = _op_Div = _arithmetic

    def _accumulate_affine(self, node: onnx.NodeProto, desc: str, x: str, constant: np.ndarray, data_first: bool) -> tuple[int, ...]:
        sample = self.shapes[x]
        if len(sample) != 3:
            raise AuditInputError(f"{desc}: elementwise arithmetic on the input is supported only as per-channel normalisation of images (C, H, W), got {sample}")
        vector = _per_channel(constant, sample, 0)
        if vector is None:
            raise AuditInputError(f"{desc}: its constant of shape {constant.shape} is not one value per channel")
        affine = self.affine or _Affine(np.ones(sample[0]), np.zeros(sample[0]))
        op = node.op_type
        if op == "Add":
            affine.shift = affine.shift + vector
        elif op == "Sub" and data_first:
            affine.shift = affine.shift - vector
        elif op == "Sub":
            affine.scale, affine.shift = -affine.scale, vector - affine.shift
        elif op == "Mul":
            affine.scale, affine.shift = affine.scale * vector, affine.shift * vector
        elif op == "Div" and data_first and np.all(vector != 0):
            affine.scale, affine.shift = affine.scale / vector, affine.shift / vector
        else:
            raise AuditInputError(f"{desc}: only division of the data by a non-zero constant is supported")
        affine.nodes.append(node.name)
        self.affine = affine
        return sample

    def _flush_affine(self) -> None:
        affine, self.affine = self.affine, None
        if affine is None:
            return
        if not np.all(affine.scale > 0) or not np.all(np.isfinite(affine.scale)):
            raise AuditInputError(
                f"model '{self.origin}': ONNX nodes {affine.nodes} scale the input by {affine.scale.tolist()}; "
                "only per-channel normalisation with a positive scale ((x - mean) / std, std > 0) is supported"
            )
        module = PerChannelNormalize((-affine.shift / affine.scale).tolist(), (1.0 / affine.scale).tolist())
        self.layers.append(_Layer(module, affine.nodes))


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
