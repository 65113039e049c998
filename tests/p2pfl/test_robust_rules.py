"""Byzantine-robust aggregation rules (ALGORITHMS.md section 4).

The rules compute distances from Gram matrices and iterate on n x n coefficients; the reference
implementations here do it the direct way (cdist, loops over rows, sort) in float64 and the tests
check that both agree, besides the robustness properties themselves.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.aggregation import (
    VCA,
    Aggregator,
    CenteredClipping,
    ClippedGossip,
    Contribution,
    FedAvg,
    GeometricMedian,
    Krum,
    MultiKrum,
    TrimmedMean,
)
from p2pfl.aggregation import distances as distances_module
from p2pfl.aggregation import median as median_module
from p2pfl.aggregation.clipping import centered_clipping, clipped_gossip
from p2pfl.aggregation.distances import centered_gram, pairwise_sq_distances
from p2pfl.aggregation.geometric_median import geometric_median
from p2pfl.aggregation.krum import krum, krum_scores, multi_krum
from p2pfl.aggregation.median import BitonicNetwork, coordinate_median, median_by_selection, trimmed_mean
from p2pfl.aggregation.registry import AGGREGATORS, build_aggregator
from p2pfl.errors import ConfigError
from p2pfl.model_state import ModelState

# Parameters that make every registered rule buildable; the robust ones at f = 1.
GOOD_PARAMS = {
    "fedavg": {},
    "vca": {},
    "median": {},
    "trimmed_mean": {"f": 1},
    "krum": {"f": 1},
    "multi_krum": {"f": 1, "m": 2},
    "geometric_median": {"iterations": 50},
    "centered_clipping": {"tau": 1.0, "iterations": 3},
    "clipped_gossip": {"tau": 1.0},
}
ROBUST = [name for name in GOOD_PARAMS if name not in ("fedavg", "vca")]
BAD_PARAMS = [
    ("trimmed_mean", {}),
    ("trimmed_mean", {"f": 1, "beta": 0.1}),
    ("trimmed_mean", {"f": -1}),
    ("trimmed_mean", {"beta": 0.5}),
    ("trimmed_mean", {"f": 1.5}),
    ("median", {"f": 1}),
    ("median", {"include_own": "yes"}),
    ("krum", {}),
    ("krum", {"f": -1}),
    ("krum", {"f": True}),
    ("krum", {"f": 1, "m": 2}),
    ("multi_krum", {"f": 1, "m": 0}),
    ("geometric_median", {"iterations": 0}),
    ("geometric_median", {"eps": 0.0}),
    ("geometric_median", {"eps": math.inf}),
    ("centered_clipping", {}),
    ("centered_clipping", {"tau": -1.0}),
    ("centered_clipping", {"tau": 1.0, "iterations": 0}),
    ("centered_clipping", {"tau": 1.0, "center": "mean"}),
    ("clipped_gossip", {}),
    ("clipped_gossip", {"tau": 1.0, "k": 2}),
    ("clipped_gossip", {"k": 0}),
    ("clipped_gossip", {"tau": math.nan}),
]


def state_of(vector: torch.Tensor) -> ModelState:
    return ModelState.from_tensors({"w": vector.reshape(-1, 1).float().clone(), "b": torch.zeros(1)})


def contributions(rows: torch.Tensor, weights=None) -> list[Contribution]:
    weights = weights or [1.0] * rows.shape[0]
    return [
        Contribution(f"p{i}", state_of(row), w) for i, (row, w) in enumerate(zip(rows, weights, strict=True))
    ]


def flat_w(state: ModelState) -> torch.Tensor:
    return state.tensor("w").reshape(-1)


# --- distances ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_pairwise_sq_distances_match_cdist(shift, monkeypatch):
    monkeypatch.setitem(distances_module._CHUNK_ELEMENTS, "cpu", 512)  # many column chunks
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(7, 1001, generator=gen) * 0.01 + shift  # close models, large norms
    expected = torch.cdist(matrix.double(), matrix.double()) ** 2
    got = pairwise_sq_distances(matrix, matrix[3])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    assert torch.all(got.diagonal() == 0)
    torch.testing.assert_close(
        centered_gram(matrix, matrix[3], diagonal_only=True), expected[3], rtol=1e-4, atol=1e-9
    )


def test_a_row_too_far_for_float32_is_infinitely_far_not_nan():
    matrix = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    matrix[2] = 1e30
    distances = pairwise_sq_distances(matrix, matrix[0])
    assert not distances.isnan().any()
    assert torch.isinf(distances[2, [0, 1, 3]]).all() and torch.isinf(distances[[0, 1, 3], 2]).all()
    near = [0, 1, 3]
    expected = torch.cdist(matrix[near].double(), matrix[near].double()) ** 2
    torch.testing.assert_close(distances[near][:, near], expected, rtol=1e-5, atol=1e-6)


def test_centring_is_what_keeps_close_models_apart():
    """Without a centre near the models the Gram identity loses the distances to cancellation."""
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(5, 10_000, generator=gen) * 1e-3 + 10.0
    expected = torch.cdist(matrix.double(), matrix.double()) ** 2
    centred = pairwise_sq_distances(matrix, matrix[0])
    gram = (matrix @ matrix.T).double()
    norms = gram.diagonal()
    naive = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0)
    assert (centred - expected).abs().max() < 1e-3 * expected.max()
    assert (naive - expected).abs().max() > 1e-1 * expected.max()


# --- sorting network ------------------------------------------------------------------------------------


def expected_part(block, rows):
    return torch.sort(block[:rows], dim=0).values


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 32, 64])
def test_bitonic_sort_equals_torch_sort(rows):
    gen = torch.Generator().manual_seed(rows)
    block = torch.randint(-5, 5, (rows, 257), generator=gen).float()  # many ties
    expected = torch.sort(block, dim=0).values
    network = BitonicNetwork(rows, 257)
    assert torch.equal(network.sort(block), expected)
    assert torch.equal(
        network.sort(block[: rows // 2 + 1])[: rows // 2 + 1], expected_part(block, rows // 2 + 1)
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 25), st.integers(0, 2**31 - 1))
def test_median_and_trimmed_mean_match_sort(n, trim, seed):
    matrix = torch.randn(n, 300, generator=torch.Generator().manual_seed(seed))
    ordered = torch.sort(matrix.double(), dim=0).values
    middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    torch.testing.assert_close(coordinate_median(matrix).double(), middle, rtol=0, atol=1e-6)
    torch.testing.assert_close(median_by_selection(matrix).double(), middle, rtol=0, atol=1e-6)
    t = min(trim, (n - 1) // 2)
    torch.testing.assert_close(
        trimmed_mean(matrix, trim).double(), ordered[t : n - t].mean(0), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("max_rows", [256, 8])  # the sorting network, and torch.sort past its limit
def test_median_over_many_column_blocks(monkeypatch, max_rows):
    monkeypatch.setattr(median_module, "_SERIAL_ELEMENTS", 256)
    monkeypatch.setitem(distances_module._CHUNK_ELEMENTS, "cpu", 256)
    monkeypatch.setattr(median_module, "_NETWORK_MAX_ROWS", max_rows)
    matrix = torch.randn(9, 1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(coordinate_median(matrix), torch.median(matrix, dim=0).values)
    ordered = torch.sort(matrix, dim=0).values
    torch.testing.assert_close(trimmed_mean(matrix, 2), ordered[2:7].mean(0))


def test_overwriting_the_matrix_gives_the_same_results():
    """The rules centre their own stacked matrix in place; the functions leave a caller's alone."""
    gen = torch.Generator().manual_seed(11)
    matrix = torch.randn(9, 301, generator=gen) + 5.0
    matrix[7:] += 50.0
    center = matrix[0].clone()
    weights = torch.full((9,), 0.1)
    cases = [
        lambda m, o: krum(m, 2, center, overwrite=o),
        lambda m, o: multi_krum(m, 2, None, center, overwrite=o),
        lambda m, o: multi_krum(m, 2, 3, None, overwrite=o),
        lambda m, o: geometric_median(m, center, iterations=20, overwrite=o),
        lambda m, o: geometric_median(m, None, iterations=20, overwrite=o),
        lambda m, o: centered_clipping(m, center, tau=1.0, iterations=1, overwrite=o),
        lambda m, o: centered_clipping(m, center, tau=1.0, iterations=3, overwrite=o),
        lambda m, o: clipped_gossip(m, center, weights, k=3, overwrite=o),
    ]
    for case in cases:
        kept = matrix.clone()
        expected = case(kept, False)
        assert torch.equal(kept, matrix)
        scratch = matrix.clone()
        torch.testing.assert_close(case(scratch, True), expected, rtol=1e-5, atol=1e-5)
        assert not torch.equal(scratch, matrix)


