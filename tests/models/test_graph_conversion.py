"""ONNX graphs with pooling, resampling, residual additions, concatenation and smooth activations convert to verifier layers.

The conversion tests compare `convert_onnx`'s module with the original torch module and with
onnx's reference evaluator; the `test_end_to_end_*` tests load through `load_model`, which also
needs the bound engine to accept the layers (auditai_ops.layers.check_supported).
"""

from __future__ import annotations

import importlib.util
import operator
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.layers import PerChannelNormalize, ViewAs, check_supported
from auditai_ops.models import load_model_detailed, parse_model_reference
from auditai_ops.models.onnx_convert import convert_onnx, load_onnx, reference_outputs
from auditai_ops.models.torchscript import NotRebuildable, rebuild_script_module
from tests.models.zoo import lenet, small_resnet

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed (pip install auditai-ops[onnx])"),
    pytest.mark.usefixtures("one_torch_thread"),
]

IMAGE = (1, 28, 28)
SMALL = (2, 6, 6)
CONTRACT_LEAVES = (
    nn.Linear,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Flatten,
    nn.Identity,
    PerChannelNormalize,
    ViewAs,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Upsample,
    nn.ELU,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
)


def export(module: nn.Module, shape: tuple[int, ...], path: Path, opset: int | None = None) -> Path:
    """torch's TorchScript-based exporter (dynamo=False), with a symbolic batch."""
    options = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.rand(2, *shape),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            **options,  # type: ignore[arg-type]
        )
    return path


def script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module.eval()).save(str(path))
    return path


def leaves(module: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in module.modules() if not list(m.children())]


def assert_contract(module: nn.Module) -> None:
    """Only the layers and graph nodes agreed with the bound engine: an nn.Sequential of leaves, or a GraphModule of one input and output."""
    assert not module.training
    if isinstance(module, nn.Sequential):
        assert all(type(m) in CONTRACT_LEAVES for m in module)
        return
    assert isinstance(module, torch.fx.GraphModule)
    nodes = list(module.graph.nodes)
    assert [n.op for n in nodes].count("placeholder") == 1 and nodes[0].op == "placeholder"
    assert nodes[-1].op == "output" and isinstance(nodes[-1].args[0], torch.fx.Node)
    for node in nodes[1:-1]:
        if node.op == "call_module":
            assert type(module.get_submodule(str(node.target))) in CONTRACT_LEAVES
        else:
            assert node.op == "call_function", node.format_node()
            if node.target is operator.add:
                assert len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args) and not node.kwargs
            else:
                assert node.target is torch.cat and node.kwargs == {"dim": 1} and isinstance(node.args[0], list | tuple)


def convert(path: Path, shape: tuple[int, ...]) -> nn.Module:
    module = convert_onnx(load_onnx(path), shape, str(path))
    assert_contract(module)
    return module


def assert_matches(converted: nn.Module, original: nn.Module | None, path: Path, shape: tuple[int, ...], atol: float = 1e-5) -> None:
    """Same outputs as the torch original (when given) and as onnx's reference evaluator, on random inputs."""
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        got = converted(x)
        if original is not None:
            torch.testing.assert_close(got, original(x), atol=atol, rtol=0)
    expected = torch.from_numpy(reference_outputs(load_onnx(path), x.numpy()))
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


class _MeanPool(nn.Module):
    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3), keepdim=self.keepdim)


def _after_conv(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), *layers).eval()


# -- the two user-shaped models -------------------------------------------------------------


def test_lenet_with_max_pooling_converts_from_onnx_to_a_sequential(tmp_path: Path) -> None:
    net = lenet(seed=1)
    path = export(net, IMAGE, tmp_path / "lenet.onnx")
    module = convert(path, IMAGE)
    assert type(module) is nn.Sequential
    assert leaves(module) == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert_matches(module, net, path, IMAGE)


