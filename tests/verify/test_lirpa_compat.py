"""auto_LiRPA compatibility layer: import hygiene, patches, layer checks, hand-computed bounds."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from auditai_ops.layers import ViewAs
from auditai_ops.verify.certificate import software_versions
from auditai_ops.verify.lirpa_compat import (
    METHODS,
    BoundMethod,
    UnsupportedLayerError,
    _accepts_padded_conv_transpose,
    applied_patches,
    auto_lirpa_version,
    build_bounded_module,
    check_supported,
    compute_margin_lower_bounds,
    import_auto_lirpa,
)

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (auto_LiRPA not yet imported) from the repo root.

    PYTHONPATH keeps what it held, such as an auto_LiRPA source checkout shadowing the installed one.
    """
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def spec(batch: int, *rows: list[float]) -> torch.Tensor:
    """C of shape [batch, len(rows), n_out] with the same rows for every sample."""
    return torch.tensor(rows).expand(batch, len(rows), len(rows[0]))


# --- import ---------------------------------------------------------------------------


def test_import_is_idempotent() -> None:
    first = import_auto_lirpa()
    patches = applied_patches()
    assert import_auto_lirpa() is first
    assert applied_patches() == patches
    assert hasattr(first, "BoundedModule") and hasattr(first, "PerturbationLpNorm")


def test_every_capability_is_in_place_after_import() -> None:
    """Whatever the auto_LiRPA version, the patches (or the library itself) provide what the verifier uses."""
    lirpa = import_auto_lirpa()
    patches = applied_patches()
    assert len(patches) == len(set(patches))
    conv_transpose = lirpa.operators.BoundConvTranspose
    assert _accepts_padded_conv_transpose(conv_transpose)
    patched = hasattr(conv_transpose.__init__, "__wrapped__")
    assert patched == ("auto_LiRPA BoundConvTranspose: padding/output_padding in matrix mode" in patches)

    def parameters(function: object) -> set[str]:
        return set(inspect.signature(function, follow_wrapped=False).parameters)  # type: ignore[arg-type]

    assert "C" in parameters(lirpa.operators.BoundMatMul.interval_propagate)
    if "remove_duplicate" in parameters(nn.Module._named_members):
        assert "remove_duplicate" in parameters(lirpa.BoundedModule._named_members)


def test_the_loaded_version_is_recorded() -> None:
    """The module's own __version__, not the installed distribution's metadata."""
    assert auto_lirpa_version() == import_auto_lirpa().__version__
    assert software_versions()["auto_LiRPA"] == auto_lirpa_version()