# --- every rule: symmetric, and the identity on identical inputs ----------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(list(GOOD_PARAMS)), st.integers(3, 9), st.integers(0, 2**31 - 1), st.randoms())
def test_every_rule_ignores_the_order_of_received_models(name, n, seed, rnd):
    gen = torch.Generator().manual_seed(seed)
    own = Contribution("own", state_of(torch.randn(6, generator=gen)), 2.0)
    received = contributions(torch.randn(n, 6, generator=gen), [float(i + 1) for i in range(n)])
    shuffled = received[:]
    rnd.shuffle(shuffled)
    rule = build_aggregator(name, **GOOD_PARAMS[name])
    first = rule.aggregate(own, received).flat
    second = build_aggregator(name, **GOOD_PARAMS[name]).aggregate(own, shuffled).flat
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_the_math_is_symmetric_in_the_rows(n, seed):
    """Below the canonical order of `participants`: permuting the rows permutes nothing in the result."""
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n, 40, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    center = torch.randn(40, generator=gen)
    weights = torch.rand(n, generator=gen) / n
    perm = torch.randperm(n, generator=gen)
    shuffled = matrix[perm]

    def same(a, b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    same(coordinate_median(shuffled), coordinate_median(matrix))
    same(trimmed_mean(shuffled, 2), trimmed_mean(matrix, 2))
    same(geometric_median(shuffled, center, iterations=20), geometric_median(matrix, center, iterations=20))
    same(
        centered_clipping(shuffled, center, tau=1.0, iterations=3),
        centered_clipping(matrix, center, tau=1.0, iterations=3),
    )
    same(clipped_gossip(shuffled, center, weights[perm], k=2), clipped_gossip(matrix, center, weights, k=2))
    scores = krum_scores(pairwise_sq_distances(matrix, center), 1)
    same(krum_scores(pairwise_sq_distances(shuffled, center), 1), scores[perm])


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(list(GOOD_PARAMS)),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=6),
    st.integers(0, 6),
)
def test_every_rule_returns_identical_inputs_unchanged(name, values, copies):
    vector = torch.tensor(values)
    own = Contribution("own", state_of(vector), 2.0)
    received = [Contribution(f"p{i}", state_of(vector), i + 1.0) for i in range(copies)]
    rule = build_aggregator(name, **GOOD_PARAMS[name])
    out = rule.aggregate(own, received)
    torch.testing.assert_close(out.flat, own.state.flat, rtol=1e-5, atol=1e-4)
    assert out.layout is own.state.layout