def test_lenet_layers_are_rebuilt_from_torchscript(tmp_path: Path) -> None:
    """Scripted as a tree of Sequentials, the LeNet is rebuilt layer by layer; its custom-forward class is not (it goes through ONNX)."""
    net = lenet(seed=2)
    chain = nn.Sequential(net.features, nn.Flatten(), net.classifier).eval()
    rebuilt = rebuild_script_module(torch.jit.load(str(script(chain, tmp_path / "lenet.pt"))))
    assert leaves(rebuilt) == leaves(chain)
    x = torch.randn(4, *IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), atol=0, rtol=0)


def test_resnet_with_residuals_concat_and_global_pooling_converts_to_a_graph_module(tmp_path: Path) -> None:
    net = small_resnet(seed=3, in_channels=3)
    shape = (3, 16, 16)
    path = export(net, shape, tmp_path / "resnet.onnx")
    module = convert(path, shape)
    assert isinstance(module, torch.fx.GraphModule)
    functions = [n.target for n in module.graph.nodes if n.op == "call_function"]
    assert functions.count(operator.add) == 2 and functions.count(torch.cat) == 1
    assert {nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Conv2d, nn.Linear} <= set(leaves(module))
    assert_matches(module, net, path, shape)
    uses = {n.name: len(n.users) for n in module.graph.nodes}
    assert max(uses.values()) == 2, "a tensor read by two branches"


@pytest.mark.parametrize(
    "layer",
    [
        nn.MaxPool2d((3, 2), stride=(2, 1), padding=1, ceil_mode=True),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.AvgPool2d(2, divisor_override=3),
        nn.AdaptiveAvgPool2d((2, 3)),
        nn.Upsample(scale_factor=(2, 3)),
        nn.Upsample(size=(9, 9), mode="bilinear", align_corners=True),
        nn.ELU(0.3),
        nn.Softplus(beta=2, threshold=10),
        nn.GELU(approximate="tanh"),
        nn.SiLU(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_new_torchscript_leaves_are_rebuilt_with_their_settings(tmp_path: Path, layer: nn.Module) -> None:
    net = _after_conv(layer)
    rebuilt = rebuild_script_module(torch.jit.load(str(script(net, tmp_path / "net.pt"))))
    assert type(rebuilt[1]) is type(layer) and repr(rebuilt[1]) == repr(layer)
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), atol=0, rtol=0)


@pytest.mark.parametrize("layer", [nn.ELU(inplace=True), nn.SiLU(inplace=True)], ids=lambda layer: type(layer).__name__)
def test_in_place_activations_are_not_rebuilt(tmp_path: Path, layer: nn.Module) -> None:
    """Rebuilt layers never write into their input; an in-place layer's graph differs, so it goes through ONNX."""
    with pytest.raises(NotRebuildable, match="differs from torch's code"):
        rebuild_script_module(torch.jit.load(str(script(_after_conv(layer), tmp_path / "net.pt"))))


# -- every new op ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ((nn.MaxPool2d(2),), nn.MaxPool2d),
        ((nn.MaxPool2d(3, stride=2, padding=1),), nn.MaxPool2d),
        ((nn.MaxPool2d(2, ceil_mode=True),), nn.MaxPool2d),  # ceil_mode changes nothing on 6 x 6: mapped to floor
        ((nn.AvgPool2d(2),), nn.AvgPool2d),
        ((nn.AvgPool2d(3, stride=1, padding=1),), nn.AvgPool2d),  # count_include_pad=True
        ((nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),), nn.AvgPool2d),
        ((nn.AdaptiveAvgPool2d(1),), nn.AdaptiveAvgPool2d),
        ((nn.Upsample(scale_factor=2),), nn.Upsample),
        ((nn.Upsample(scale_factor=(2, 3)),), nn.Upsample),
        ((nn.Upsample(scale_factor=2, mode="bilinear"),), nn.Upsample),
        ((nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),), nn.Upsample),
        ((nn.Upsample(size=(9, 10), mode="bilinear"),), nn.Upsample),
        ((nn.Upsample(size=(12, 18), mode="nearest"),), nn.Upsample),
        ((nn.ELU(0.5),), nn.ELU),
        ((nn.Softplus(),), nn.Softplus),
        ((nn.GELU(),), nn.GELU),
        ((nn.GELU(approximate="tanh"),), nn.GELU),
        ((nn.SiLU(),), nn.SiLU),
        ((nn.Dropout(0.5), nn.Tanh()), nn.Tanh),
    ],
)
def test_each_new_op_converts_with_matching_outputs(tmp_path: Path, layers: tuple[nn.Module, ...], expected: type[nn.Module]) -> None:
    net = _after_conv(*layers)
    path = export(net, SMALL, tmp_path / "op.onnx")
    module = convert(path, SMALL)
    assert type(module) is nn.Sequential
    assert expected in leaves(module)
    assert_matches(module, net, path, SMALL)