def test_import_leaves_warnings_logging_and_output_alone() -> None:
    """Fresh process, DeprecationWarnings as errors: torch.jit.script's must be silenced."""
    result = run_python(
        """
        import logging, warnings
        import torch
        filters = list(warnings.filters)
        handlers = list(logging.getLogger().handlers)
        from auditai_ops.verify.lirpa_compat import applied_patches, import_auto_lirpa
        import_auto_lirpa()
        assert list(warnings.filters) == filters, "warning filters changed"
        assert logging.getLogger().handlers == handlers, "root logging handlers changed"
        assert logging.getLogger("auto_LiRPA.utils").getEffectiveLevel() == logging.WARNING
        assert applied_patches()
        """,
        "-W",
        "error::DeprecationWarning",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == shadowing_warning()


def shadowing_warning() -> str:
    """What importing auto_LiRPA writes to stderr: a warning only when a checkout shadows the installed version."""
    module = import_auto_lirpa()
    installed = importlib.metadata.version("auto_LiRPA")
    if installed == module.__version__:
        return ""
    return f"auto_LiRPA {module.__version__} is loaded from {module.__file__}, shadowing the installed distribution {installed}\n"


def test_passthrough_when_torch_jit_script_is_gone() -> None:
    result = run_python(
        """
        import torch
        from torch import nn
        del torch.jit.script
        from auditai_ops.verify import lirpa_compat as lc
        lc.import_auto_lirpa()
        assert "torch.jit.script passthrough" in lc.applied_patches()
        assert not hasattr(torch.jit, "script"), "passthrough leaked out of the import"
        net = nn.Sequential(nn.ReLU())
        bounded = lc.build_bounded_module(net, (torch.zeros(1, 1),))
        C = torch.tensor([[[1.0], [-1.0]]])
        lb = lc.compute_margin_lower_bounds(
            bounded, (torch.zeros(1, 1),), torch.tensor([[-1.0]]), torch.tensor([[2.0]]), C, "alpha-CROWN"
        )
        assert lb.tolist() == [[0.0, -2.0]], lb
        """
    )
    assert result.returncode == 0, result.stderr


def test_numpy_without_arraysetops_gives_actionable_error() -> None:
    result = run_python(
        """
        import sys
        import numpy
        sys.modules["numpy.lib.arraysetops"] = None  # gone, as in NumPy 2
        from auditai_ops.verify.lirpa_compat import import_auto_lirpa
        try:
            import_auto_lirpa()
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    if result.stdout == "imported\n":
        pytest.skip(f"auto_LiRPA {import_auto_lirpa().__version__} does not import numpy.lib.arraysetops")
    assert "numpy<2" in result.stdout and "arraysetops" in result.stdout


# --- supported layers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "class_path"),
    [
        (nn.Softmax(dim=1), "torch.nn.modules.activation.Softmax"),
        (nn.Hardswish(), "torch.nn.modules.activation.Hardswish"),
        (nn.PReLU(), "torch.nn.modules.activation.PReLU"),
        (nn.LayerNorm(4), "torch.nn.modules.normalization.LayerNorm"),
    ],
)
def test_unsupported_layers_are_named(layer: nn.Module, class_path: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), layer)
    with pytest.raises(UnsupportedLayerError) as info:
        check_supported(model)
    message = str(info.value)
    assert f"layer '1' ({class_path})" in message
    assert "Supported layers: Linear, Conv2d, ConvTranspose2d, BatchNorm1d, BatchNorm2d, ReLU" in message
    assert "auditai_reshape_only" in message
    assert isinstance(info.value, ValueError)
    assert info.value.path == "1" and info.value.layer_type == class_path


def test_supported_layers_and_flagged_modules_pass() -> None:
    class Wrapper(nn.Module):
        auditai_container = True

        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Tanh()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[1](self.blocks[0](x))

    model = nn.Sequential(
        nn.Linear(3, 8),
        nn.BatchNorm1d(8),
        nn.LeakyReLU(),
        Wrapper(),
        nn.Sigmoid(),
        nn.Identity(),
        nn.Linear(8, 2 * 2 * 2),
        ViewAs((2, 2, 2)),
        nn.Conv2d(2, 2, 1),
        nn.BatchNorm2d(2),
        nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.Flatten(),
    ).eval()
    check_supported(model)


def test_unflagged_modules_and_nested_layers_are_rejected() -> None:
    class Plain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    with pytest.raises(UnsupportedLayerError, match=r"layer '<root>' \(.*Plain\)"):
        check_supported(Plain())

    class Block(nn.Module):
        auditai_container = True

        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Softmax(dim=1)

    nested = r"layer '0\.act' \(torch\.nn\.modules\.activation\.Softmax\)"
    with pytest.raises(UnsupportedLayerError, match=nested):
        check_supported(nn.Sequential(Block()))


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (nn.BatchNorm1d(4), "training mode"),
        (nn.ConvTranspose2d(2, 2, 3, dilation=2), "dilation"),
        (nn.ConvTranspose2d(2, 2, (3, 1)), "square"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    ],
)
def test_unsupported_configurations_are_rejected(layer: nn.Module, reason: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=reason):
        check_supported(nn.Sequential(layer))


def test_build_checks_before_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tracing(*args: object, **kwargs: object) -> None:
        raise AssertionError("BoundedModule must not be built for an unsupported model")

    monkeypatch.setattr(import_auto_lirpa(), "BoundedModule", no_tracing)
    with pytest.raises(UnsupportedLayerError):
        build_bounded_module(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1)), (torch.zeros(1, 2),))


def test_reshape_reading_the_batch_size_is_rejected_or_bounded_at_any_batch_size() -> None:
    """0.3 records x.size(0) as a constant, so the build is refused with the fix; a version
    that traces the size as an op must then bound the model soundly at another batch size."""

    class BatchSizedView(nn.Module):
        auditai_reshape_only = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.size(0), 2, 2, 2)

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 8), BatchSizedView(), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    try:
        bounded = build_bounded_module(model, (torch.zeros(4, 3),))
    except ValueError as exc:
        assert "x.view(-1, C, H, W)" in str(exc)
        return
    x = torch.randn(3, 3)
    C = spec(3, [1.0, -1.0], [-1.0, 1.0])
    points = x + 0.5 * (2 * torch.rand(200, 3, 3) - 1)
    with torch.no_grad():
        margins = torch.einsum("bsk,nbk->nbs", C, model(points.view(-1, 3)).view(200, 3, 2))
    for method in METHODS:
        lb = compute_margin_lower_bounds(bounded, (x,), x - 0.5, x + 0.5, C, method)
        assert lb.shape == (3, 2) and (margins >= lb - 1e-5).all(), method


def test_patches_mode_keeps_the_conv_transpose_padding_check() -> None:
    """Only matrix mode handles padding; the relaxation must not leak into patches mode."""
    lirpa = import_auto_lirpa()
    if not hasattr(lirpa.operators.BoundConvTranspose.__init__, "__wrapped__"):
        pytest.skip(f"auto_LiRPA {lirpa.__version__} builds padded ConvTranspose itself: not patched")
    model = nn.Sequential(nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1))
    with pytest.raises(AssertionError):
        lirpa.BoundedModule(model, (torch.zeros(1, 1, 2, 2),), bound_opts={"conv_mode": "patches"})


def test_model_is_left_untouched_and_parameters_keep_their_names() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bounded = build_bounded_module(model, (torch.zeros(2, 3),))
    x = torch.randn(2, 3)
    compute_margin_lower_bounds(bounded, (x,), x - 1, x + 1, spec(2, [1.0, -1.0]), "alpha-CROWN")
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {name for name, _ in bounded.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_arguments_are_validated() -> None:
    bounded = build_bounded_module(nn.Sequential(nn.Linear(2, 2)), (torch.zeros(1, 2),))
    x, C = torch.zeros(1, 2), spec(1, [1.0, 0.0])
    with pytest.raises(ValueError, match="method"):
        compute_margin_lower_bounds(bounded, (x,), x, x, C, "DeepPoly")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="box shapes"):
        compute_margin_lower_bounds(bounded, (x,), x[:, :1], x[:, :1], C, "IBP")
    with pytest.raises(ValueError, match="x_lower must be <= x_upper"):
        compute_margin_lower_bounds(bounded, (x,), x + 1, x, C, "IBP")
    with pytest.raises(ValueError, match="C must have shape"):
        compute_margin_lower_bounds(bounded, (x,), x, x, C[0], "IBP")
    with pytest.raises(ValueError, match="alpha_iterations"):
        compute_margin_lower_bounds(bounded, (x,), x, x, C, "alpha-CROWN", alpha_iterations=-1)


def test_no_output_while_building_and_bounding(capfd: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).eval()
    bounded = build_bounded_module(model, (torch.zeros(2, 3),))
    x = torch.zeros(2, 3)
    for method in METHODS:
        compute_margin_lower_bounds(bounded, (x,), x - 1, x + 1, spec(2, [1.0, -1.0]), method)
    assert capfd.readouterr() == ("", "")


# --- hand-computed bounds -------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_only() -> nn.Module:
    return build_bounded_module(nn.Sequential(nn.ReLU()), (torch.zeros(1, 1),))


@pytest.mark.parametrize(
    ("method", "lower", "upper"),
    [
        # IBP: [relu(-1), relu(2)].
        ("IBP", 0.0, 2.0),
        # CROWN on [l, u] = [-1, 2]: upper line u(x - l)/(u - l) = 2(x + 1)/3 <= 2; lower
        # line slope 1 (as |u| > |l|): relu(x) >= x >= -1.
        ("CROWN", -1.0, 2.0),
        ("CROWN-IBP", -1.0, 2.0),
        # alpha-CROWN optimises the lower slope a in [0, 1]: min a*x = -a, best at a = 0.
        ("alpha-CROWN", 0.0, 2.0),
    ],
)
def test_relu_on_an_interval(
    relu_only: nn.Module, method: BoundMethod, lower: float, upper: float
) -> None:
    x_lower, x_upper = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    C = spec(1, [1.0], [-1.0])
    lb = compute_margin_lower_bounds(relu_only, (torch.zeros(1, 1),), x_lower, x_upper, C, method)
    assert lb.tolist() == [[lower, -upper]]


@pytest.mark.parametrize(
    ("method", "upper"), [("IBP", 4.0), ("CROWN", 3.0), ("CROWN-IBP", 3.0), ("alpha-CROWN", 3.0)]
)
def test_one_hidden_layer(method: BoundMethod, upper: float) -> None:
    """y = relu(x1 + x2) + relu(x1 - x2) on [-1, 1]^2 (bias-free: MatMul nodes).

    Both pre-activations lie in [-2, 2], so IBP gives y <= 2 + 2 = 4. CROWN bounds each
    relu(h) by (h + 2)/2, so y <= (x1 + x2 + x1 - x2)/2 + 2 = x1 + 2 <= 3. The lower slope
    is 0 (|u| = |l|), so y >= 0 for every method (the true range is [0, 2]).
    """
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[2].weight.fill_(1.0)
    bounded = build_bounded_module(model, (torch.zeros(1, 2),))
    x = torch.zeros(1, 2)
    lb = compute_margin_lower_bounds(bounded, (x,), x - 1, x + 1, spec(1, [1.0], [-1.0]), method)
    assert lb.tolist() == [[0.0, -upper]]


def exact_affine_range(
    model: nn.Module, center: torch.Tensor, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of an affine model f(x) = A x + b over a box: f(c) -/+ |A| r (A by autograd)."""
    flat = lambda v: model(v.view(1, *center.shape[1:])).flatten()  # noqa: E731
    jac = torch.autograd.functional.jacobian(flat, center.flatten()).reshape(-1, center.numel())
    mid = flat(center.flatten())
    dev = jac.abs() @ radius.flatten()
    return (mid - dev).detach(), (mid + dev).detach()


def test_crown_is_exact_on_an_affine_decoder_with_padded_conv_transpose() -> None:
    """No activations: CROWN's bound is the exact range. Checks the padding patch's backward."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(3, 2 * 3 * 3),
        ViewAs((2, 3, 3)),
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),  # -> 6x6
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 2, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 5),
    ).eval()
    with torch.no_grad():
        model[3].running_mean.normal_()
        model[3].running_var.uniform_(0.5, 2.0)
    bounded = build_bounded_module(model, (torch.zeros(1, 3),))
    center, radius = torch.randn(1, 3), torch.tensor([[0.3, 0.1, 0.5]])
    lower, upper = exact_affine_range(model, center, radius)
    eye = torch.eye(5)
    C = torch.cat([eye, -eye]).unsqueeze(0)
    for method in ("CROWN", "alpha-CROWN"):
        box = (center - radius, center + radius)
        lb = compute_margin_lower_bounds(bounded, (center,), *box, C, method)
        torch.testing.assert_close(lb[0, :5], lower, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(-lb[0, 5:], upper, atol=1e-5, rtol=1e-5)


def test_ibp_is_exact_on_a_single_padded_conv_transpose() -> None:
    """IBP of one affine layer is exact; checks interval propagation with the padding."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), nn.Flatten()
    )
    bounded = build_bounded_module(model, (torch.zeros(1, 2, 3, 3),))
    center, radius = torch.randn(1, 2, 3, 3), 0.2 * torch.rand(1, 2, 3, 3)
    lower, upper = exact_affine_range(model, center, radius)
    n_out = lower.numel()
    eye = torch.eye(n_out)
    C = torch.cat([eye, -eye]).unsqueeze(0)
    lb = compute_margin_lower_bounds(bounded, (center,), center - radius, center + radius, C, "IBP")
    torch.testing.assert_close(lb[0, :n_out], lower, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(-lb[0, n_out:], upper, atol=1e-5, rtol=1e-5)


# --- alpha-CROWN: intermediate bounds fixed -------------------------------------------


def test_alpha_crown_optimises_only_the_last_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """After one CROWN pass, every backward pass starts at the output: no intermediate
    layer is re-bounded, and there is one pass per iteration."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    bounded = build_bounded_module(model, (torch.zeros(4, 4),))
    starts: list[str] = []
    original = type(bounded).backward_general

    node_parameter = "node" if "node" in inspect.signature(original).parameters else "bound_node"  # renamed after 0.3

    def spy(self: nn.Module, *args: object, **kwargs: object) -> object:
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        starts.append(bound.arguments[node_parameter].name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(bounded), "backward_general", spy)
    x = torch.randn(4, 4)
    C = spec(4, [1.0, -1.0, 0.0], [0.0, 1.0, -1.0])
    crown = compute_margin_lower_bounds(bounded, (x,), x - 0.5, x + 0.5, C, "CROWN")
    crown_starts = list(starts)
    starts.clear()
    alpha = compute_margin_lower_bounds(
        bounded, (x,), x - 0.5, x + 0.5, C, "alpha-CROWN", alpha_iterations=7
    )
    final = bounded.final_name
    assert crown_starts[-1] == final and len(set(crown_starts)) > 1
    assert starts[: len(crown_starts)] == crown_starts
    assert starts[len(crown_starts) :] == [final] * 7
    assert (alpha >= crown).all() and (alpha > crown + 1e-4).any()


def test_alpha_crown_with_no_iterations_is_crown() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 2))
    bounded = build_bounded_module(model, (torch.zeros(2, 3),))
    x = torch.randn(2, 3)
    C = spec(2, [1.0, -1.0])
    crown = compute_margin_lower_bounds(bounded, (x,), x - 0.5, x + 0.5, C, "CROWN")
    alpha = compute_margin_lower_bounds(
        bounded, (x,), x - 0.5, x + 0.5, C, "alpha-CROWN", alpha_iterations=0
    )
    assert torch.equal(alpha, crown)

