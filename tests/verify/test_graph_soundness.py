"""Computation graphs in the linear-in-t engine (auditai_ops/verify/linear_bounds/graph.py).

Per graph operation (residual addition, channel concatenation, fan-out, flatten / view), random
residual networks (hypothesis) and a planted narrow failure: every sampled point lies inside every
bound, and a network that misclassifies on a tiny interval of t is never proved. Chains traced by
torch.fx give the chain engine's bounds exactly.
"""

from __future__ import annotations

import itertools
import operator

import pytest
import torch
import torch.fx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from auditai_ops.layers import PerChannelNormalize, UnsupportedLayerError, ViewAs, check_supported, trace_graph
from auditai_ops.verify.linear_bounds import affine_input, flatten_layers, margin_lower_bounds, output_bounds
from auditai_ops.verify.linear_bounds.graph import GraphBlock

TOL = 1e-5
MODES = ({}, {"back_substitute": True}, {"back_substitute": True, "pieces": 4}, {"back_substitute": True, "refine_below": 0.0}, {"interval": True, "back_substitute": True})


class Residual(nn.Module):
    """x -> Linear -> ReLU -> h; y = ReLU(Linear(h)).add(h) (fan-out of h); out = Linear(y)."""

    def __init__(self, width: int = 8, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, width), nn.Linear(width, width), nn.Linear(width, 4)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x))
        return self.c(self.act(self.b(h)).add(h))


class ConvResidual(nn.Module):
    """A small ResNet-style block: conv stem, BN, residual conv block with torch.add, max pool, concat, global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(3, 2 * 6 * 6), ViewAs((2, 6, 6)), nn.ReLU())
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.side = nn.Conv2d(2, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        r = self.conv2(self.relu(self.bn(self.conv1(s))))
        y = self.relu(torch.add(s, r))
        both = torch.cat([self.pool(y), self.pool(self.side(s))], dim=1)
        return self.fc(torch.flatten(self.gap(both), 1))


class ViewHead(nn.Module):
    """Residual on an image, then x.view(x.size(0), -1) and x.flatten(1) heads added."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 8)
        self.view = ViewAs((2, 2, 2))
        self.conv = nn.Conv2d(2, 2, 1)
        self.act = nn.GELU()
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.view(self.lin(x))
        w = self.act(self.conv(v)) + v
        return self.out(w.view(w.size(0), -1) + w.flatten(1))


def _samples(t_low: torch.Tensor, t_high: torch.Tensor, n: int = 1000) -> torch.Tensor:
    k = t_low.shape[1]
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)))
    u = torch.cat([corners, torch.rand(n - len(corners), k, generator=torch.Generator().manual_seed(0))])
    return t_low + u[:, None, :] * (t_high - t_low)


def assert_sound(model: nn.Module, seed: int, k: int = 1, scale: float = 1.0, label: str = "") -> None:
    gen = torch.Generator().manual_seed(seed)
    z, directions = torch.randn(4, 3, generator=gen), torch.randn(4, k, 3, generator=gen)
    t_low = -scale * torch.rand(4, k, generator=gen)
    t_high = t_low + scale * (0.05 + torch.rand(4, k, generator=gen))
    ts = _samples(t_low, t_high)
    with torch.no_grad():
        ys = model((z + torch.einsum("nbk,bkd->nbd", ts, directions)).reshape(-1, 3)).reshape(len(ts), 4, -1)
    inputs = affine_input(z, directions)
    for interval in (False, True):
        low, high = output_bounds(model, inputs, t_low, t_high, interval=interval)
        assert torch.maximum(low - ys, ys - high).max().item() <= TOL, f"{label} output bounds (interval={interval})"
    labels = ys[0].argmax(dim=1)
    eye = torch.eye(ys.shape[2])
    C = torch.stack([(eye[y] - eye)[torch.arange(ys.shape[2]) != y] for y in labels.tolist()])
    margins = torch.einsum("bsn,kbn->kbs", C, ys)
    for mode in MODES:
        bound = margin_lower_bounds(model, inputs, C, t_low, t_high, **mode)  # type: ignore[arg-type]
        assert (bound - margins).max().item() <= TOL, f"{label} margins {mode}"


CASES = {
    "residual-add-fanout": lambda: Residual(),
    "residual-sigmoid": lambda: Residual(act=nn.Sigmoid),
    "residual-silu": lambda: Residual(act=nn.SiLU),
    "conv-residual-cat-maxpool-gap": lambda: ConvResidual(),
    "view-flatten-gelu": lambda: ViewHead(),
    "graph-module": lambda: torch.fx.symbolic_trace(Residual(act=nn.ELU)),
}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_sampled_points_lie_inside_every_bound(case: str, k: int) -> None:
    torch.manual_seed(sum(map(ord, case)))
    model = CASES[case]().eval()
    check_supported(model)
    assert_sound(model, seed=k, k=k, label=case)