@pytest.mark.parametrize("opset", [13, 17])
def test_gelu_and_silu_patterns_of_older_opsets_become_single_layers(tmp_path: Path, opset: int) -> None:
    """Below opset 20 torch writes GELU as x * 0.5 * (1 + Erf(x / sqrt 2)), and SiLU as x * Sigmoid(x)."""
    net = _after_conv(nn.GELU(), nn.Conv2d(3, 3, 1), nn.SiLU(), nn.Flatten(), nn.Linear(3 * 36, 4), nn.GELU())
    path = export(net, SMALL, tmp_path / "gelu.onnx", opset=opset)
    assert {"Erf", "Sigmoid"} <= {node.op_type for node in load_onnx(path).graph.node}
    module = convert(path, SMALL)
    assert leaves(module) == [nn.Conv2d, nn.GELU, nn.Conv2d, nn.SiLU, nn.Flatten, nn.Linear, nn.GELU]
    assert_matches(module, net, path, SMALL)


_GELU_FORMS = {
    "torch": [("Div", ["h", "sqrt2"], "a"), ("Erf", ["a"], "b"), ("Add", ["b", "one"], "c"), ("Mul", ["h", "c"], "d"), ("Mul", ["d", "half"], "y")],
    "half_first": [("Mul", ["h", "half"], "hh"), ("Mul", ["inverse_sqrt2", "h"], "a"), ("Erf", ["a"], "b"), ("Add", ["one", "b"], "c"), ("Mul", ["c", "hh"], "y")],
    "half_of_erf": [("Div", ["h", "sqrt2"], "a"), ("Erf", ["a"], "b"), ("Add", ["b", "one"], "c"), ("Div", ["c", "two"], "c2"), ("Mul", ["h", "c2"], "y")],
    "wrong_scale": [("Div", ["h", "two"], "a"), ("Erf", ["a"], "b"), ("Add", ["b", "one"], "c"), ("Mul", ["h", "c"], "d"), ("Mul", ["d", "half"], "y")],
    "no_half": [("Div", ["h", "sqrt2"], "a"), ("Erf", ["a"], "b"), ("Add", ["b", "one"], "c"), ("Mul", ["h", "c"], "y")],
    "scaled_input_reused": [
        ("Div", ["h", "sqrt2"], "a"),
        ("Erf", ["a"], "b"),
        ("Add", ["b", "one"], "c"),
        ("Mul", ["h", "c"], "d"),
        ("Mul", ["d", "half"], "e"),
        ("Add", ["e", "a"], "y"),  # x / sqrt(2) is read outside the pattern
    ],
}


