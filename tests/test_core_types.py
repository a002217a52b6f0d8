"""The shared core: sparse Fourier evaluation and the de-duplicating, budgeted oracle."""

import asyncio
import itertools

import numpy as np
import pytest

from providers.types import Completion, TokenLogprob, Usage
from spex_api import BudgetExceededError, Oracle, SparseFourier, ValueFunctionError, r2_score


def all_masks(n):
    return np.array(list(itertools.product([0, 1], repeat=n)), dtype=bool)


def test_sparse_fourier_matches_definition():
    f = SparseFourier(5, [(), (1,), (4, 0), (0, 4)], [1.0, 2.0, -3.0, 0.5])
    assert f.to_dict() == {(): 1.0, (1,): 2.0, (0, 4): -2.5}
    X = all_masks(5)
    expect = 1.0 + 2.0 * (-1.0) ** X[:, 1] - 2.5 * (-1.0) ** (X[:, 0].astype(int) + X[:, 4])
    assert np.allclose(f.predict(X), expect)
    assert f.degree == 2
    with pytest.raises(ValueError):
        SparseFourier(3, [(3,)], [1.0])


def test_oracle_dedups_caches_and_caps():
    f = SparseFourier(70, [(), (1,), (3, 65)], [1.0, 2.0, -3.0])
    sent = []

    def vf(m):
        sent.append(m.copy())
        return f.predict(m)

    rng = np.random.default_rng(0)
    X = rng.random((6, 70)) < 0.5
    o = Oracle(vf, 70, budget=10)
    assert np.allclose(o(np.vstack([X, X[:2]])), f.predict(np.vstack([X, X[:2]])))
    assert o.queries_used == 6 and len(sent[0]) == 6
    Y = rng.random((2, 70)) < 0.5
    assert np.allclose(o(np.vstack([X[3:], Y])), f.predict(np.vstack([X[3:], Y])))
    assert o.queries_used == 8 and len(sent) == 2 and len(sent[1]) == 2
    assert o.count_new(rng.random((5, 70)) < 0.5) == 5
    with pytest.raises(BudgetExceededError):
        o(rng.random((5, 70)) < 0.5)
    assert len(sent) == 2  # nothing was sent for the refused batch


def test_oracle_accepts_async_and_rejects_bad_scores():
    f = SparseFourier(4, [(0,)], [1.0])

    async def af(m):
        return f.predict(m)

    X = all_masks(4)
    assert np.allclose(Oracle(af, 4)(X), f.predict(X))

    async def inside_a_running_loop():  # a notebook or an async app calls the synchronous engine
        return Oracle(af, 4)(X)

    assert np.allclose(asyncio.run(inside_a_running_loop()), f.predict(X))
    with pytest.raises(ValueFunctionError, match="non-finite"):
        Oracle(lambda m: np.where(m[:, 0], np.inf, 0.0), 4)(X)
    with pytest.raises(ValueFunctionError, match="shape"):
        Oracle(lambda m: np.zeros(len(m) + 1), 4)(X)


def test_r2_score():
    y = np.array([1.0, 2.0, 3.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(3, 2.0)) == 0.0


def test_completion_roundtrip():
    c = Completion(
        texts=("True",),
        logprobs=((TokenLogprob("True", -0.1, (("True", -0.1), ("False", -2.3))),),),
        usage=Usage(10, 1),
        model="m",
        finish_reasons=("length",),
    )
    assert Completion.from_dict(c.to_dict()) == c


def test_oracle_answered_lists_distinct_masks_in_ask_order():
    f = SparseFourier(70, [(), (2, 69)], [1.0, -2.0])
    rng = np.random.default_rng(1)
    X = rng.random((5, 70)) < 0.5
    o = Oracle(f.predict, 70)
    o(np.vstack([X[:3], X[:1]]))
    o(X[2:])
    masks, scores = o.answered()
    assert masks.dtype == bool and np.array_equal(masks, X)
    assert np.allclose(scores, f.predict(X))


def test_fourier_basis_is_exact_for_large_n():
    rng = np.random.default_rng(2)
    n = 1000
    keys = [tuple(sorted(rng.choice(n, size=d, replace=False).tolist())) for d in (1, 3, 5) for _ in range(20)]
    X = rng.random((50, n)) < 0.5
    expect = np.array([[(-1.0) ** X[i, list(k)].sum() for k in keys] for i in range(50)])
    assert np.array_equal(SparseFourier(n, keys, np.ones(len(keys))).basis(X), expect)