class RandomResidual(nn.Module):
    """depth residual blocks x + W2 act(W1 x) of a random width, between random Linear maps."""

    def __init__(self, width: int, depth: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.inp = nn.Linear(3, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), act(), nn.Linear(width, width)) for _ in range(depth))
        self.act = act()
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = self.act(x + block(x))
        return self.out(x)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000),
    width=st.integers(2, 10),
    depth=st.integers(1, 3),
    act=st.sampled_from([nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.Softplus]),
    scale=st.floats(0.01, 3.0),
    k=st.integers(1, 2),
)
def test_random_residual_networks_are_sound(seed: int, width: int, depth: int, act: type[nn.Module], scale: float, k: int) -> None:
    torch.manual_seed(seed)
    assert_sound(RandomResidual(width, depth, act).eval(), seed=seed, k=k, scale=scale, label=f"seed {seed}")


class PlantedFailure(nn.Module):
    """Class 0 everywhere except for |t - c| < w / 2, through a residual connection.

    The input is x = t (one feature). tri = relu(w - relu(x - c) - relu(c - x)) is a triangle of height w
    on (c - w, c + w); the residual skip adds x to both outputs: logit_0 = x + w / 2, logit_1 = tri + x.
    """

    def __init__(self, centre: float, width: float) -> None:
        super().__init__()
        self.hinges, self.mix, self.skip, self.out = nn.Linear(1, 2), nn.Linear(2, 2), nn.Linear(1, 2), nn.Linear(2, 2)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.hinges.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.hinges.bias.copy_(torch.tensor([-centre, centre]))
            self.mix.weight.copy_(torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))
            self.mix.bias.copy_(torch.tensor([width, 0.0]))
            self.skip.weight.copy_(torch.tensor([[1.0], [1.0]]))
            self.skip.bias.zero_()
            self.out.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
            self.out.bias.copy_(torch.tensor([0.5 * width, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.mix(self.relu(self.hinges(x)))) + self.skip(x))


@pytest.mark.parametrize("mode", [*MODES, {"back_substitute": True, "pieces": 64}, {"pieces": 64, "interval": True}])
def test_a_planted_narrow_failure_is_never_proved(mode: dict[str, object]) -> None:
    centre, width = 0.3137, 1e-3
    model = PlantedFailure(centre, width).eval()
    with torch.no_grad():
        assert model(torch.tensor([[centre]])).argmax().item() == 1 and model(torch.tensor([[0.0]])).argmax().item() == 0
    inputs = affine_input(torch.zeros(3, 1), torch.ones(3, 1, 1))
    t_low = torch.tensor([[-1.0], [0.0], [centre - 0.1]])
    t_high = torch.tensor([[1.0], [centre + 0.01], [centre + 0.1]])
    C = torch.tensor([[[1.0, -1.0]]]).expand(3, 1, 2)  # logit_0 - logit_1 > 0 would prove class 0
    bound = margin_lower_bounds(model, inputs, C, t_low, t_high, **mode)  # type: ignore[arg-type]
    assert bool((bound <= 0).all()), f"{mode}: a box containing the failure was proved ({bound.squeeze(1).tolist()})"
    away = margin_lower_bounds(model, affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1)), C[:1], torch.tensor([[0.5]]), torch.tensor([[0.9]]), **mode)  # type: ignore[arg-type]
    assert away.item() > 0, "the property holds away from the planted failure and is provable there"