def test_rules_own_weight_zero_means_the_own_model_takes_no_part():
    """The MoDeST aggregator passes its own model with weight 0: only the received models count."""
    own = Contribution("own", state_of(torch.full((4,), 1e6)), 0.0)
    received = contributions(torch.arange(12.0).reshape(3, 4))
    for name in ("median", "trimmed_mean", "geometric_median", "multi_krum"):
        out = build_aggregator(name, **GOOD_PARAMS[name]).aggregate(own, received)
        assert flat_w(out).abs().max() < 20, name


# --- coordinate-wise rules ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12).flatmap(lambda honest: st.tuples(st.just(honest), st.integers(0, honest - 1))),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["median", "trimmed_mean"]),
)
def test_coordinate_rules_stay_within_the_honest_range(sizes, seed, name):
    honest, byzantine = sizes  # byzantine < honest: f < n / 2
    gen = torch.Generator().manual_seed(seed)
    good = torch.randn(honest, 20, generator=gen)
    signs = torch.where(torch.rand(byzantine, 20, generator=gen) < 0.5, -1.0, 1.0)
    evil = signs * 1e30
    own = Contribution("own", state_of(good[0]))
    received = contributions(torch.cat([good[1:], evil]))
    params = {"f": byzantine} if name == "trimmed_mean" else {}
    out = flat_w(build_aggregator(name, **params).aggregate(own, received))
    assert torch.all(out >= good.min(0).values - 1e-6)
    assert torch.all(out <= good.max(0).values + 1e-6)
    mean = flat_w(FedAvg().aggregate(own, received))
    if byzantine:
        assert mean.abs().max() > 1e20  # what the robust rules protect against