@pytest.mark.parametrize(
    ("form", "refusal"),
    [
        ("torch", None),
        ("half_first", None),
        ("half_of_erf", None),
        ("wrong_scale", r"'Erf_1' \(Erf\): Erf is supported only inside GELU"),
        ("no_half", r"'Mul_3' \(Mul\): x \* \(1 \+ erf\(x / sqrt\(2\)\)\) is supported only inside GELU"),
        ("scaled_input_reused", r"'Div_0' \(Div\): elementwise Div with a constant is supported only"),
    ],
)
def test_erf_forms_of_gelu_are_recognised_and_others_refused(tmp_path: Path, form: str, refusal: str | None) -> None:
    from onnx import helper, numpy_helper

    constants = {"sqrt2": np.sqrt(2.0), "inverse_sqrt2": 1 / np.sqrt(2.0), "one": 1.0, "half": 0.5, "two": 2.0}
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu")]
    nodes += [helper.make_node(op, inputs, [output], name=f"{op}_{index}") for index, (op, inputs, output) in enumerate(_GELU_FORMS[form])]
    initializers = [numpy_helper.from_array(np.array(value, dtype=np.float32), name) for name, value in constants.items()]
    path = _graph(tmp_path / f"{form}.onnx", nodes, (5,), ["N", 5], initializers)
    if refusal is not None:
        with pytest.raises(AuditInputError, match=refusal):
            convert_onnx(load_onnx(path), (5,), str(path))
        return
    module = convert(path, (5,))
    assert leaves(module) == [nn.ReLU, nn.GELU]
    assert_matches(module, nn.Sequential(nn.ReLU(), nn.GELU()), path, (5,))


@pytest.mark.parametrize("keepdim", [True, False])
def test_mean_over_height_and_width_is_global_average_pooling(tmp_path: Path, keepdim: bool) -> None:
    torch.manual_seed(6)
    net = _MeanPool(keepdim).eval()
    path = export(net, SMALL, tmp_path / "mean.onnx")
    module = convert(path, SMALL)
    assert leaves(module) == [nn.Conv2d, nn.AdaptiveAvgPool2d] + ([] if keepdim else [nn.Flatten])
    assert_matches(module, net, path, SMALL)


def test_squeeze_and_unsqueeze_of_per_sample_axes_are_reshapes(tmp_path: Path) -> None:
    class Squeezed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)
            return self.fc(pooled.squeeze(3).squeeze(2)).unsqueeze(1)

    torch.manual_seed(9)
    net = Squeezed().eval()
    path = export(net, SMALL, tmp_path / "squeezed.onnx")
    assert {"Squeeze", "Unsqueeze"} <= {node.op_type for node in load_onnx(path).graph.node}
    module = convert(path, SMALL)
    assert leaves(module) == [nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, ViewAs, nn.Flatten, nn.Linear, ViewAs]
    assert_matches(module, net, path, SMALL)


