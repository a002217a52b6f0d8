"""Exhaustive transform: exact on every mask, chosen by auto when 2^n fits, refused before spend otherwise."""

import itertools

import numpy as np
import pytest

from spex_api import Explainer
from spex_api.engine.exhaustive import Exhaustive, all_masks
from spex_api.engine.fourier import SparseFourier, fwht
from spex_api.engine.planner import minimum_budget, plan


def brute_force_transform(values: np.ndarray, masks: np.ndarray) -> dict:
    n = masks.shape[1]
    out = {}
    for size in range(n + 1):
        for k in itertools.combinations(range(n), size):
            chars = (-1.0) ** masks[:, list(k)].sum(axis=1)
            out[k] = float(np.mean(values * chars))
    return out


def test_walsh_hadamard_matches_definition():
    rng = np.random.default_rng(0)
    masks = all_masks(5)
    y = rng.standard_normal(32)
    F = fwht(y) / 32
    brute = brute_force_transform(y, masks)
    for idx, value in enumerate(F):
        key = tuple(i for i in range(5) if idx >> i & 1)
        assert value == pytest.approx(brute[key], abs=1e-12)


def test_exhaustive_recovers_every_coefficient_with_2n_queries():
    truth = SparseFourier(6, [(), (0,), (1, 4), (2, 3, 5)], [0.5, -1.0, 2.0, 0.25])
    calls = []

    def fn(m):
        calls.append(len(m))
        return truth.predict(m)

    result = Exhaustive(6).fit(fn)
    assert calls == [64] and result.queries_used == 64
    assert result.fourier.to_dict() == pytest.approx(truth.to_dict())


def test_auto_picks_exhaustive_when_every_mask_fits():
    p = plan(8, 300)
    assert p.method == "exhaustive" and p.total == 256 and p.n_holdout == 0
    assert "2^8" in p.reason and "exact" in p.describe()
    assert plan(12, 3000).method != "exhaustive"  # 4096 masks do not fit
    assert minimum_budget(3) == 8  # auto at n=3 needs only the 8 masks


def test_explainer_exhaustive_is_exact_and_within_budget():
    truth = SparseFourier(7, [(), (1, 2), (0, 3, 6)], [1.0, -1.5, 0.75])
    e = Explainer(truth.predict, 7, budget=200, feature_names=list("abcdefg")).explain()
    assert e.method == "exhaustive" and e.queries_used == 128 <= 200
    assert e.faithfulness == pytest.approx(1.0)
    assert e.top(1)[0].names == ("b", "c")


def test_exhaustive_refuses_before_any_query():
    calls = []
    with pytest.raises(ValueError, match="minimum of 64"):
        Explainer(lambda m: calls.append(1) or np.zeros(len(m)), 6, budget=63, method="exhaustive")
    with pytest.raises(ValueError, match="n <= 20"):
        plan(21, 10**7, method="exhaustive")
    assert calls == []