def test_chains_traced_by_fx_give_the_chain_engines_bounds() -> None:
    """A traced chain is expanded into its leaves: the same flat layers and the same bounds as nn.Sequential."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4)).eval()
    traced = torch.fx.symbolic_trace(chain)
    example = torch.zeros(1, 3)
    assert [type(m) for _, m in flatten_layers(traced, example)] == [type(m) for _, m in flatten_layers(chain, example)]
    gen = torch.Generator().manual_seed(1)
    z, d = torch.randn(64, 3, generator=gen), torch.randn(64, 1, 3, generator=gen)
    t_low, t_high = -torch.rand(64, 1, generator=gen), torch.rand(64, 1, generator=gen)
    C = torch.randn(64, 3, 4, generator=gen)
    for mode in MODES:
        same = [margin_lower_bounds(m, affine_input(z, d), C, t_low, t_high, **mode) for m in (chain, traced)]  # type: ignore[arg-type]
        torch.testing.assert_close(same[0], same[1], rtol=0, atol=1e-6)


def test_a_list_of_decoder_layers_and_a_graph_classifier() -> None:
    """Pixel mode passes [decoder modules..., classifier]; the classifier may be a graph (GraphModule or residual module)."""
    torch.manual_seed(3)
    decoder = nn.Sequential(nn.Linear(3, 2 * 6 * 6), nn.ReLU(), ViewAs((2, 6, 6)), nn.ConvTranspose2d(2, 2, 3, padding=1), nn.Sigmoid()).eval()
    inner = ConvResidual().eval()

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = PerChannelNormalize([0.5, 0.5], [0.25, 0.25])
            self.body = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(x)
            r = self.body.conv2(self.body.relu(self.body.bn(self.body.conv1(x))))
            y = self.body.relu(x + r)
            return self.body.fc(torch.flatten(self.body.gap(torch.cat([self.body.pool(y), self.body.pool(y)], dim=1)), 1))

    graph_classifier = trace_graph(Classifier().eval())  # a GraphModule with PerChannelNormalize kept as a leaf
    layers = flatten_layers([*decoder, graph_classifier], torch.zeros(1, 3))
    assert any(isinstance(m, GraphBlock) for _, m in layers)
    assert [type(m) for _, m in layers[-3:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]  # the chain tail after the last merge
    model = nn.Sequential(decoder, graph_classifier)
    assert_sound(model, seed=5, label="decoder + graph classifier")
    gen = torch.Generator().manual_seed(7)
    z, d = torch.randn(4, 3, generator=gen), torch.randn(4, 1, 3, generator=gen)
    t_low, t_high = -0.2 * torch.rand(4, 1, generator=gen), 0.2 * torch.rand(4, 1, generator=gen)
    C = torch.randn(4, 3, 4, generator=gen)
    as_list = margin_lower_bounds([*decoder, graph_classifier], affine_input(z, d), C, t_low, t_high, back_substitute=True)
    as_model = margin_lower_bounds(model, affine_input(z, d), C, t_low, t_high, back_substitute=True)
    torch.testing.assert_close(as_list, as_model, rtol=0, atol=1e-6)


def test_partial_back_substitution_through_a_graph_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a checkpoint forced at every activation, the partial back-substitution crosses the graph block soundly."""
    from auditai_ops.verify import partial_back_substitution as pbs

    chosen: list[int | None] = []
    original = pbs.checkpoint

    def recording(modules: list[nn.Module], shapes: list[tuple[int, ...]]) -> int | None:
        chosen.append(original(modules, shapes))
        return chosen[-1]

    monkeypatch.setattr(pbs, "MIN_FULL_COST", 0)
    monkeypatch.setattr(pbs, "MAX_COST_SHARE", 1.0)
    monkeypatch.setattr(pbs, "checkpoint", recording)
    torch.manual_seed(8)
    decoder = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3), nn.Sigmoid())
    model = nn.Sequential(decoder, Residual(act=nn.ReLU)).eval()
    assert_sound(model, seed=9, label="partial through a graph")
    assert any(position is not None for position in chosen), "a checkpoint was used"


def test_the_loader_contract_graph_module() -> None:
    """A GraphModule of exactly the node kinds the ONNX / TorchScript loaders emit is accepted and bounded soundly."""
    root = nn.Module()
    modules = {
        "lin": nn.Linear(3, 2 * 4 * 4), "view": ViewAs((2, 4, 4)), "norm": PerChannelNormalize([0.1, 0.2], [1.0, 2.0]),
        "conv": nn.Conv2d(2, 2, 3, padding=1), "bn": nn.BatchNorm2d(2).eval(), "relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1),
        "up": nn.Upsample(scale_factor=2, mode="bilinear"), "deconv": nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
        "maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(2), "drop": nn.Dropout(0.3).eval(), "elu": nn.ELU(), "softplus": nn.Softplus(),
        "gelu": nn.GELU(), "silu": nn.SiLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "ident": nn.Identity(), "gap": nn.AdaptiveAvgPool2d(1),
        "flat": nn.Flatten(), "fc": nn.Linear(4, 3), "bn1": nn.BatchNorm1d(3).eval(),
    }
    for name, module in modules.items():
        root.add_module(name, module)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    v = graph.call_module("norm", (graph.call_module("view", (graph.call_module("lin", (x,)),)),))
    a = graph.call_module("relu", (graph.call_module("bn", (graph.call_module("conv", (v,)),)),))
    s = graph.call_function(operator.add, (a, graph.call_module("leaky", (v,))))
    up = graph.call_module("elu", (graph.call_module("up", (s,)),))  # 8x8
    down = graph.call_module("maxpool", (graph.call_module("softplus", (up,)),))  # 4x4
    side = graph.call_module("avgpool", (graph.call_module("gelu", (graph.call_module("silu", (up,)),)),))
    both = graph.call_function(torch.cat, ([down, graph.call_module("drop", (side,))],), {"dim": 1})  # 4 channels
    d = graph.call_module("tanh", (graph.call_module("deconv", (graph.call_module("sigmoid", (both,)),)),))  # 2 x 8 x 8
    both2 = graph.call_function(torch.cat, ([d, graph.call_module("ident", (up,))], 1))
    out = graph.call_module("bn1", (graph.call_module("fc", (graph.call_module("flat", (graph.call_module("gap", (both2,)),)),)),))
    graph.output(out)
    model = torch.fx.GraphModule(root, graph).eval()
    check_supported(model)
    assert_sound(model, seed=11, label="loader contract")