def test_trimmed_mean_beta_trims_a_fraction_and_degrades_to_the_median():
    rows = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    own, received = Contribution("own", state_of(rows[0])), contributions(rows[1:])
    beta = TrimmedMean(beta=0.2).aggregate(own, received)  # floor(0.2 * 5) = 1 each side
    torch.testing.assert_close(flat_w(beta), torch.tensor([3.0]))
    capped = TrimmedMean(f=10).aggregate(own, received)
    torch.testing.assert_close(flat_w(capped), torch.tensor([3.0]))
    plain = TrimmedMean(f=0).aggregate(own, received)
    torch.testing.assert_close(flat_w(plain), torch.tensor([22.0]))


# --- Krum and Multi-Krum ---------------------------------------------------------------------------------


def outlier_setup(seed, honest=7, byzantine=3, d=30, distance=50.0):
    gen = torch.Generator().manual_seed(seed)
    good = torch.randn(honest, d, generator=gen)
    evil = torch.randn(byzantine, d, generator=gen) * 0.01 + distance  # colluding, tightly packed
    return good, evil


@pytest.mark.parametrize("seed", range(5))
def test_krum_picks_an_honest_model_when_the_outliers_are_far(seed):
    good, evil = outlier_setup(seed)
    own = Contribution("own", state_of(good[0]))
    out = flat_w(Krum(f=3).aggregate(own, contributions(torch.cat([good[1:], evil]))))
    assert torch.linalg.vector_norm(good - out, dim=1).min() < 1e-5  # one of them, up to rounding
    # Multi-Krum with m = n - f averages exactly the honest ones
    multi = flat_w(MultiKrum(f=3).aggregate(own, contributions(torch.cat([good[1:], evil]))))
    torch.testing.assert_close(multi, good.mean(0), rtol=1e-5, atol=1e-5)


def test_krum_scores_match_a_cdist_reference():
    gen = torch.Generator().manual_seed(4)
    matrix = torch.randn(9, 100, generator=gen) + torch.arange(9.0).unsqueeze(1)
    f = 2
    reference = torch.cdist(matrix.double(), matrix.double()) ** 2
    expected = torch.stack(
        [
            torch.sort(torch.cat([row[:i], row[i + 1 :]])).values[: 9 - f - 2].sum()
            for i, row in enumerate(reference)
        ]
    )
    torch.testing.assert_close(
        krum_scores(pairwise_sq_distances(matrix, matrix[0]), f), expected, rtol=1e-5, atol=0
    )


def test_multi_krum_as_a_vca_selection_filters_before_merging():
    good, evil = outlier_setup(0, honest=6, byzantine=2)
    own = Contribution("own", state_of(good[0]))
    received = contributions(torch.cat([good[1:], evil]))
    selection = MultiKrum(f=2)
    chosen = selection.select(own, received)
    assert [c.sender for c in chosen] == [c.sender for c in received[:5]]  # default m = received - f
    (krum_choice,) = Krum(f=2).select(own, received)
    assert krum_choice.sender in {c.sender for c in received[:5]}
    merged = flat_w(VCA(selection=MultiKrum(f=2), ratio=0.0).aggregate(own, received))
    torch.testing.assert_close(merged, 0.5 * good[0] + 0.5 * good[1:].mean(0), rtol=1e-5, atol=1e-5)
    assert MultiKrum(f=1).select(own, []) == []


# --- geometric median ------------------------------------------------------------------------------------


def weiszfeld_reference(matrix, iterations, eps):
    matrix = matrix.double()
    z = matrix.mean(0)
    for _ in range(iterations):
        inverse = 1.0 / torch.linalg.vector_norm(matrix - z, dim=1).clamp_min(eps)
        z = (inverse / inverse.sum()) @ matrix
    return z


