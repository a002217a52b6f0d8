"""ProxySPEX: exact tree extraction, recovery, seeding, purity of fit, budget and input checks."""

import copy

import lightgbm as lgb
import numpy as np
import pytest

from benchmarks._planted import planted_hierarchical, random_masks
from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.proxyspex import (ProxySPEX, downward_closure, grow_candidates, select_coefficients, tree_fourier,
                                      uniform_masks)
from spex_api.engine.oracle import BudgetExceededError, Oracle, ValueFunctionError

SMALL_GRID = {"max_depth": (3,), "n_estimators": (200,)}


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_tree_extraction_is_exact(depth):
    rng = np.random.default_rng(depth)
    n = 40
    X = rng.random((400, n)) < 0.5
    y = X[:, 0] * X[:, 1] * 3.0 - X[:, 2] + X[:, 5] * X[:, 7] * X[:, 9] + rng.normal(0, 0.3, 400)
    params = {"objective": "regression", "max_depth": depth, "num_leaves": 2**depth, "min_data_in_leaf": 3,
              "learning_rate": 0.2, "verbosity": -1, "seed": 1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X.astype(np.float32), y), num_boost_round=60)
    f = tree_fourier(booster, n)
    test = rng.random((300, n)) < 0.5
    test[0], test[1] = True, False
    assert np.allclose(f.predict(test), booster.predict(test.astype(np.float32)), atol=1e-8, rtol=0)
    assert f.degree <= depth


def test_tree_extraction_of_constant_trees():
    X = np.zeros((30, 4), dtype=np.float32)
    booster = lgb.train({"objective": "regression", "verbosity": -1}, lgb.Dataset(X, np.full(30, 2.5)), 5)
    f = tree_fourier(booster, 4)
    assert f.to_dict() == pytest.approx({(): 2.5})


def test_tree_extraction_reads_a_truncated_model_and_refuses_non_binary_splits():
    rng = np.random.default_rng(3)
    X = (rng.random((300, 6)) < 0.5).astype(np.float32)
    y = 2.0 * X[:, 0] * X[:, 1] - X[:, 3] + rng.normal(0, 0.1, 300)
    params = {"objective": "regression", "max_depth": 3, "num_leaves": 8, "min_data_in_leaf": 3, "verbosity": -1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=40)
    f = tree_fourier(booster, 6, num_iteration=7)
    assert np.allclose(f.predict(X.astype(bool)), booster.predict(X, num_iteration=7), atol=1e-8, rtol=0)
    levels = np.floor(rng.random((300, 2)) * 4).astype(np.float32)  # a 4-level feature splits at 1.5 or 2.5
    booster = lgb.train(params, lgb.Dataset(levels, levels[:, 0] ** 2), num_boost_round=3)
    with pytest.raises(ValueError, match="cannot extract"):
        tree_fourier(booster, 2)


def test_selection_and_closure():
    f = SparseFourier(6, [(), (0,), (1, 2), (3, 4, 5)], [9.0, 3.0, -2.0, 1.0])
    assert select_coefficients(f, top_k=2) == [(0,), (1, 2)]
    assert select_coefficients(f, energy=0.6) == [(0,)]
    assert select_coefficients(f, energy=0.7) == [(0,), (1, 2)]
    assert select_coefficients(f) == [(0,), (1, 2), (3, 4, 5)]
    assert downward_closure([(1, 2), (0, 2)]) == [(0,), (1,), (2,), (0, 2), (1, 2)]


def test_uniform_masks_are_distinct_and_include_extremes():
    rng = np.random.default_rng(0)
    masks = uniform_masks(40, 300, rng)
    assert masks.shape == (300, 40)
    assert masks[0].all() and not masks[1].any()
    assert len(np.unique(masks, axis=0)) == 300
    assert 0.45 < masks[2:].mean() < 0.55
    small = uniform_masks(4, 100, rng)
    assert len(small) == 16 and len(np.unique(small, axis=0)) == 16 and small[0].all() and not small[1].any()


