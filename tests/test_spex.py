"""SPEX: design arithmetic and nesting, exact and planted recovery, determinism, budgets, noise."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from scipy.linalg import hadamard

from spex_api.engine.bch import bch_parity_length
from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.spex import SPEX
from spex_api.engine.oracle import BudgetExceededError, Oracle, ValueFunctionError


def planted(n: int, n_top: int, max_degree: int, seed: int, decay: float = 0.5) -> SparseFourier:
    """Hierarchical sparse function: top interactions plus all their subsets with decaying weights."""
    rng = np.random.default_rng(seed)
    coef: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(n_top):
        top = tuple(sorted(rng.choice(n, int(rng.integers(2, max_degree + 1)), replace=False).tolist()))
        scale = rng.uniform(0.5, 1.5)
        for size in range(1, len(top) + 1):
            for sub in itertools.combinations(top, size):
                coef[sub] = coef.get(sub, 0.0) + rng.choice((-1, 1)) * scale * decay ** (len(top) - size) * rng.uniform(0.5, 1)
    return SparseFourier.from_dict(n, coef)


def random_masks(n: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, n)) < 0.5


# ---------------------------------------------------------------------------- design arithmetic
@pytest.mark.parametrize("n, b, t", [(10, 2, 5), (100, 4, 5), (256, 3, 3), (1000, 2, 5), (40, 3, 2)])
def test_n_queries_formula_equals_design_size(n: int, b: int, t: int) -> None:
    masks = SPEX(n, max_order=t).design(b)
    assert masks.shape == (SPEX.n_queries(n, b, t), n) == (3 * (bch_parity_length(n, t) + 1) * 2**b, n)
    assert masks.dtype == bool


def test_budget_table_from_algorithm_notes() -> None:
    assert [SPEX.n_queries(150, b) for b in (3, 4, 6, 8)] == [984, 1968, 7872, 31488]
    assert [SPEX.n_queries(700, b) for b in (4, 6, 8)] == [2448, 9792, 39168]


@pytest.mark.parametrize("n", [5, 100, 256, 1000])
@pytest.mark.parametrize("budget", [500, 5000, 25000, 10**6])
def test_largest_b_is_the_largest_fitting_b(n: int, budget: int) -> None:
    b = SPEX.largest_b(n, budget)
    if b is None:
        assert SPEX.n_queries(n, 1) > budget
    else:
        assert SPEX.n_queries(n, b) <= budget < SPEX.n_queries(n, b + 1)


def test_largest_b_none_below_minimum() -> None:
    assert SPEX.largest_b(1000, SPEX.n_queries(1000, 1) - 1) is None


def test_designs_are_nested_and_reuse_answers() -> None:
    n, t = 60, 4
    spex = SPEX(n, max_order=t, random_state=3)
    big, small = spex.design(6), spex.design(4)
    P1 = bch_parity_length(n, t) + 1
    np.testing.assert_array_equal(big.reshape(3, P1, 64, n)[:, :, ::4], small.reshape(3, P1, 16, n))
    calls: list[int] = []

    def fn(masks: np.ndarray) -> np.ndarray:
        calls.append(len(masks))
        return masks.sum(axis=1).astype(float)

    oracle = Oracle(fn, n)
    oracle(small)
    first = oracle.queries_used
    assert oracle.count_new(big) == len(np.unique(big, axis=0)) - first
    oracle(big)
    assert calls[1] == len(np.unique(big, axis=0)) - first


# ---------------------------------------------------------------------------- exact recovery
def test_exact_recovery_against_brute_force_transform_n10() -> None:
    """An AND-style (Möbius) function of degree <= 3; truth = Walsh-Hadamard of all 2^10 answers."""
    n = 10
    rng = np.random.default_rng(0)
    terms = [(tuple(sorted(rng.choice(n, d, replace=False).tolist())), rng.normal()) for d in (1, 2, 2, 3)]

    def fn(masks: np.ndarray) -> np.ndarray:
        return 0.3 + sum(w * masks[:, list(s)].all(axis=1) for s, w in terms)

    all_masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    truth_vec = hadamard(2**n) @ fn(all_masks) / 2**n  # F(k) with k encoded as bits of the index
    truth = {tuple(np.flatnonzero((k >> np.arange(n)) & 1).tolist()): v for k, v in enumerate(truth_vec) if abs(v) > 1e-12}

    for refit in (False, True):
        result = SPEX(n, max_order=5, b=4, refit=refit).fit(fn)
        got = {k: v for k, v in result.fourier.to_dict().items() if abs(v) > 1e-9}
        assert set(got) == set(truth), refit
        for k, v in truth.items():
            assert got[k] == pytest.approx(v, abs=1e-9)
        np.testing.assert_allclose(result.predict(all_masks), fn(all_masks), atol=1e-9)
        assert result.method == "spex"


@pytest.mark.parametrize("n, budget, n_top", [(256, 5000, 10), pytest.param(1000, 25000, 20, marks=pytest.mark.slow)])
def test_planted_hierarchical_recovery(n: int, budget: int, n_top: int) -> None:
    truth = planted(n, n_top=n_top, max_degree=4, seed=n)
    oracle = Oracle(truth.predict, n, budget)
    result = SPEX(n, max_order=5).fit(oracle)
    assert oracle.queries_used <= budget
    assert result.queries_used == oracle.queries_used
    got = result.fourier.to_dict()
    assert set(got) == set(truth.keys)
    np.testing.assert_allclose([got[k] for k in truth.keys], truth.values, atol=1e-8)
    X = random_masks(n, 1000, 1)
    assert r2_score(truth.predict(X), result.predict(X)) > 0.9999
    d = result.diagnostics
    assert d.details.b == SPEX.largest_b(n, budget) and d.details.P == bch_parity_length(n, 5)
    assert d.details.decoded >= len(truth) and d.details.refit is not None  # the refit screens any spurious decode


def test_isolated_high_order_terms_are_decoded() -> None:
    n, rng = 300, np.random.default_rng(5)
    coef = {(): 0.5}
    for d in (1, 2, 3, 4, 5, 5):
        coef[tuple(sorted(rng.choice(n, d, replace=False).tolist()))] = rng.choice((-1, 1)) * rng.uniform(1, 2)
    truth = SparseFourier.from_dict(n, coef)
    result = SPEX(n, max_order=5, b=4, decoder="hard").fit(truth.predict)
    assert result.fourier.pruned(1e-9).to_dict().keys() == truth.to_dict().keys()


# ---------------------------------------------------------------------------- determinism and settings
def test_random_state_controls_design_and_result() -> None:
    n = 80
    truth = planted(n, 6, 3, seed=2)
    a, b, c = SPEX(n, b=4, random_state=7), SPEX(n, b=4, random_state=7), SPEX(n, b=4, random_state=8)
    np.testing.assert_array_equal(a.design(), b.design())
    assert not np.array_equal(a.design(), c.design())
    ra, rb = a.fit(truth.predict), b.fit(truth.predict)
    assert ra.fourier.keys == rb.fourier.keys
    np.testing.assert_array_equal(ra.fourier.values, rb.fourier.values)
    # A Generator or None is fixed into one seed at construction: design() and fit() agree.
    for state in (None, np.random.default_rng(5)):
        spex = SPEX(n, b=3, random_state=state)
        np.testing.assert_array_equal(spex.design(), spex.design())
    # Global numpy state plays no part.
    np.random.seed(0)
    first = SPEX(n, b=3, random_state=1).design()
    np.random.seed(99)
    np.testing.assert_array_equal(first, SPEX(n, b=3, random_state=1).design())


def test_fit_does_not_change_estimator_settings() -> None:
    n = 50
    truth = planted(n, 5, 3, seed=4)
    spex = SPEX(n, max_order=4, b=None, random_state=11)
    before = copy.deepcopy(vars(spex))
    spex.fit(Oracle(truth.predict, n, budget=3000))
    spex.fit(truth.predict, b=3)
    assert vars(spex) == before


# ---------------------------------------------------------------------------- budgets and errors
def test_budget_is_respected_and_checked_before_any_query() -> None:
    n = 120
    truth = planted(n, 5, 3, seed=6)
    calls: list[int] = []

    def fn(masks: np.ndarray) -> np.ndarray:
        calls.append(len(masks))
        return truth.predict(masks)

    size = SPEX.n_queries(n, 4)
    with pytest.raises(BudgetExceededError):
        SPEX(n, b=4).fit(Oracle(fn, n, budget=len(np.unique(SPEX(n, b=4).design(), axis=0)) - 1))
    assert calls == []
    with pytest.raises(ValueError, match="budget too small"):
        SPEX(n).fit(Oracle(fn, n, budget=100))
    assert calls == []
    oracle = Oracle(fn, n, budget=size + 10)
    result = SPEX(n).fit(oracle)  # b chosen from the budget by formula
    assert result.diagnostics.details.b == 4
    assert oracle.queries_used <= size + 10 and calls == [oracle.queries_used]


def test_pre_answered_design_costs_no_new_queries() -> None:
    n = 40
    truth = planted(n, 4, 3, seed=8)
    spex = SPEX(n, b=3)
    oracle = Oracle(truth.predict, n, budget=SPEX.n_queries(n, 3))
    oracle(spex.design())  # as the Explainer does: the whole design in one batch first
    spent = oracle.queries_used
    result = spex.fit(oracle)
    assert oracle.queries_used == spent == result.diagnostics.rows_used
    assert result.queries_used == 0  # queries_used: what this call sent
    assert result.fourier.pruned(1e-9).to_dict().keys() == truth.to_dict().keys()


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="n must be"):
        SPEX(0)
    with pytest.raises(ValueError, match="decoder"):
        SPEX(10, decoder="fuzzy")
    with pytest.raises(ValueError, match="max_order"):
        SPEX(10, max_order=0)
    with pytest.raises(ValueError, match="b must be"):
        SPEX(10, b=0)
    with pytest.raises(ValueError, match="no b"):
        SPEX(10).fit(lambda m: m.sum(axis=1).astype(float))
    with pytest.raises(ValueError, match="n=9"):
        SPEX(10, b=2).fit(Oracle(lambda m: m.sum(axis=1).astype(float), 9))
    with pytest.raises(ValueFunctionError, match="shape"):
        SPEX(10, b=2).fit(lambda m: np.zeros(3))
    with pytest.raises(ValueFunctionError, match="non-finite"):
        SPEX(10, b=2).fit(lambda m: np.where(m[:, 0], np.nan, 1.0))


async def _async_fn(masks: np.ndarray) -> np.ndarray:
    return 2.0 * masks[:, 0] - masks[:, 1] * masks[:, 2]


def test_async_value_function() -> None:
    result = SPEX(8, max_order=3, b=3).fit(_async_fn)
    X = random_masks(8, 200, 0)
    np.testing.assert_allclose(result.predict(X), 2.0 * X[:, 0] - X[:, 1] * X[:, 2], atol=1e-9)


# ---------------------------------------------------------------------------- noise
@pytest.mark.slow
def test_noisy_recovery_degrades_gracefully() -> None:
    n = 200
    truth = planted(n, 8, 4, seed=9)
    signal = float(np.sqrt(np.sum(truth.values[1:] ** 2)))
    X = random_masks(n, 1000, 3)
    scores = {}
    for noise in (0.0, 0.1, 0.5):
        for decoder, refit in (("soft", True), ("hard", True), ("soft", False)):
            rng = np.random.default_rng(12)  # every variant sees the same noisy answers

            def fn(masks: np.ndarray, noise: float = noise, rng: np.random.Generator = rng) -> np.ndarray:
                return truth.predict(masks) + noise * signal * rng.standard_normal(len(masks))

            result = SPEX(n, b=5, decoder=decoder, refit=refit).fit(fn)
            scores[noise, decoder, refit] = r2_score(truth.predict(X), result.predict(X))
    assert scores[0.0, "soft", True] > 0.9999 and scores[0.0, "hard", True] > 0.9999
    assert scores[0.1, "soft", True] > 0.99
    assert 0.8 < scores[0.5, "soft", True] <= scores[0.1, "soft", True] + 1e-3
    # The refit over all samples is what keeps noisy estimates faithful.
    assert scores[0.5, "soft", True] > scores[0.5, "soft", False]