def test_geometric_median_matches_the_direct_weiszfeld_iteration(monkeypatch):
    monkeypatch.setitem(distances_module._CHUNK_ELEMENTS, "cpu", 100)
    gen = torch.Generator().manual_seed(5)
    matrix = torch.randn(8, 503, generator=gen) + 3.0
    got = geometric_median(matrix, matrix[2], iterations=20, eps=1e-6)
    torch.testing.assert_close(got.double(), weiszfeld_reference(matrix, 20, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("byzantine", [1, 3, 4])
def test_geometric_median_resists_a_minority_of_outliers_where_the_mean_does_not(byzantine):
    gen = torch.Generator().manual_seed(byzantine)
    honest = 9 - byzantine
    centre = torch.randn(40, generator=gen)
    good = centre + 0.1 * torch.randn(honest, 40, generator=gen)
    evil = centre + 1e3 + torch.randn(byzantine, 40, generator=gen)
    own = Contribution("own", state_of(good[0]))
    received = contributions(torch.cat([good[1:], evil]))
    robust = flat_w(GeometricMedian().aggregate(own, received))
    mean = flat_w(FedAvg().aggregate(own, received))
    assert torch.linalg.vector_norm(robust - centre) < 1.0
    assert torch.linalg.vector_norm(mean - centre) > 100.0


# --- clipping -------------------------------------------------------------------------------------------


def test_centered_clipping_matches_a_loop_over_rows():
    gen = torch.Generator().manual_seed(6)
    matrix = torch.randn(6, 77, generator=gen) * torch.tensor([1.0, 2, 3, 5, 8, 13]).unsqueeze(1)
    center = torch.randn(77, generator=gen)
    tau = 6.0
    v = center.double()
    for _ in range(4):
        step = torch.zeros_like(v)
        for row in matrix.double():
            diff = row - v
            step += diff * min(1.0, tau / torch.linalg.vector_norm(diff).item())
        v = v + step / 6
    got = centered_clipping(matrix, center, tau=tau, iterations=4)
    torch.testing.assert_close(got.double(), v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3])
def test_centered_clipping_bounds_a_far_outlier_to_tau(iterations):
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(10, generator=gen)
    honest = base + 0.01 * torch.randn(4, 10, generator=gen)
    far = base + 1e6
    own = Contribution("own", state_of(base))
    rule = CenteredClipping(tau=0.5, iterations=iterations)
    out = flat_w(rule.aggregate(own, contributions(torch.cat([honest, far.unsqueeze(0)]))))
    clean = flat_w(rule.aggregate(own, contributions(honest)))
    n = 6  # own, four honest, one outlier
    shift = torch.linalg.vector_norm(out - base)
    assert shift <= iterations * 0.5 / n + 0.05  # the outlier moves each step at most tau / n
    assert torch.linalg.vector_norm(clean - base) < 0.05


def test_centered_clipping_can_start_from_its_previous_result():
    zeros = contributions(torch.zeros(3, 5))
    rule = CenteredClipping(tau=1.0, center="previous")
    first = flat_w(rule.aggregate(Contribution("own", state_of(torch.zeros(5)), 0.0), zeros))
    torch.testing.assert_close(first, torch.zeros(5))
    moved = Contribution("own", state_of(torch.full((5,), 100.0)), 0.0)  # takes no part, not the centre
    torch.testing.assert_close(flat_w(rule.aggregate(moved, zeros)), torch.zeros(5))
    anchored = flat_w(CenteredClipping(tau=1.0).aggregate(moved, zeros))
    torch.testing.assert_close(torch.linalg.vector_norm(anchored - 100.0), torch.tensor(1.0))


def test_clipped_gossip_matches_a_loop_and_bounds_each_neighbour():
    gen = torch.Generator().manual_seed(8)
    own_vector = torch.randn(12, generator=gen)
    rows = own_vector + torch.randn(5, 12, generator=gen) * torch.tensor([0.1, 0.2, 0.3, 5.0, 1e6]).unsqueeze(
        1
    )
    weights = [1.0, 2.0, 1.0, 1.0, 3.0]
    own = Contribution("own", state_of(own_vector), 2.0)
    tau = 1.0
    expected = own_vector.double().clone()
    for row, w in zip(rows.double(), weights, strict=True):
        diff = row - own_vector.double()
        expected += w / 10.0 * diff * min(1.0, tau / torch.linalg.vector_norm(diff).item())
    got = flat_w(ClippedGossip(tau=tau).aggregate(own, contributions(rows, weights)))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.linalg.vector_norm(got - own_vector) <= tau * sum(weights) / 10.0 + 1e-5
    # with a radius above every distance but the outlier's, the close neighbours pass unchanged
    wide = flat_w(ClippedGossip(tau=100.0).aggregate(own, contributions(rows[:4], weights[:4])))
    plain = flat_w(FedAvg().aggregate(own, contributions(rows[:4], weights[:4])))
    torch.testing.assert_close(wide, plain, rtol=1e-5, atol=1e-5)


def test_clipped_gossip_adaptive_radius_is_the_kth_closest_distance():
    own_vector = torch.zeros(3)
    rows = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [1e6, 0, 0]])
    own = Contribution("own", state_of(own_vector), 0.0)
    got = flat_w(ClippedGossip(k=2).aggregate(own, contributions(rows)))  # radius 2
    torch.testing.assert_close(got, torch.tensor([1.0 + 2.0, 2.0, 2.0]) / 4)
    direct = clipped_gossip(rows, own_vector, torch.full((4,), 0.25), k=10)  # k capped: radius 1e6
    torch.testing.assert_close(direct, rows.mean(0))
    alone = ClippedGossip(k=1).aggregate(own, [])
    assert torch.equal(alone.flat, own.state.flat) and alone.flat is not own.state.flat


