"""VCA (ALGORITHMS.md section 2).

About tolerances: the spec's rescaling is sqrt((target + eps) / (Var(merged) + eps)), so the output
variance is Var(merged) * (target + eps) / (Var(merged) + eps), not `target` itself. With eps = 0 it is
`target`, and the tests check that to 1e-5 relative; with the default eps they check the formula above
to 1e-5 relative and `target` only to the order of eps. Reference statistics are taken in float64.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from p2pfl.aggregation import Contribution, FedAvg
from p2pfl.aggregation.vca import VCA, corrected_tensors
from p2pfl.model_state import Layout, ModelState


def var(t: torch.Tensor) -> float:
    return t.double().var(unbiased=False).item()


def mean(t: torch.Tensor) -> float:
    return t.double().mean().item()


def random_state(shapes: dict, gen: torch.Generator, scale: float = 1.0, shift: float = 0.0) -> ModelState:
    return ModelState.from_tensors(
        {name: torch.randn(shape, generator=gen) * scale + shift for name, shape in shapes.items()}
    )


def target_of(name, own, received, self_weight):
    """c * Var(own) + (1 - c) * weighted mean of Var(received), in float64."""
    total = sum(c.weight for c in received)
    others = sum(c.weight / total * var(c.state.tensor(name)) for c in received)
    return self_weight * var(own.state.tensor(name)) + (1 - self_weight) * others


def plain_merge(own, received, self_weight):
    total = sum(c.weight for c in received)
    return self_weight * own.state.flat.double() + (1 - self_weight) * sum(
        c.weight / total * c.state.flat.double() for c in received
    )


# A 2-D or 3-D weight tensor and a 1-D bias, with random inputs and weights.
case = st.fixed_dictionaries(
    {
        "w_shape": st.lists(st.integers(2, 9), min_size=2, max_size=3).map(tuple),
        "b_len": st.integers(2, 9),
        "received": st.lists(st.floats(0.1, 5.0), min_size=1, max_size=5),
        "self_weight": st.sampled_from([0.0, 0.3, 0.5, 0.9]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def build(c):
    gen = torch.Generator().manual_seed(c["seed"])
    shapes = {"layer.weight": c["w_shape"], "layer.bias": (c["b_len"],)}
    own = Contribution("own", random_state(shapes, gen, scale=0.7, shift=0.3))
    received = [
        Contribution(f"p{i}", random_state(shapes, gen, scale=0.5 + i, shift=-i), weight=w)
        for i, w in enumerate(c["received"])
    ]
    return own, received


@settings(max_examples=25, deadline=None)
@given(case)
def test_with_eps_zero_the_variance_is_the_target_and_the_mean_is_kept(c):
    own, received = build(c)
    out = VCA(self_weight=c["self_weight"], eps=0.0, correct_biases=True).aggregate(own, received)
    merged = plain_merge(own, received, c["self_weight"])
    plain = own.state.with_flat(merged.float())
    for name in ("layer.weight", "layer.bias"):
        target = target_of(name, own, received, c["self_weight"])
        assert var(out.tensor(name)) == pytest.approx(target, rel=1e-5)
        assert mean(out.tensor(name)) == pytest.approx(mean(plain.tensor(name)), rel=1e-5, abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(case)
def test_with_default_eps_the_variance_follows_the_eps_formula(c):
    own, received = build(c)
    eps = 1e-4
    out = VCA(self_weight=c["self_weight"]).aggregate(own, received)
    plain = own.state.with_flat(plain_merge(own, received, c["self_weight"]).float())
    target = target_of("layer.weight", own, received, c["self_weight"])
    merged_var = var(plain.tensor("layer.weight"))
    expected = merged_var * (target + eps) / (merged_var + eps)
    assert var(out.tensor("layer.weight")) == pytest.approx(expected, rel=1e-5)
    # |expected - target| = eps * |Var(merged) - target| / (Var(merged) + eps): small, but not
    # always below eps (it grows as Var(merged) shrinks), so check against that bound itself.
    bound = eps * abs(merged_var - target) / (merged_var + eps)
    # Slack for float32 rounding of the variance itself, as in the rel=1e-5 check above (1e-6 was
    # exceeded by 3.1e-6 vs 3.0e-6 on one example hypothesis found).
    assert abs(var(out.tensor("layer.weight")) - target) <= bound * (1 + 1e-4) + 1e-5 * target
    # biases are left as merged by default
    assert torch.equal(
        out.tensor("layer.bias"),
        VCA(self_weight=c["self_weight"], ratio=0.0).aggregate(own, received).tensor("layer.bias"),
    )


@settings(max_examples=15, deadline=None)
@given(case)
def test_ratio_zero_is_the_plain_merge(c):
    own, received = build(c)
    sw = c["self_weight"]
    out = VCA(self_weight=sw, ratio=0.0, correct_biases=True).aggregate(own, received)
    torch.testing.assert_close(out.flat.double(), plain_merge(own, received, sw), rtol=1e-5, atol=1e-5)


def test_ratio_zero_matches_fedavg():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (4, 5), "b": (5,)}
    own = Contribution("own", random_state(shapes, gen))
    received = [Contribution(f"p{i}", random_state(shapes, gen)) for i in range(3)]
    # self weight 0.5 with three equally weighted neighbours == FedAvg with own weight 3
    heavy_own = Contribution("own", own.state, weight=3)
    fedavg = FedAvg().aggregate(heavy_own, received)
    torch.testing.assert_close(VCA(ratio=0.0).aggregate(own, received).flat, fedavg.flat)
    no_own = FedAvg(include_own=False).aggregate(own, received)
    torch.testing.assert_close(VCA(self_weight=0.0, ratio=0.0).aggregate(own, received).flat, no_own.flat)


def test_partial_ratio_interpolates_the_scale():
    gen = torch.Generator().manual_seed(1)
    shapes = {"w": (16, 16)}
    own = Contribution("own", random_state(shapes, gen))
    received = [Contribution(f"p{i}", random_state(shapes, gen)) for i in range(4)]
    plain = VCA(ratio=0.0).aggregate(own, received).tensor("w").double()
    full = VCA(ratio=1.0, eps=0.0).aggregate(own, received).tensor("w").double()
    half = VCA(ratio=0.5, eps=0.0).aggregate(own, received).tensor("w").double()
    mu = plain.mean()
    full_factor = ((full - mu) / (plain - mu)).mean()
    torch.testing.assert_close(half, mu + (plain - mu) * (1 + 0.5 * (full_factor - 1)), rtol=1e-5, atol=1e-6)


def test_self_weight_zero_ignores_the_own_model():
    gen = torch.Generator().manual_seed(2)
    shapes = {"w": (6, 7)}
    received = [Contribution(f"p{i}", random_state(shapes, gen), weight=i + 1) for i in range(3)]
    a = Contribution("own", random_state(shapes, gen, scale=0.01))
    b = Contribution("own", random_state(shapes, gen, scale=100.0, shift=5.0))
    rule = VCA(self_weight=0.0, eps=0.0)
    out_a, out_b = rule.aggregate(a, received), rule.aggregate(b, received)
    torch.testing.assert_close(out_a.flat, out_b.flat)
    assert var(out_a.tensor("w")) == pytest.approx(target_of("w", a, received, 0.0), rel=1e-5)


@settings(max_examples=20, deadline=None)
@given(case, st.integers(0, 4))
def test_identical_inputs_are_returned_unchanged(c, copies):
    own, _ = build(c)
    received = [Contribution(f"p{i}", own.state.clone(), weight=i + 1) for i in range(copies + 1)]
    out = VCA(self_weight=c["self_weight"], correct_biases=True).aggregate(own, received)
    torch.testing.assert_close(out.flat, own.state.flat, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(case, st.randoms(use_true_random=False))
def test_the_order_of_received_models_does_not_matter(c, rnd):
    own, received = build(c)
    shuffled = received[:]
    rnd.shuffle(shuffled)
    rule = VCA(self_weight=c["self_weight"], correct_biases=True)
    torch.testing.assert_close(
        rule.aggregate(own, received).flat, rule.aggregate(own, shuffled).flat, rtol=1e-5, atol=1e-5
    )


def small_net_state(seed: int) -> ModelState:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with torch.no_grad():  # make the BatchNorm tensors differ between models
        bn = net[1]
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(seed)
    tensors = dict(net.state_dict())
    tensors["temperature"] = torch.tensor(1.0 + seed)  # a scalar
    tensors["gain"] = torch.tensor([2.0 - seed])  # a one-element tensor
    return ModelState.from_tensors(tensors)


def test_skipped_tensors_are_the_plain_merge():
    own = Contribution("own", small_net_state(0))
    received = [Contribution(f"p{i}", small_net_state(i + 1)) for i in range(3)]
    plain = VCA(ratio=0.0).aggregate(own, received)
    for correct_biases in (False, True):
        out = VCA(eps=0.0, correct_biases=correct_biases).aggregate(own, received)
        skipped = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "temperature", "gain"]
        if not correct_biases:
            skipped += ["0.bias", "2.bias"]
        corrected = [name for name in out.layout.names if name not in skipped]
        for name in skipped:
            assert torch.equal(out.tensor(name), plain.tensor(name)), name
        for name in corrected:
            assert not torch.allclose(out.tensor(name), plain.tensor(name)), name
            assert var(out.tensor(name)) == pytest.approx(target_of(name, own, received, 0.5), rel=1e-5)
        assert out.state_dict()["1.num_batches_tracked"] == 0  # non-float buffers come from the own model


def test_the_skip_rule_on_common_layers():
    modules = {
        "conv": nn.Conv2d(3, 4, 3),
        "bn": nn.BatchNorm2d(4),
        "ln": nn.LayerNorm(6),
        "emb": nn.Embedding(10, 6),
        "attn": nn.MultiheadAttention(6, 2),
        "head": nn.Linear(6, 1),
    }
    layout = Layout.of(
        {k: v for k, v in nn.ModuleDict(modules).state_dict().items() if v.is_floating_point()}
    )
    without = dict(zip(layout.names, corrected_tensors(layout.specs, correct_biases=False), strict=True))
    with_biases = dict(zip(layout.names, corrected_tensors(layout.specs, correct_biases=True), strict=True))
    assert {n for n, c in without.items() if c} == {
        "conv.weight",
        "emb.weight",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "head.weight",
    }
    # head.bias has one element; BatchNorm/LayerNorm affine tensors have no >= 2-D sibling
    assert {n for n, c in with_biases.items() if c} - {n for n, c in without.items() if c} == {
        "conv.bias",
        "attn.in_proj_bias",
        "attn.out_proj.bias",
    }

    lstm = Layout.of(dict(nn.LSTM(3, 4).state_dict()))
    lstm_flags = dict(zip(lstm.names, corrected_tensors(lstm.specs, correct_biases=True), strict=True))
    assert all(lstm_flags.values())  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0


def test_vca_undoes_the_variance_loss_of_averaging_independent_inits():
    torch.manual_seed(3)
    states = []
    for _ in range(8):
        w = torch.empty(64, 64)
        nn.init.xavier_uniform_(w)
        states.append(ModelState.from_tensors({"w": w}))
    own = Contribution("own", states[0])
    received = [Contribution(f"p{i}", s) for i, s in enumerate(states[1:])]
    inputs_var = sum(var(s.tensor("w")) for s in states) / 8
    assert inputs_var == pytest.approx(2 / 128, rel=0.05)  # Xavier: 2 / (fan_in + fan_out)

    # a plain mean of all eight: self weight 1/8
    plain = VCA(self_weight=1 / 8, ratio=0.0).aggregate(own, received)
    assert inputs_var / var(plain.tensor("w")) == pytest.approx(8, rel=0.15)

    exact = VCA(self_weight=1 / 8, eps=0.0).aggregate(own, received)
    assert var(exact.tensor("w")) == pytest.approx(inputs_var, rel=1e-5)
    # eps = 1e-4 is not small next to Var(merged) ~ 0.002: the restored variance is ~4% short
    default = VCA(self_weight=1 / 8).aggregate(own, received)
    assert var(default.tensor("w")) == pytest.approx(inputs_var, rel=0.06)
    assert var(default.tensor("w")) < inputs_var


class DropSender:
    def __init__(self, sender):
        self.sender = sender
        self.calls = []

    def select(self, own, received):
        self.calls.append((own.sender, [c.sender for c in received]))
        return [c for c in received if c.sender != self.sender]


def test_selection_filters_before_merging():
    gen = torch.Generator().manual_seed(4)
    shapes = {"w": (5, 5)}
    own = Contribution("own", random_state(shapes, gen))
    honest = [Contribution(f"p{i}", random_state(shapes, gen)) for i in range(3)]
    evil = Contribution("evil", random_state(shapes, gen, scale=1e3, shift=1e3))
    selection = DropSender("evil")
    out = VCA(selection=selection).aggregate(own, [*honest, evil])
    assert selection.calls == [("own", ["p0", "p1", "p2", "evil"])]
    torch.testing.assert_close(out.flat, VCA().aggregate(own, honest).flat)

    alone = VCA(selection=DropSender("evil")).aggregate(own, [evil])
    assert torch.equal(alone.flat, own.state.flat)


def test_nothing_received_returns_the_own_model():
    own = Contribution("own", small_net_state(0))
    out = VCA().aggregate(own, [])
    assert torch.equal(out.flat, own.state.flat)
    assert out.flat.data_ptr() != own.state.flat.data_ptr()
    assert out.layout is own.state.layout


def test_one_instance_serves_several_layouts():
    gen = torch.Generator().manual_seed(5)
    rule = VCA(eps=0.0)
    for shapes in ({"w": (4, 4)}, {"a": (3, 2), "b": (2, 5, 2)}, {"w": (4, 4)}):
        own = Contribution("own", random_state(shapes, gen))
        received = [Contribution(f"p{i}", random_state(shapes, gen)) for i in range(2)]
        out = rule.aggregate(own, received)
        for name in shapes:
            assert var(out.tensor(name)) == pytest.approx(target_of(name, own, received, 0.5), rel=1e-5)


def test_a_constant_tensor_stays_finite():
    own = Contribution("own", ModelState.from_tensors({"w": torch.full((3, 3), 2.0)}))
    other = Contribution("p", ModelState.from_tensors({"w": torch.full((3, 3), 4.0)}))
    out = VCA(eps=0.0).aggregate(own, [other])
    torch.testing.assert_close(out.tensor("w"), torch.full((3, 3), 3.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": -0.1},
        {"ratio": 1.1},
        {"self_weight": -0.01},
        {"self_weight": 1.5},
        {"eps": -1e-6},
        {"eps": float("nan")},
        {"ratio": float("nan")},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        VCA(**kwargs)


def test_bad_selection_and_weights_are_refused():
    with pytest.raises(TypeError):
        VCA(selection=object())
    own = Contribution("own", ModelState.from_tensors({"w": torch.ones(2, 2)}))
    with pytest.raises(ValueError, match="non-negative"):
        VCA().aggregate(own, [Contribution("p", own.state, weight=-1)])
    with pytest.raises(ValueError, match="positive sum"):
        VCA().aggregate(own, [Contribution("p", own.state, weight=0)])


def test_vca_built_by_name_can_filter_first_with_multi_krum():
    from p2pfl.aggregation import MultiKrum
    from p2pfl.aggregation.registry import build_aggregator
    from p2pfl.errors import ConfigError

    rule = build_aggregator("vca", selection="multi_krum", selection_params={"f": 1}, self_weight=0.5)
    assert isinstance(rule, VCA) and isinstance(rule.selection, MultiKrum)
    with pytest.raises(ConfigError, match="cannot select"):
        build_aggregator("vca", selection="median")