def _graph(path: Path, nodes: list[object], shape: tuple[int, ...], out_shape: list[object], initializers: list[object] | None = None, opset: int = 17) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,  # type: ignore[arg-type]
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializers or [],  # type: ignore[arg-type]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_ops_torch_does_not_write_convert_as_onnx_defines_them(tmp_path: Path) -> None:
    """AveragePool's default count_include_pad=0, Resize by sizes, the old Upsample op, Gelu, Elu, Softplus, Identity."""
    from onnx import helper, numpy_helper

    shape = (2, 4, 4)
    cases = {
        "avg": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])], [], 17),
        "avg_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], [], 17),
        "resize_sizes_of_axes": (
            [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", axes=[2, 3])],
            [numpy_helper.from_array(np.array([8, 12], dtype=np.int64), "sizes")],
            18,
        ),
        "resize_half_pixel_linear": (
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
            [numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")],
            17,
        ),
        "upsample": (
            [helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")],
            [numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")],
            9,
        ),
        "gelu_elu_softplus_identity": (
            [
                helper.make_node("Gelu", ["x"], ["a"]),
                helper.make_node("Elu", ["a"], ["b"]),
                helper.make_node("Softplus", ["b"], ["c"]),
                helper.make_node("Identity", ["c"], ["y"]),
            ],
            [],
            20,
        ),
    }
    for name, (nodes, initializers, opset) in cases.items():
        path = _graph(tmp_path / f"{name}.onnx", nodes, shape, ["N", 2, "H", "W"], initializers, opset)
        module = convert(path, shape)
        assert_matches(module, None, path, shape)


def test_tensor_read_by_two_branches_and_concatenated(tmp_path: Path) -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(2, 4, 3, padding=1)
            self.left = nn.Conv2d(4, 2, 1)
            self.right = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(4, 3, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.stem(x))
            return torch.cat([self.left(hidden), self.right(hidden), hidden], dim=1) + torch.cat([hidden, self.left(hidden), self.right(hidden)], dim=1)

    torch.manual_seed(7)
    net = Branches().eval()
    path = export(net, SMALL, tmp_path / "branches.onnx")
    module = convert(path, SMALL)
    assert isinstance(module, torch.fx.GraphModule)
    assert_matches(module, net, path, SMALL)


def test_normalised_input_feeds_a_residual_block(tmp_path: Path) -> None:
    """The per-channel normalisation of the input, and a bias folded into a Linear, work inside graphs too."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 36, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - 0.5) / 0.25
            return self.fc(torch.flatten(torch.relu(self.conv(x)) + x, 1)) * 2.0

    torch.manual_seed(8)
    net = Net().eval()
    path = export(net, SMALL, tmp_path / "normalised.onnx")
    module = convert(path, SMALL)
    assert isinstance(module, torch.fx.GraphModule)
    assert PerChannelNormalize in leaves(module)
    assert_matches(module, net, path, SMALL)


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("avg_ceil", r"'pool' \(AveragePool\): ceil_mode=1 adds partial windows"),
        ("avg_dilated", r"'pool' \(AveragePool\): dilations \[2, 2\] are not supported"),
        ("max_asymmetric", r"'pool' \(MaxPool\): asymmetric padding"),
        ("resize_cubic", r"'resize' \(Resize\): mode 'cubic' is not supported"),
        ("resize_nearest_align_corners", r"'resize' \(Resize\): nearest resizing .* coordinate_transformation_mode='align_corners'"),
        ("resize_linear_asymmetric", r"'resize' \(Resize\): linear resizing with coordinate_transformation_mode='asymmetric'"),
        ("resize_nearest_fraction", r"'resize' \(Resize\): nearest resizing from \(4, 4\) to \(6, 6\)"),
        ("resize_fixed_batch", r"'resize' \(Resize\): sizes \[1, 2, 8, 8\] do not keep the batch"),
        ("concat_height", r"'join' \(Concat\): concatenates along axis 2"),
        ("sub_tensors", r"'minus' \(Sub\): Sub of two tensors is not supported"),
        ("mul_tensors", r"'times' \(Mul\): multiplies two tensors"),
        ("erf_alone", r"'erf' \(Erf\): Erf is supported only inside GELU"),
        ("add_broadcast", r"'plus' \(Add\): adds tensors of shapes \(2, 4, 4\) and \(2, 1, 1\)"),
        ("scaled_relu", r"'scale' \(Mul\): elementwise Mul with a constant is supported only right after"),
        ("squeeze_batch", r"'squeeze' \(Squeeze\): only squeezing or unsqueezing given per-sample axes"),
    ],
)
def test_unsupported_forms_are_refused_naming_the_node(tmp_path: Path, case: str, message: str) -> None:
    from onnx import helper, numpy_helper

    def const(name: str, values: list[float], dtype: type = np.float32) -> object:
        return numpy_helper.from_array(np.array(values, dtype=dtype), name)

    scales = [const("scales", [1, 1, 2, 2])]
    cases: dict[str, tuple[list[object], list[object]]] = {
        "avg_ceil": ([helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], []),
        "avg_dilated": ([helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2])], []),
        "max_asymmetric": ([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], pads=[0, 0, 1, 1])], []),
        "resize_cubic": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="cubic")], scales),
        "resize_nearest_align_corners": (
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="nearest", coordinate_transformation_mode="align_corners")],
            scales,
        ),
        "resize_linear_asymmetric": (
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="linear", coordinate_transformation_mode="asymmetric")],
            scales,
        ),
        "resize_nearest_fraction": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="nearest")], [const("scales", [1, 1, 1.5, 1.5])]),
        "resize_fixed_batch": (
            [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="resize", mode="nearest")],
            [const("sizes", [1, 2, 8, 8], np.int64)],
        ),
        "concat_height": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["x", "r"], ["y"], name="join", axis=2)], []),
        "sub_tensors": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["x", "r"], ["y"], name="minus")], []),
        "mul_tensors": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["x", "r"], ["y"], name="times")], []),
        "erf_alone": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["r"], ["y"], name="erf")], []),
        "add_broadcast": (
            [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "p"], ["y"], name="plus")],
            [],
        ),
        "squeeze_batch": ([helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")], [const("axes", [0], np.int64)]),
        "scaled_relu": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"], name="scale")], [const("two", [2.0])]),
    }
    nodes, initializers = cases[case]
    path = _graph(tmp_path / f"{case}.onnx", nodes, (2, 4, 4), ["N", "C", "H", "W"], initializers, opset=19)
    with pytest.raises(AuditInputError, match=message):
        convert_onnx(load_onnx(path), (2, 4, 4), str(path))


# -- end to end through load_model (needs the bound engine to accept the layers) ------------------


def test_end_to_end_lenet_loads_from_torchscript_and_onnx(tmp_path: Path) -> None:
    net = lenet(seed=4)
    from_script = load_model_detailed(parse_model_reference(str(script(net, tmp_path / "lenet.pt"))), input_shape=IMAGE)
    from_onnx = load_model_detailed(parse_model_reference(str(export(net, IMAGE, tmp_path / "lenet.onnx"))), input_shape=IMAGE)
    assert from_script.route == "torchscript: exported to ONNX and converted to verifier layers"
    assert from_onnx.route == "onnx: converted to verifier layers"
    x = torch.randn(5, *IMAGE)
    with torch.no_grad():
        for loaded in (from_script, from_onnx):
            assert type(loaded.module) is nn.Sequential
            check_supported(loaded.module)
            torch.testing.assert_close(loaded.module(x), net(x), atol=1e-5, rtol=0)
    assert from_script.weights_sha256 == from_onnx.weights_sha256
    chain = nn.Sequential(net.features, nn.Flatten(), net.classifier)
    rebuilt = load_model_detailed(parse_model_reference(str(script(chain, tmp_path / "chain.pt"))), input_shape=IMAGE)
    assert rebuilt.route == "torchscript: rebuilt from torch layers (same TorchScript graph)"


def test_end_to_end_resnet_loads_as_the_same_graph_from_torchscript_and_onnx(tmp_path: Path) -> None:
    net = small_resnet(seed=5)
    from_script = load_model_detailed(parse_model_reference(str(script(net, tmp_path / "resnet.pt"))), input_shape=IMAGE)
    from_onnx = load_model_detailed(parse_model_reference(str(export(net, IMAGE, tmp_path / "resnet.onnx"))), input_shape=IMAGE)
    x = torch.randn(5, *IMAGE)
    with torch.no_grad():
        for loaded in (from_script, from_onnx):
            assert isinstance(loaded.module, torch.fx.GraphModule)
            check_supported(loaded.module)
            torch.testing.assert_close(loaded.module(x), net(x), atol=1e-5, rtol=0)
    assert from_script.weights_sha256 == from_onnx.weights_sha256
    assert from_script.module.code == from_onnx.module.code


def test_end_to_end_graph_module_survives_a_save_and_load_round_trip(tmp_path: Path) -> None:
    """The converted GraphModule is an ordinary module: its state dict and TorchScript export round-trip."""
    net = small_resnet(seed=6)
    loaded = load_model_detailed(parse_model_reference(str(export(net, IMAGE, tmp_path / "resnet.onnx"))), input_shape=IMAGE).module
    again = load_model_detailed(parse_model_reference(str(script(loaded, tmp_path / "again.pt"))), input_shape=IMAGE).module
    x = torch.randn(3, *IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), atol=1e-5, rtol=0)
