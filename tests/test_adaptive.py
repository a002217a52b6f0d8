"""Adaptive ProxySPEX: rounds as planned, one value-function call per round, exact accounting, reproducible."""

import numpy as np
import pytest

from benchmarks._planted import planted_hierarchical
from spex_api.engine.adaptive import AdaptiveProxySPEX, active_features, feature_importance, focused_masks
from spex_api.engine.explainer import Explainer
from spex_api.engine.fourier import SparseFourier
from spex_api.engine.oracle import BudgetExceededError, Oracle
from spex_api.engine.plan import Plan
from spex_api.engine.planner import plan


class Recorder:
    """A planted function that keeps every batch it is asked."""

    def __init__(self, n, seed=1):
        self.f = planted_hierarchical(n, n_top=5, noise=0.2, seed=seed)
        self.batches = []

    def __call__(self, masks):
        self.batches.append(np.array(masks, dtype=bool))
        return self.f(masks)


def test_importance_and_active_features():
    f = SparseFourier(5, [(), (0,), (1, 2), (4,)], [3.0, 2.0, 1.0, 0.1])
    assert feature_importance(f) == pytest.approx([4.0, 1.0, 1.0, 0.0, 0.01])
    assert active_features(f, 0.9).tolist() == [0, 1, 2]
    assert active_features(SparseFourier(5, [()], [1.0]), 0.9).tolist() == []


def test_focused_masks_are_new_distinct_and_lean_on_the_active_features():
    rng = np.random.default_rng(0)
    seen = rng.random((50, 30)) < 0.5
    masks = focused_masks(30, 2000, np.array([3, 7]), 0.8, rng, seen)
    assert masks.shape == (2000, 30)
    packed = np.packbits(np.concatenate([seen, masks]), axis=1)
    assert len(np.unique(packed, axis=0)) == 2050
    assert masks[:, [3, 7]].mean() == pytest.approx(0.8, abs=0.03)
    assert np.delete(masks, [3, 7], axis=1).mean() == pytest.approx(0.5, abs=0.02)


def test_one_call_per_round_exact_accounting_and_reproducible():
    runs = []
    for _ in range(2):
        fn = Recorder(40)
        oracle = Oracle(fn, 40, budget=300)
        expl = AdaptiveProxySPEX(40, n_samples=300, random_state=3).fit(oracle)
        assert len(fn.batches) == 2  # one batch per round
        assert [len(b) for b in fn.batches] == [150, 150]
        asked = np.concatenate(fn.batches)
        assert len(np.unique(np.packbits(asked, axis=1), axis=0)) == 300  # no mask paid twice
        assert expl.queries_used == oracle.queries_used == 300
        assert expl.diagnostics.params["adaptive_rounds"] == 2
        assert "round 2" in expl.diagnostics.reasons[-1]
        runs.append((asked, expl.fourier))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1].keys == runs[1][1].keys and np.array_equal(runs[0][1].values, runs[1][1].values)


def test_a_generator_random_state_seeds_every_round_and_fit_alike():
    """A numpy Generator is drawn once, like every other estimator's random_state: equal Generators, equal runs."""
    runs = []
    for _ in range(2):
        fn = Recorder(40)
        expl = AdaptiveProxySPEX(40, n_samples=300, random_state=np.random.default_rng(5)).fit(Oracle(fn, 40))
        runs.append((np.concatenate(fn.batches), expl.fourier))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1].keys == runs[1][1].keys and np.array_equal(runs[0][1].values, runs[1][1].values)


def test_answers_already_held_are_free_and_the_budget_holds():
    fn = Recorder(40)
    oracle = Oracle(fn, 40, budget=300)
    est = AdaptiveProxySPEX(40, n_samples=300, random_state=3)
    from spex_api.engine.proxyspex import uniform_masks

    oracle(uniform_masks(40, 20, np.random.default_rng(3)))  # e.g. a noise pilot: the head of round 1
    expl = est.fit(oracle)
    assert expl.queries_used == 280 and oracle.queries_used == 300
    with pytest.raises(BudgetExceededError):
        AdaptiveProxySPEX(40, n_samples=300, random_state=4).fit(Oracle(Recorder(40), 40, budget=299))


def test_bad_settings_are_refused():
    for kwargs in ({"rounds": 1}, {"first_share": 1.0}, {"keep": 0.3}, {"active_share": 0.0}):
        with pytest.raises(ValueError):
            AdaptiveProxySPEX(10, **kwargs)


def test_planner_records_rounds_and_says_why():
    p = plan(40, 400, method="adaptive")
    assert p.method == "proxyspex" and p.adaptive and sum(p.rounds) == p.n_queries and len(p.rounds) == 2
    assert "adaptive rounds" in p.describe() and "rounds" in p.reason
    assert Plan.from_dict(p.to_dict()) == p
    assert not plan(40, 400, method="proxyspex").adaptive  # the non-adaptive design stays available
    auto = plan(40, 600)  # auto keeps one uniform round, and says why
    assert not auto.adaptive and "one uniform round" in auto.reason and "benchmarks/adaptive.py" in auto.reason
    with pytest.raises(ValueError, match="adaptive"):
        plan(40, 40, method="adaptive", holdout=0)


def test_explainer_spends_an_adaptive_plan_within_budget():
    fn = Recorder(30)
    expl = Explainer(fn, 30, 3300, method="adaptive", random_state=1).explain()  # 3,300 x 30: a withheld slice
    p = expl.plan
    assert p.adaptive and p.n_holdout > 0
    assert len(fn.batches) == 3  # two design rounds, then the held-out slice
    assert expl.queries_used == sum(len(b) for b in fn.batches) <= p.total <= 3300
    assert expl.faithfulness is not None