def test_recovers_planted_hierarchical_function():
    f = planted_hierarchical(64, n_top=6, max_degree=3, seed=3)
    est = ProxySPEX(64, n_samples=600, param_grid={"max_depth": (3,)}, random_state=0)
    result = est.fit(f)
    X = random_masks(64, 1000, seed=99)
    assert r2_score(f.clean(X), result.predict(X)) > 0.98
    assert result.queries_used == 600 and f.queries == 600 and f.calls == 1  # one batch
    assert result.method == "proxyspex"
    top = {i.features for i in result.top(5)}
    truth = sorted((k for k in f.fourier.keys if k), key=lambda k: -abs(f.fourier.to_dict()[k]))[:5]
    assert len(top & set(truth)) >= 4
    d = result.diagnostics
    assert d.details.refit.used and d.rows_used == 600 and d.params["max_depth"] == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_is_judged_out_of_fold_on_noisy_answers(seed):
    # At 150 noisy answers the refit's own CV error is optimistic (its terms were picked by trees that saw
    # every answer); re-selecting per fold shows it, and such a refit must not replace the proxy.
    f = planted_hierarchical(64, n_top=10, noise=0.5, seed=seed)
    masks = random_masks(64, 150, seed=seed)
    d = ProxySPEX(64, random_state=seed).fit_answers(masks, f(masks)).diagnostics
    refit = d.details.refit
    assert refit.oof_mse > refit.cv_mse
    assert refit.oof_mse >= d.cv_mse and not refit.used


class Recorder:
    def __init__(self, f):
        self.f, self.masks = f, []

    def __call__(self, masks):
        self.masks.append(masks.copy())
        return self.f(masks)


def test_screened_refit_drops_the_lasso_noise_terms_on_noisy_answers():
    # Noise 0.3 x signal: the Lasso's CV penalty keeps many small noise terms; least squares on the terms
    # whose |t| passes the out-of-fold threshold keeps far fewer false ones and predicts unseen masks better.
    f = planted_hierarchical(64, n_top=10, noise=0.3, seed=1)
    masks = random_masks(64, 1000, seed=4)
    X = random_masks(64, 1000, seed=99)
    truth = {k for k in f.fourier.keys if k}
    fits = {screen: ProxySPEX(64, random_state=0, screen=screen).fit_answers(masks, f(masks)) for screen in (True, False)}
    refit = fits[True].diagnostics.details.refit
    assert refit.screen_z is not None and refit.screen_z > 0 and fits[False].diagnostics.details.refit.screen_z is None
    false_terms = {s: len({k for k in e.fourier.keys if k} - truth) for s, e in fits.items()}
    assert false_terms[True] < false_terms[False] / 2
    r2 = {s: r2_score(f.clean(X), e.predict(X)) for s, e in fits.items()}
    assert r2[True] > r2[False]


def test_queries_one_batch_with_extremes():
    f = planted_hierarchical(30, n_top=3, seed=1)
    rec = Recorder(f)
    ProxySPEX(30, n_samples=120, param_grid=SMALL_GRID).fit(rec)
    assert len(rec.masks) == 1
    sent = rec.masks[0]
    assert sent.shape == (120, 30)
    assert len(np.unique(sent, axis=0)) == 120
    assert sent.all(axis=1).any() and (~sent).all(axis=1).any()


def test_deterministic_under_random_state_and_ignores_global_rng(monkeypatch):
    f = planted_hierarchical(32, n_top=4, seed=2)
    seeds = []
    real_train = lgb.train

    def spy(params, *args, **kwargs):
        seeds.append(params["seed"])
        return real_train(params, *args, **kwargs)

    monkeypatch.setattr(lgb, "train", spy)
    np.random.seed(1)
    a = ProxySPEX(32, n_samples=200, param_grid=SMALL_GRID, random_state=7).fit(f)
    np.random.seed(2)
    b = ProxySPEX(32, n_samples=200, param_grid=SMALL_GRID, random_state=7).fit(f)
    c = ProxySPEX(32, n_samples=200, param_grid=SMALL_GRID, random_state=8).fit(f)
    assert a.fourier.to_dict() == b.fourier.to_dict()
    seed_a, seed_b, seed_c = (e.diagnostics.details.lightgbm_seed for e in (a, b, c))
    assert seed_a == seed_b != seed_c
    assert seeds[0] == seed_a and seeds[-1] == seed_c
    rec7, rec8 = Recorder(f), Recorder(f)
    ProxySPEX(32, n_samples=50, param_grid=SMALL_GRID, random_state=7, refit=False).fit(rec7)
    ProxySPEX(32, n_samples=50, param_grid=SMALL_GRID, random_state=8, refit=False).fit(rec8)
    assert not np.array_equal(rec7.masks[0], rec8.masks[0])