@pytest.mark.parametrize("huge", [1e30, 3e38])
@pytest.mark.parametrize("name", ROBUST)
def test_models_too_large_for_float32_squares_neither_win_nor_poison(name, huge):
    """Finite values pass the edge checks, but their squares overflow float32 in the Gram matrix."""
    gen = torch.Generator().manual_seed(10)
    good = torch.randn(7, 16, generator=gen) * 0.1
    evil = torch.full((2, 16), huge)
    evil[1] *= -1
    own = Contribution("own", state_of(good[0]))
    params = {**GOOD_PARAMS[name], **({"f": 2} if "f" in GOOD_PARAMS[name] else {})}
    params.pop("m", None)
    out = flat_w(build_aggregator(name, **params).aggregate(own, contributions(torch.cat([good[1:], evil]))))
    assert torch.isfinite(out).all()
    assert torch.linalg.vector_norm(out - good.mean(0)) < 2.0


# --- registry --------------------------------------------------------------------------------------------


def test_every_rule_is_registered_and_builds():
    assert set(GOOD_PARAMS) <= set(AGGREGATORS)  # other rules (wrappers, Bristle) have their own tests
    for name, params in GOOD_PARAMS.items():
        factory = AGGREGATORS[name]
        expected = factory if isinstance(factory, type) else Aggregator  # vca, reputation: factories
        assert isinstance(build_aggregator(name, **params), expected)


@pytest.mark.parametrize(("name", "params"), BAD_PARAMS)
def test_bad_parameters_are_config_errors(name, params):
    with pytest.raises(ConfigError, match=name):
        build_aggregator(name, **params)


def test_negative_weights_are_refused():
    own = Contribution("own", state_of(torch.zeros(2)))
    for name in ROBUST:
        with pytest.raises(ValueError, match="non-negative"):
            build_aggregator(name, **GOOD_PARAMS[name]).aggregate(
                own, contributions(torch.ones(2, 2), [1.0, -1.0])
            )


# --- on a GPU: same results, and no synchronisation with the host inside the math ------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rules_on_cuda_match_cpu_without_host_synchronisation():
    gen = torch.Generator().manual_seed(9)
    matrix = torch.randn(11, 5000, generator=gen)
    matrix[8:] += 10.0
    center, weights = matrix[0].clone(), torch.full((11,), 1 / 12)

    def run(m, c, w):
        scores = krum_scores(pairwise_sq_distances(m, c), 3)
        return [
            coordinate_median(m),
            trimmed_mean(m, 3),
            scores,
            m.index_select(0, torch.topk(scores, 1, largest=False).indices).squeeze(0),
            geometric_median(m, c, iterations=30),
            centered_clipping(m, c, tau=2.0, iterations=1),
            centered_clipping(m, c, tau=2.0, iterations=3),
            clipped_gossip(m, c, w, tau=2.0),
            clipped_gossip(m, c, w, k=5),
        ]

    expected = run(matrix, center, weights)
    cuda = [t.cuda() for t in (matrix, center, weights)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = run(*cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [32, 33, 34])  # sorted in a warp; selected by kthvalue beyond
def test_median_on_cuda_matches_cpu_on_either_side_of_the_selection_switch(n):
    matrix = torch.randint(-50, 50, (n, 4000), generator=torch.Generator().manual_seed(n)).float()
    torch.testing.assert_close(
        coordinate_median(matrix.cuda()).cpu(), coordinate_median(matrix), rtol=0, atol=0
    )
