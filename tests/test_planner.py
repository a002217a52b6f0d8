"""Budget planner: exact query counts, never over budget, clear errors before any query."""

import json
import math

import numpy as np
import pytest

from spex_api import Explainer, Plan
from spex_api.engine.planner import (MIN_HOLDOUT, PROXYSPEX_MIN_SAMPLES, auto_min_b, cross_validates, minimum_budget,
                                     plan)
from spex_api.engine.spex import SPEX


def _budgets(rng, n, method, holdout):
    low = minimum_budget(n, method, 5, holdout)
    return [low, low + 1, *rng.integers(low, 300_000, size=6).tolist()]


@pytest.mark.parametrize("method", ["auto", "spex", "proxyspex"])
@pytest.mark.parametrize("holdout", [0.0, 0.05, 0.3])
def test_plan_never_exceeds_budget_and_counts_exactly(method, holdout):
    rng = np.random.default_rng(0)
    for n in (1, 3, 12, 37, 64, 100, 256, 500, 1000, 2000):
        if method == "proxyspex" and n < 3:
            continue  # refused, see test_tiny_n_uses_spex_and_proxyspex_refuses
        for budget in _budgets(rng, n, method, holdout):
            p = plan(n, budget, method=method, holdout=holdout)
            assert p.total <= budget
            assert p.total == p.n_queries + p.n_holdout
            assert p.method in ("spex", "proxyspex", "exhaustive") and p.requested == method
            if p.method == "exhaustive":  # auto, and only when every mask fits
                assert method == "auto" and p.n_queries == 2**n == p.total and p.n_holdout == 0
                continue
            if holdout == 0 or (p.method == "proxyspex" and cross_validates(n, budget)):
                assert p.n_holdout == 0  # small ProxySPEX fits: cross-validation instead of a slice
            else:
                assert p.n_holdout >= MIN_HOLDOUT and p.n_holdout >= holdout * budget
            if p.method == "spex":
                assert p.n_queries == SPEX.n_queries(n, p.b, 5)
                # b is the largest that fits next to the held-out slice
                assert SPEX.n_queries(n, p.b + 1, 5) + p.n_holdout > budget
                assert p.t == 5
            else:
                assert p.b is None and p.n_queries == budget - p.n_holdout
                assert p.n_queries >= PROXYSPEX_MIN_SAMPLES


def test_auto_switches_from_proxyspex_to_spex_as_budget_grows():
    for n in (20, 64, 256, 1000):
        need = auto_min_b(n)
        big = math.ceil(SPEX.n_queries(n, need, 5) / 0.95) + 1
        small = SPEX.n_queries(n, need - 1, 5)
        p_small, p_big = plan(n, small), plan(n, big)
        assert p_small.method == "proxyspex" and f"n={n}" in p_small.reason
        assert p_big.method == "spex" and p_big.b >= need and f"b={p_big.b}" in p_big.reason
        assert "requested" in plan(n, big, method="proxyspex").reason


@pytest.mark.parametrize("method", ["auto", "spex", "proxyspex"])
def test_budget_below_minimum_names_the_minimum(method):
    n = 100
    minimum = minimum_budget(n, method)
    with pytest.raises(ValueError, match=rf"minimum of {minimum} queries"):
        plan(n, minimum - 1, method=method)
    assert plan(n, minimum, method=method).total <= minimum
    # without a held-out slice the minimum drops to the training minimum
    assert minimum_budget(n, method, holdout=0) < minimum
    assert plan(n, minimum_budget(n, method, holdout=0), method=method, holdout=0).n_holdout == 0


def test_bad_input_raises_before_any_query():
    calls = []

    def vf(masks):
        calls.append(len(masks))
        return np.zeros(len(masks))

    bad = [
        dict(n=0, budget=1000),
        dict(n=-3, budget=1000),
        dict(n=2.5, budget=1000),
        dict(n=10, budget=1000.0),
        dict(n=10, budget="1000"),
        dict(n=10, budget=True),
        dict(n=10, budget=10),
        dict(n=10, budget=0),
        dict(n=100, budget=300, method="spex"),
        dict(n=10, budget=1000, method="lasso"),
        dict(n=10, budget=1000, holdout=0.7),
        dict(n=10, budget=1000, max_order=0),
        dict(n=10, budget=1000, feature_names=["a", "b"]),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            Explainer(vf, **kwargs).explain()
    assert calls == []


def test_plan_round_trips_and_describes():
    p = plan(256, 20_000, method="spex", holdout=0.05)
    q = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p
    text = p.describe()
    assert "SPEX" in text and f"b={p.b}" in text and str(p.total) in text
    assert "ProxySPEX" in plan(256, 1000, method="proxyspex").describe()


def test_explainer_plan_spends_nothing():
    calls = []
    ex = Explainer(lambda m: calls.append(1) or np.zeros(len(m)), 64, 5000)
    assert ex.plan() == plan(64, 5000)
    assert calls == []


def test_tiny_n_asks_every_mask_and_proxyspex_refuses():
    for n in (1, 2):
        p = plan(n, 1000)
        assert p.method == "exhaustive" and p.total == 2**n and "all 2^" in p.reason
        assert plan(n, 1000, method="spex").method == "spex"
        with pytest.raises(ValueError, match="ProxySPEX needs n >= 3"):
            plan(n, 1000, method="proxyspex")


def test_auto_explains_its_proxyspex_choice_with_the_spex_query_count():
    # the reason names SPEX's training queries at the b it would need; a local variable once shadowed the
    # function computing them, so this branch raised TypeError whenever SPEX could afford some b >= 2
    p = plan(10, 79, method="auto")
    assert p.method == "proxyspex" and "training queries" in p.reason


def test_small_prompts_cross_validate_up_to_the_work_limit():
    """Every answer trains the fit (cross-validation judges it) for small budgets, and for small prompts up to
    CROSSVAL_MAX_WORK answers x features; larger fits keep a withheld slice (per-fold refits would cost too much)."""
    assert plan(35, 1500).n_holdout == 0 and "cross-validation" in plan(35, 1500).reason
    assert plan(211, 500).n_holdout == 0
    assert plan(211, 1500).n_holdout == 75 and plan(256, 1000).n_holdout == 50
    assert cross_validates(64, 1500) and not cross_validates(65, 1500) and cross_validates(10_000, 600)