def test_fit_does_not_change_estimator_settings():
    est = ProxySPEX(20, n_samples=None, top_k=None, energy=None, param_grid=None)
    before = copy.deepcopy(vars(est))
    est.fit(planted_hierarchical(20, n_top=3, seed=0))
    assert vars(est) == before


def test_budget_is_checked_before_any_query():
    calls = []
    oracle = Oracle(lambda m: calls.append(len(m)) or np.zeros(len(m)), 50, budget=100)
    with pytest.raises(BudgetExceededError):
        ProxySPEX(50, n_samples=101, param_grid=SMALL_GRID).fit(oracle)
    assert calls == [] and oracle.queries_used == 0
    result = ProxySPEX(50, n_samples=100, param_grid=SMALL_GRID).fit(oracle)
    assert result.queries_used == 100 == oracle.queries_used


def test_bad_input_is_rejected_before_queries():
    for kwargs in ({"n": 0}, {"n": 5, "n_samples": 3}, {"n": 5, "energy": 1.5}, {"n": 5, "top_k": 0},
                   {"n": 5, "cv_folds": 1}, {"n": 5, "param_grid": {"depth": (3,)}}, {"n": 5, "max_order": 0},
                   {"n": 5, "residual_passes": -1}, {"n": 5, "tune_rows": 3}, {"n": 5, "grow_rounds": -1},
                   {"n": 5, "grow_terms": 0}):
        with pytest.raises(ValueError):
            ProxySPEX(**kwargs)
    with pytest.raises(ValueError, match="oracle has n=4"):
        ProxySPEX(5, n_samples=10).fit(Oracle(lambda m: np.zeros(len(m)), 4))
    with pytest.raises(ValueFunctionError, match="non-finite"):
        ProxySPEX(5, n_samples=10).fit(lambda m: np.full(len(m), np.nan))
    with pytest.raises(ValueFunctionError, match="shape"):
        ProxySPEX(5, n_samples=10).fit(lambda m: np.zeros(len(m) + 1))


def test_max_order_caps_tree_depth():
    f = planted_hierarchical(24, n_top=4, max_degree=4, seed=5)
    result = ProxySPEX(24, n_samples=300, max_order=2).fit(f)
    assert result.fourier.degree <= 2
    assert {r.max_depth for r in result.diagnostics.details.grid} == {2}


def test_growth_offers_the_missing_child_of_a_found_term_and_nothing_on_noise():
    # The fit knows (3,) and (3, 7) but not the triple one feature above the pair: its residual asks for it.
    n = 40
    truth = SparseFourier(n, [(), (3,), (3, 7), (3, 7, 9)], [0.5, 2.0, 1.0, 0.8])
    masks = random_masks(n, 400, seed=4)
    y = truth.predict(masks)
    fit = SparseFourier(n, [(), (3,), (3, 7)], [0.5, 2.0, 1.0])
    assert grow_candidates(fit, masks, y, max_new=5, max_order=5) == [(3, 7, 9)]
    assert grow_candidates(fit, masks, y, max_new=5, max_order=2) == []  # a triple exceeds max_order
    noise = np.random.default_rng(0).normal(size=len(y))
    assert grow_candidates(truth, masks, y + noise, max_new=5, max_order=5) == []


def test_growth_rounds_find_terms_the_trees_missed():
    f = planted_hierarchical(128, n_top=12, seed=4)
    masks = random_masks(128, 800, seed=5)
    X = random_masks(128, 500, seed=6)
    grown = ProxySPEX(128, random_state=0).fit_answers(masks, f(masks), seed=1)
    plain = ProxySPEX(128, random_state=0, grow_rounds=0).fit_answers(masks, f(masks), seed=1)
    rounds = grown.diagnostics.details.refit.growth
    assert rounds and rounds[0].kept and plain.diagnostics.details.refit.growth == ()
    assert r2_score(f.clean(X), grown.predict(X)) > r2_score(f.clean(X), plain.predict(X)) + 0.01
