"""Bring-your-own-model loading: every format gives a boundable module that computes what the original computes."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_state_dict
from auditai_ops.layers import PerChannelNormalize, ViewAs, check_supported
from auditai_ops.models import (
    ModelMismatchError,
    ModelSource,
    PickleLoadWarning,
    load_model,
    load_model_detailed,
    parse_model_reference,
    weights_sha256,
)
from auditai_ops.verify.lirpa_compat import build_bounded_module, compute_margin_lower_bounds

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed (pip install auditai-ops[onnx])")
IMAGE = (1, 28, 28)
LATENT = (4,)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()


def make_decoder(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 4 * 4 * 4),
        nn.ReLU(),
        ViewAs((4, 4, 4)),
        nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(2, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
    ).eval()


class FunctionalNet(nn.Module):
    """Not made of supported layer types: its forward uses functional calls and x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv(x))
        return self.fc(hidden.view(hidden.size(0), -1))


def export_onnx(module: nn.Module, shape: tuple[int, ...], path: Path, dynamic: bool = True) -> Path:
    """torch 2.13's TorchScript-based exporter (dynamo=False) writes the test graphs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.rand(2 if dynamic else 1, *shape),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
        )
    return path


def save_script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(path))
    return path


def load(reference: Path | str, shape: tuple[int, ...] = IMAGE, **options: object) -> nn.Module:
    return load_model(parse_model_reference(str(reference)), input_shape=shape, **options)  # type: ignore[arg-type]


def assert_same(a: nn.Module, b: nn.Module, shape: tuple[int, ...], atol: float = 1e-5) -> None:
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=atol, rtol=0)


def assert_crown_sound(model: nn.Module, shape: tuple[int, ...], eps: float = 0.02) -> None:
    """CROWN bounds of every output over a small box contain the outputs at sampled points of the box."""
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, *shape, generator=generator)
    model = nn.Sequential(model, nn.Flatten()).eval()  # auto_LiRPA's specification matrix needs flat outputs
    bounded = build_bounded_module(model, (x0,))
    n_out = model(x0).shape[1]
    picked = torch.linspace(0, n_out - 1, min(n_out, 10)).long()  # a few outputs keep CROWN fast
    rows = torch.eye(n_out)[picked]
    C = torch.cat([rows, -rows]).unsqueeze(0).expand(2, -1, -1).contiguous()
    lower_x, upper_x = x0 - eps, x0 + eps
    bounds = compute_margin_lower_bounds(bounded, (x0,), lower_x, upper_x, C, "CROWN")
    lower, upper = bounds[:, : len(picked)], -bounds[:, len(picked) :]
    assert bool((lower <= upper).all())
    samples = lower_x + (upper_x - lower_x) * torch.rand(64, 2, *shape, generator=generator)
    with torch.no_grad():
        outputs = torch.stack([model(s)[:, picked] for s in samples])
    assert bool((outputs >= lower - 1e-5).all()) and bool((outputs <= upper + 1e-5).all())


# -- TorchScript ------------------------------------------------------------------------------


def test_torchscript_cnn_is_rebuilt_from_torch_layers_and_bounds_are_sound(tmp_path: Path) -> None:
    cnn = make_cnn()
    loaded = load_model_detailed(parse_model_reference(str(save_script(cnn, tmp_path / "cnn.pt"))), input_shape=IMAGE)
    assert loaded.route.startswith("torchscript: rebuilt")
    assert type(loaded.module) is nn.Sequential and not loaded.module.training
    check_supported(loaded.module)
    assert_same(loaded.module, cnn, IMAGE, atol=0)
    # the same layers and names as the original, hence the same weights hash
    assert loaded.weights_sha256 == sha256_state_dict(cnn.state_dict()) == weights_sha256(loaded.module)
    assert_crown_sound(loaded.module, IMAGE)


@needs_onnx
def test_traced_torchscript_module_is_converted_through_onnx(tmp_path: Path) -> None:
    net = FunctionalNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.rand(2, *IMAGE)).save(str(tmp_path / "traced.pt"))
    loaded = load_model_detailed(parse_model_reference(str(tmp_path / "traced.pt")), input_shape=IMAGE)
    assert loaded.route == "torchscript: exported to ONNX and converted to verifier layers"
    assert [type(m) for m in loaded.module] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert_same(loaded.module, net, IMAGE)


@needs_onnx
def test_scripted_custom_class_named_like_a_layer_is_not_trusted_by_name(tmp_path: Path) -> None:
    class Linear(nn.Linear):  # same original_name as nn.Linear, another forward
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.weight, self.bias) + 1.0

    torch.manual_seed(0)
    impostor = nn.Sequential(Linear(4, 3), nn.ReLU()).eval()
    loaded = load_model_detailed(parse_model_reference(str(save_script(impostor, tmp_path / "impostor.ts"))), input_shape=LATENT)
    assert loaded.route == "torchscript: exported to ONNX and converted to verifier layers"
    assert_same(loaded.module, impostor, LATENT)


@needs_onnx
def test_torchscript_decoder_with_unflatten(tmp_path: Path) -> None:
    torch.manual_seed(1)
    decoder = nn.Sequential(nn.Linear(4, 8 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (8, 7, 7)), nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Sigmoid()).eval()
    module = load(save_script(decoder, tmp_path / "decoder.torchscript"), LATENT)
    assert any(isinstance(m, ViewAs) for m in module)
    assert_same(module, decoder, LATENT)


# -- ONNX ---------------------------------------------------------------------------------------


@needs_onnx
def test_onnx_cnn_converts_bounds_soundly_and_matches_the_torchscript_load(tmp_path: Path) -> None:
    cnn = make_cnn()
    from_onnx = load_model_detailed(parse_model_reference(str(export_onnx(cnn, IMAGE, tmp_path / "cnn.onnx"))), input_shape=IMAGE)
    assert from_onnx.route == "onnx: converted to verifier layers"
    assert [type(m) for m in from_onnx.module] == [type(m) for m in cnn]
    check_supported(from_onnx.module)
    assert_same(from_onnx.module, cnn, IMAGE)
    assert_crown_sound(from_onnx.module, IMAGE)
    from_script = load(save_script(cnn, tmp_path / "cnn.pt"))
    assert_same(from_onnx.module, from_script, IMAGE, atol=0)
    assert from_onnx.weights_sha256 == weights_sha256(from_script)


@needs_onnx
def test_onnx_exported_with_a_fixed_batch_size_converts(tmp_path: Path) -> None:
    net = FunctionalNet().eval()
    module = load(export_onnx(net, IMAGE, tmp_path / "fixed.onnx", dynamic=False))
    assert_same(module, net, IMAGE)
    with torch.no_grad():
        assert module(torch.rand(7, *IMAGE)).shape == (7, 10)


@needs_onnx
def test_onnx_decoder_with_padded_conv_transpose_and_sigmoid(tmp_path: Path) -> None:
    decoder = make_decoder()
    module = load(export_onnx(decoder, LATENT, tmp_path / "decoder.onnx"), LATENT)
    assert [type(m) for m in module] == [type(m) for m in decoder]
    assert module[3].padding == (1, 1)
    assert_same(module, decoder, LATENT)
    assert_crown_sound(module, LATENT)


@needs_onnx
def test_onnx_normalisation_batch_norm_and_output_padding(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(
        PerChannelNormalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.BatchNorm2d(4),  # after the activation, so that the exporter cannot fold it into the convolution
        nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 16 * 16, 5, bias=False),
        nn.Dropout(0.3),
    )
    with torch.no_grad():
        net[3].running_mean.uniform_(-1, 1)
        net[3].running_var.uniform_(0.5, 2)
    net.eval()
    shape = (3, 8, 8)
    module = load(export_onnx(net, shape, tmp_path / "normalised.onnx"), shape)
    assert isinstance(module[0], PerChannelNormalize)
    assert any(isinstance(m, nn.BatchNorm2d) for m in module)
    assert_same(module, net, shape)


@needs_onnx
def test_per_channel_scale_and_shift_after_a_layer_fold_into_it(tmp_path: Path) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, bias=False)
            self.fc = nn.Linear(3 * 8 * 8, 5)
            self.register_buffer("gain", torch.tensor([0.5, -2.0, 3.0]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.tanh(self.conv(x) * self.gain - 0.25)
            return self.fc(hidden.flatten(1)) / 1.5  # a temperature on the logits

    torch.manual_seed(4)
    net = Scaled().eval()
    shape = (2, 4, 4)
    loaded = load_model_detailed(parse_model_reference(str(export_onnx(net, shape, tmp_path / "scaled.onnx"))), input_shape=shape)
    assert [type(m) for m in loaded.module] == [nn.ConvTranspose2d, nn.Tanh, nn.Flatten, nn.Linear]
    assert_same(loaded.module, net, shape)


@needs_onnx
def test_matmul_add_and_reshape_built_with_onnx_helper(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((12, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten_it"),
            helper.make_node("MatMul", ["flat", "W"], ["mm"], name="matmul"),
            helper.make_node("Add", ["mm", "b"], ["y"], name="bias"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array([-1, 12], dtype=np.int64), "shape")],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    module = load(path, (3, 4))
    assert [type(m) for m in module] == [nn.Flatten, nn.Linear]
    x = torch.randn(6, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(module(x), torch.from_numpy(x.reshape(6, 12).numpy() @ weight + bias), atol=1e-5, rtol=0)


def _single_op_model(path: Path, op: str, **attributes: object) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}", **attributes)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@needs_onnx
def test_unsupported_onnx_op_is_named_with_its_node(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match=r"ONNX node 'my_softsign' \(Softsign\).*op type 'Softsign'.*Supported ONNX ops: Gemm"):
        load(_single_op_model(tmp_path / "softsign.onnx", "Softsign"), (1, 4, 4))
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LPPool2d(2, 2), nn.Flatten()).eval()
    with pytest.raises(AuditInputError, match=r"'/1/Pow' \(Pow\): op type 'Pow' is not supported"):  # LPPool2d exports as Pow, AveragePool, ...
        load(export_onnx(pooled, IMAGE, tmp_path / "pooled.onnx"))


@needs_onnx
def test_residual_onnx_graph_becomes_a_graph_module(tmp_path: Path) -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x)) + x

    torch.manual_seed(0)
    net = Residual().eval()
    module = load(export_onnx(net, LATENT, tmp_path / "residual.onnx"), LATENT)
    assert isinstance(module, torch.fx.GraphModule)
    assert [node.op for node in module.graph.nodes] == ["placeholder", "call_module", "call_module", "call_function", "output"]
    assert_same(module, net, LATENT)


@needs_onnx
def test_onnx_reshape_that_moves_the_batch_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="fold_batch")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M"])],
        [numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")],
    )
    path = tmp_path / "fold.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(AuditInputError, match="'fold_batch'.*does not keep the batch dimension first"):
        load(path, LATENT)


@needs_onnx
def test_onnx_input_shape_must_fit_the_declared_one(tmp_path: Path) -> None:
    path = export_onnx(make_cnn(), IMAGE, tmp_path / "cnn.onnx")
    with pytest.raises(AuditInputError, match=r"does not fit the declared input shape \(batch, 3, 28, 28\)"):
        load(path, (3, 28, 28))


@needs_onnx
def test_corrupt_onnx_file_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"\x00\x01 certainly not protobuf \xff" * 10)
    with pytest.raises(AuditInputError, match=r"broken\.onnx'.*not a valid ONNX"):
        load(tmp_path / "broken.onnx")
    with pytest.raises(AuditInputError, match="file not found"):
        load(tmp_path / "missing.onnx")


def test_corrupt_torch_files_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.pt").write_bytes(b"garbage bytes")
    with pytest.raises(AuditInputError, match=r"broken\.pt'.*neither a TorchScript archive nor a PyTorch file"):
        load(tmp_path / "broken.pt")
    (tmp_path / "truncated.pt").write_bytes(save_script(make_cnn(), tmp_path / "cnn.pt").read_bytes()[:3000])
    with pytest.raises(AuditInputError, match=r"truncated\.pt'"):
        load(tmp_path / "truncated.pt")
    with pytest.raises(AuditInputError, match="file not found"):
        load(tmp_path / "missing.pt")


# -- factory ---------------------------------------------------------------------------------


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "auditai_test_user_models"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "\n"
        "def mlp(width=8, classes=3):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, classes))\n"
        "\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)\n"
        "        self.fc = nn.Linear(4 * 14 * 14, 10)\n"
        "    def forward(self, x):\n"
        "        x = torch.relu(self.conv(x))\n"
        "        return self.fc(x.view(x.size(0), -1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_factory_with_safetensors_weights(tmp_path: Path, factory_module: str) -> None:
    user = importlib.import_module(factory_module)
    original = user.mlp(width=16)
    save_file(original.state_dict(), str(tmp_path / "mlp.safetensors"))
    source = parse_model_reference(f"{factory_module}:mlp", weights="mlp.safetensors", kwargs={"width": 16}, base_dir=tmp_path)
    assert source == ModelSource("factory", f"{factory_module}:mlp", str(tmp_path / "mlp.safetensors"), {"width": 16})
    loaded = load_model_detailed(source, input_shape=LATENT)
    assert loaded.route.endswith("used as is")
    assert_same(loaded.module, original, LATENT, atol=0)
    assert loaded.weights_sha256 == sha256_state_dict(original.state_dict())
    # strict loading: the default width does not fit these weights
    with pytest.raises(AuditInputError, match="do not fit the factory's module"):
        load_model(parse_model_reference(f"{factory_module}:mlp", weights=str(tmp_path / "mlp.safetensors")), input_shape=LATENT)


@needs_onnx
def test_factory_module_with_custom_forward_is_converted(tmp_path: Path, factory_module: str) -> None:
    user = importlib.import_module(factory_module)
    original = user.Net().eval()
    save_file(original.state_dict(), str(tmp_path / "net.safetensors"))
    loaded = load_model_detailed(parse_model_reference(f"{factory_module}:Net", weights=str(tmp_path / "net.safetensors")), input_shape=IMAGE)
    assert loaded.route.endswith("exported to ONNX and converted to verifier layers")
    assert_same(loaded.module, original, IMAGE)


def test_factory_errors(tmp_path: Path, factory_module: str) -> None:
    with pytest.raises(AuditInputError, match="needs its weights"):
        parse_model_reference(f"{factory_module}:mlp")
    with pytest.raises(AuditInputError, match="cannot import module 'no_such_module_xyz'"):
        load_model(parse_model_reference("no_such_module_xyz:build", weights="w.safetensors"), input_shape=LATENT)
    with pytest.raises(AuditInputError, match="has no attribute 'nope'"):
        load_model(parse_model_reference(f"{factory_module}:nope", weights="w.safetensors"), input_shape=LATENT)


# -- pickle ----------------------------------------------------------------------------------


def test_pickled_full_model_is_refused_without_trust_and_loaded_with_it(tmp_path: Path) -> None:
    cnn = make_cnn()
    path = tmp_path / "full_model.pth"
    torch.save(cnn, str(path))
    source = parse_model_reference(str(path))
    assert source.kind == "pickle"
    with pytest.raises(AuditInputError, match=r"full_model\.pth'.*refused.*trust_pickle=True"):
        load_model(source, input_shape=IMAGE)
    with pytest.warns(PickleLoadWarning, match="full_model.pth"):
        module = load_model(source, input_shape=IMAGE, trust_pickle=True)
    assert_same(module, cnn, IMAGE, atol=0)


def test_pickled_state_dict_points_to_factory(tmp_path: Path) -> None:
    torch.save(make_cnn().state_dict(), str(tmp_path / "weights.pkl"))
    with pytest.warns(PickleLoadWarning), pytest.raises(AuditInputError, match="holds a state_dict"):
        load(tmp_path / "weights.pkl", trust_pickle=True)


# -- references and the project's own records --------------------------------------------------


def test_parse_model_reference_infers_the_kind(tmp_path: Path) -> None:
    assert parse_model_reference("models:/cnn/3").kind == "mlflow"
    assert parse_model_reference("models:/cnn@champion").kind == "mlflow"
    assert parse_model_reference("runs:/abc123/model").kind == "mlflow"
    assert parse_model_reference("net.onnx", base_dir=tmp_path) == ModelSource("onnx", str(tmp_path / "net.onnx"))
    assert parse_model_reference("net.pt", base_dir=tmp_path).kind == "torchscript"
    assert parse_model_reference("net.pkl", base_dir=tmp_path).kind == "pickle"
    assert parse_model_reference("head.safetensors", base_dir=tmp_path).kind == "auditai"
    assert parse_model_reference(str(tmp_path)).kind == "mlflow"
    with pytest.raises(AuditInputError, match="unknown kind"):
        parse_model_reference("model.h5")
    (tmp_path / "bare.safetensors").write_bytes(b"")
    with pytest.raises(AuditInputError, match="without a 'bare.json' record"):
        parse_model_reference(str(tmp_path / "bare.safetensors"))


def test_auditai_record_head_loads(tmp_path: Path) -> None:
    from auditai_ops.classifier.head import build_head
    from auditai_ops.modelio import save_module

    torch.manual_seed(0)
    head = build_head(4, (8,), 3).eval()
    save_module(head, tmp_path / "head.safetensors", "mlp_head", {"latent_dim": 4, "hidden": [8], "num_classes": 3})
    module = load(tmp_path / "head.json", LATENT)
    assert_same(module, head, LATENT, atol=0)


def test_auditai_vae_record_gives_the_part_that_fits_the_input_shape(tmp_path: Path) -> None:
    from auditai_ops.latent.vae import VAE, Decoder, Encoder, VAEArchitecture
    from auditai_ops.modelio import save_module

    torch.manual_seed(0)
    arch = VAEArchitecture(28, 28, 4, (4, 8))
    vae = VAE(arch).eval()
    save_module(vae, tmp_path / "vae.safetensors", "vae", arch.as_dict())
    decoder = load(tmp_path / "vae.safetensors", LATENT)
    encoder = load(tmp_path / "vae.safetensors", IMAGE)
    assert isinstance(decoder, Decoder) and isinstance(encoder, Encoder)
    assert_same(decoder, vae.decoder, LATENT, atol=0)
    assert_same(encoder, vae.encoder, IMAGE, atol=0)
    with pytest.raises(AuditInputError, match="choose its part"):
        load(tmp_path / "vae.safetensors", (3,))


def test_input_shape_is_validated(tmp_path: Path) -> None:
    path = save_script(make_cnn(), tmp_path / "cnn.pt")
    with pytest.raises(AuditInputError, match="input_shape"):
        load(path, ())
    with pytest.raises(AuditInputError, match=r"fails on inputs of shape \(2, 1, 14, 14\)|does not accept inputs of shape \(2, 1, 14, 14\)"):
        load(path, (1, 14, 14))


@needs_onnx
def test_converted_model_that_differs_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import auditai_ops.models.loading as loading

    convert = loading.convert_onnx

    def off_by_a_bit(*args: object, **kwargs: object) -> nn.Module:
        module = convert(*args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            module[-1].bias.add_(1e-3)
        return module

    monkeypatch.setattr(loading, "convert_onnx", off_by_a_bit)
    with pytest.raises(ModelMismatchError, match=r"differs from its ONNX graph \(onnx reference evaluator\) by up to 0\.001"):
        load(export_onnx(make_cnn(), IMAGE, tmp_path / "cnn.onnx"))
    with pytest.raises(ModelMismatchError, match="differs from the TorchScript module"):
        load(save_script(FunctionalNet().eval(), tmp_path / "net.pt"))
    assert issubclass(ModelMismatchError, AuditInputError)


def test_missing_onnx_package_is_explained_when_a_conversion_needs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_script(FunctionalNet().eval(), tmp_path / "net.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(AuditInputError, match=r"FunctionalNet.*pip install auditai-ops\[onnx\]"):
        load(path)


# -- MLflow ----------------------------------------------------------------------------------


def test_mlflow_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.artifacts", None)
    with pytest.raises(AuditInputError, match=r"pip install auditai-ops\[tracking\]"):
        load_model(parse_model_reference("runs:/0123/model"), input_shape=IMAGE)


needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install auditai-ops[tracking])")


@needs_mlflow
@needs_onnx
def test_mlflow_runs_uri_loads_logged_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import mlflow.pytorch

    from auditai_ops.classifier.head import build_head
    from auditai_ops.modelio import save_module

    cnn = make_cnn()
    torch.manual_seed(0)
    head = build_head(4, (8,), 3).eval()
    save_script(cnn, tmp_path / "cnn.pt")
    export_onnx(cnn, IMAGE, tmp_path / "cnn.onnx")
    save_module(head, tmp_path / "record" / "head.safetensors", "mlp_head", {"latent_dim": 4, "hidden": [8], "num_classes": 3})
    torch.save(cnn, str(tmp_path / "pickled.pth"))
    previous = mlflow.get_tracking_uri()
    # A local file store: sqlite's schema migrations take seconds; MLflow 3 wants this opt-in for it.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri("file:" + str(tmp_path / "mlruns"))
    try:
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "cnn.pt"), artifact_path="scripted")
            mlflow.log_artifact(str(tmp_path / "cnn.onnx"), artifact_path="onnx")
            mlflow.log_artifacts(str(tmp_path / "record"), artifact_path="head")
            mlflow.log_artifact(str(tmp_path / "pickled.pth"), artifact_path="pickled")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlflow.pytorch.log_model(cnn, name="flavor", serialization_format="pickle", pip_requirements=[])
                # a ScriptModule in the "pickle" format is written with torch.jit.save: no pickle to trust
                mlflow.pytorch.log_model(torch.jit.script(cnn), name="ts", serialization_format="pickle", pip_requirements=[], registered_model_name="byo-cnn")
        mlflow.MlflowClient().set_registered_model_alias("byo-cnn", "champion", "1")
        run_id = run.info.run_id
        for reference in ("models:/byo-cnn/1", "models:/byo-cnn@champion"):
            assert_same(load(reference), cnn, IMAGE, atol=0)
        scripted = load_model_detailed(parse_model_reference(f"runs:/{run_id}/scripted"), input_shape=IMAGE)
        assert scripted.route.startswith(f"mlflow runs:/{run_id}/scripted -> torchscript: rebuilt")
        assert_same(scripted.module, cnn, IMAGE, atol=0)
        from_onnx = load(f"runs:/{run_id}/onnx/cnn.onnx")
        assert_same(from_onnx, cnn, IMAGE)
        assert_same(load(f"runs:/{run_id}/head", LATENT), head, LATENT, atol=0)
        with pytest.raises(AuditInputError, match=r"pickled\.pth'.*trust_pickle=True"):
            load(f"runs:/{run_id}/pickled")
        flavor = f"runs:/{run_id}/flavor"
        with pytest.raises(AuditInputError, match=rf"model '{flavor} -> flavor/data/model\.pth': refused"):
            load(flavor)
        with pytest.warns(PickleLoadWarning):
            assert_same(load(flavor, trust_pickle=True), cnn, IMAGE, atol=0)
        with pytest.raises(AuditInputError, match="cannot download the MLflow artifacts"):
            load(f"runs:/{run_id}/no_such_folder")
    finally:
        mlflow.set_tracking_uri(previous)


@needs_mlflow
@needs_onnx
def test_mlflow_pt2_model_folder_loads(tmp_path: Path) -> None:
    """MLflow 3's default pytorch format is a torch.export archive; MLflow's pickle-free check vouches for it."""
    import mlflow.pytorch

    decoder = make_decoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pytorch.save_model(decoder, str(tmp_path / "model"), input_example=torch.rand(2, *LATENT).numpy(), pip_requirements=[])
    assert (tmp_path / "model" / "data" / "model.pt2").is_file()
    loaded = load_model_detailed(parse_model_reference(str(tmp_path / "model")), input_shape=LATENT)
    assert loaded.route == "torch.export: exported to ONNX and converted to verifier layers"
    assert_same(loaded.module, decoder, LATENT)