def test_unsupported_graph_nodes_are_named() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * 2

    with pytest.raises(UnsupportedLayerError, match="mul") as info:
        check_supported(Scaled())
    assert info.value.path == "<root>:mul"
    inputs = affine_input(torch.zeros(1, 3), torch.ones(1, 1, 3))
    with pytest.raises(UnsupportedLayerError, match="mul"):
        output_bounds(Scaled(), inputs, torch.zeros(1, 1), torch.ones(1, 1))

    class Softmaxed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.soft = nn.Linear(3, 4), nn.Softmax(dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.soft(self.lin(x)) + self.lin(x)

    with pytest.raises(UnsupportedLayerError) as soft:
        check_supported(Softmaxed())
    assert soft.value.path == "soft"
    with pytest.raises(UnsupportedLayerError, match="dim 0"):
        output_bounds(CatBatch(), inputs, torch.zeros(1, 1), torch.ones(1, 1))
    with pytest.raises(UnsupportedLayerError, match="shapes") as broadcast:
        output_bounds(Broadcast(), inputs, torch.zeros(1, 1), torch.ones(1, 1))
    assert broadcast.value.path == "<root>:add"


class Broadcast(nn.Module):
    """A broadcasting addition [B, 4] + [B, 1]: not a residual connection."""

    def __init__(self) -> None:
        super().__init__()
        self.wide, self.narrow = nn.Linear(3, 4), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(x) + self.narrow(x)


class CatBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lin(x), x], dim=0)


class Cancelling(nn.Module):
    """out = A h - A h for h = relu(W x): identically 0. Only a back-substitution that sums the coefficients of both
    branches at the fan-out of h sees it; forward bounds add two loose intervals."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.relu = nn.Linear(3, 16), nn.ReLU()
        self.plus, self.minus = nn.Linear(16, 2), nn.Linear(16, 2)
        with torch.no_grad():
            self.minus.weight.copy_(-self.plus.weight)
            self.minus.bias.copy_(-self.plus.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.lin(x))
        return self.plus(h) + self.minus(h)


def test_back_substitution_sums_the_branches_of_a_fan_out() -> None:
    torch.manual_seed(4)
    model = Cancelling().eval()
    gen = torch.Generator().manual_seed(4)
    z, d = torch.randn(8, 3, generator=gen), torch.randn(8, 1, 3, generator=gen)
    t_low, t_high = torch.full((8, 1), -1.0), torch.full((8, 1), 1.0)
    C = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]).expand(8, 3, 2)
    forward = margin_lower_bounds(model, affine_input(z, d), C, t_low, t_high)
    back = margin_lower_bounds(model, affine_input(z, d), C, t_low, t_high, back_substitute=True)
    assert forward.max().item() < -1e-2 and forward.mean().item() < -0.1, "forward bounds cannot see the cancellation"
    assert back.min().item() > -1e-4 and back.max().item() <= 1e-5, "back-substitution through the graph is exact here"


def test_two_graphs_in_a_row() -> None:
    """Back-substitution walks one graph block after another (and the chain leaves between them)."""
    torch.manual_seed(12)
    model = nn.Sequential(RandomResidual(6, 2, nn.ReLU), nn.Tanh(), RandomResidual(5, 1, nn.GELU)).eval()
    layers = flatten_layers(model, torch.zeros(1, 3))
    assert sum(isinstance(m, GraphBlock) for _, m in layers) == 2
    for seed in range(3):
        assert_sound(model, seed=seed, k=1 + seed % 2, scale=0.5 + seed, label=f"two graphs, seed {seed}")
