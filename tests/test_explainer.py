"""Explainer end to end: budget cap, held-out faithfulness, linear fallback, determinism, bad answers."""

import numpy as np
import pytest

from benchmarks._planted import planted_additive, planted_hierarchical, random_masks
from spex_api import Explainer, ValueFunctionError
from spex_api.engine.fourier import r2_score
from spex_api.engine.baseline import LinearBaseline


class Recorder:
    """Value function that counts every mask it is sent."""

    def __init__(self, f):
        self.f = f
        self.batches = []

    def __call__(self, masks):
        self.batches.append(masks.copy())
        return self.f(masks)

    @property
    def sent(self):
        return sum(len(b) for b in self.batches)


@pytest.fixture(scope="module")
def hier64():
    return planted_hierarchical(64, n_top=8, seed=3)


@pytest.mark.parametrize(
    "method, budget, min_r2",
    [("spex", 4000, 0.99), ("proxyspex", 1600, 0.8), ("auto", 1600, 0.8), ("auto", 30_000, 0.99)],  # 1,600 x 64 features: a slice
)
def test_end_to_end_on_planted_function(hier64, method, budget, min_r2):
    vf = Recorder(hier64)
    expl = Explainer(vf, 64, budget, method=method).explain()
    plan = expl.plan
    assert expl.method == plan.method  # interactions paid on this function
    assert method == "auto" or plan.method == method
    assert expl.queries_used == vf.sent <= plan.total <= budget
    X = random_masks(64, 1000, seed=42)
    assert r2_score(hier64.clean(X), expl.predict(X)) >= min_r2
    detail = expl.faithfulness_detail
    assert expl.faithfulness == detail["holdout_r2"] == detail[plan.method]["holdout_r2"]
    assert detail["n_holdout"] == plan.n_holdout > 0
    assert expl.faithfulness >= detail["linear"]["holdout_r2"]
    assert set(detail) >= {"train_r2", "n_train", "linear", "selected", "criterion"}
    assert expl.top(3)[0].features  # ranked interactions are available


def test_spex_design_is_sent_in_one_batch(hier64):
    vf = Recorder(hier64)
    expl = Explainer(vf, 64, 4000, method="spex").explain()
    assert len(vf.batches) == 2  # the whole design, then the held-out slice
    assert len(vf.batches[1]) <= expl.plan.n_holdout


def test_linear_fallback_on_additive_function():
    f = planted_additive(60, noise=0.3, seed=1)
    # (1,800 answers x 60 features: past cross-validation's reach, a withheld slice judges; the one-SE rule lets
    # ties through now and then: over 20 draws at 900 answers on two additive functions 18 fell back to linear)
    expl = Explainer(f, 60, 1800, method="proxyspex", random_state=2).explain()
    assert expl.method == "linear"
    assert expl.diagnostics.fallback == "linear" and expl.diagnostics.method == "linear"
    assert "interactions did not pay" in expl.diagnostics.reasons[0]
    assert expl.diagnostics.others["proxyspex"].method == "proxyspex"  # the rejected result's internals are kept
    assert expl.faithfulness == expl.faithfulness_detail["linear"]["holdout_r2"]
    assert expl.faithfulness > expl.faithfulness_detail["proxyspex"]["holdout_r2"]
    assert expl.fourier.degree <= 1
    assert expl.queries_used <= 1800
    # the returned linear fit trained on every paid answer, held-out ones included
    assert expl.diagnostics.rows_used == expl.queries_used
    sel = expl.faithfulness_detail["selection"]
    assert sel["rule"].startswith("one standard error") and sel["gain"] <= sel["se"]


def test_small_budget_cross_validates_the_whole_fit_on_every_answer(hier64):
    """At <= CROSSVAL_MAX_ANSWERS queries ProxySPEX trains on every answer (no withheld slice); selection
    and faithfulness come from out-of-fold predictions of the whole procedure, refitted per fold."""
    vf = Recorder(hier64)
    expl = Explainer(vf, 64, 500, method="auto", random_state=2).explain()
    assert expl.plan.n_holdout == 0 and expl.plan.n_queries == 500 and "cross-validation" in expl.plan.reason
    assert len(vf.batches) == 1 and expl.queries_used == vf.sent == 500  # every answer trains the fit
    detail = expl.faithfulness_detail
    assert expl.method == "proxyspex" and detail["criterion"] == "cv_r2"
    assert expl.faithfulness == detail["proxyspex"]["cv_r2"] > detail["linear"]["cv_r2"]
    assert "out-of-fold" in detail["selection"]["rule"]
    assert expl.faithfulness_kind == "cross-validated R²" and "cross-validated R²" in expl.summary()
    X = random_masks(64, 1000, seed=42)
    true_r2 = r2_score(hier64(X), expl.predict(X))
    assert abs(expl.faithfulness - true_r2) < 0.1  # an honest estimate of out-of-sample faithfulness
    # additive function, small budget: the linear fit wins out of fold and is returned, fitted on all answers
    f = planted_additive(40, noise=0.3, seed=1)
    lin = Explainer(f, 40, 120, method="proxyspex", random_state=1).explain()
    assert lin.method == "linear" and lin.faithfulness == lin.faithfulness_detail["linear"]["cv_r2"]
    assert lin.diagnostics.method == "linear" and lin.diagnostics.rows_used == lin.queries_used == 120


def test_holdout_zero_uses_cross_validation(hier64):
    vf = Recorder(hier64)
    expl = Explainer(vf, 64, 1600, method="proxyspex", holdout=0).explain()  # beyond cross_validates' reach
    assert expl.faithfulness is None
    detail = expl.faithfulness_detail
    assert detail["criterion"] == "cv_r2" and detail["n_holdout"] == 0
    assert detail["cv_r2"] >= detail["linear"]["cv_r2"]
    assert expl.queries_used == vf.sent <= 1600


@pytest.mark.parametrize("method, budget", [("spex", 4000), ("proxyspex", 300)])
def test_deterministic_and_settings_unchanged(hier64, method, budget):
    names = [f"w{i}" for i in range(64)]
    ex = Explainer(hier64, 64, budget, method=method, random_state=7, feature_names=names)
    before = dict(vars(ex))
    a, b = ex.explain(), ex.explain()
    c = Explainer(hier64, 64, budget, method=method, random_state=7, feature_names=names).explain()
    assert vars(ex) == before
    for other in (b, c):
        assert other.fourier.to_dict() == a.fourier.to_dict()
        assert other.faithfulness == a.faithfulness
    assert a.feature_names[5] == "w5" and a.top(1)[0].names[0].startswith("w")


def test_random_state_changes_the_draws(hier64):
    va, vd = Recorder(hier64), Recorder(hier64)
    Explainer(va, 64, 4000, method="spex", random_state=7).explain()
    Explainer(vd, 64, 4000, method="spex", random_state=8).explain()
    for sent_a, sent_d in zip(va.batches, vd.batches):  # design, then held-out masks
        assert not np.array_equal(sent_a, sent_d)


def test_async_value_function(hier64):
    async def avf(masks):
        return hier64(masks)

    expl = Explainer(avf, 64, 4000, method="spex").explain()
    assert expl.faithfulness > 0.99


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m: np.zeros(len(m) + 1), "shape"),
        (lambda m: np.zeros((len(m), 2)), "shape"),
        (lambda m: np.where(m[:, 0], np.nan, 1.0), "non-finite"),
        (lambda m: ["x"] * len(m), "numbers"),
    ],
)
@pytest.mark.parametrize("method", ["spex", "proxyspex"])
def test_bad_value_function_outputs(bad, match, method):
    with pytest.raises(ValueFunctionError, match=match):
        Explainer(bad, 64, 4000, method=method).explain()


def test_linear_baseline_recovers_first_order_terms():
    f = planted_additive(30, noise=0.0, seed=2)
    X = random_masks(30, 400, seed=3)
    expl = LinearBaseline(30).fit(X, f(X))
    assert expl.method == "linear" and expl.queries_used == 0 and expl.diagnostics.rows_used == 400
    assert expl.diagnostics.cv_r2 > 0.99
    truth = f.fourier.to_dict()
    got = expl.fourier.to_dict()
    for key, value in truth.items():
        assert got.get(key, 0.0) == pytest.approx(value, abs=0.05)


def test_noise_pilot_measures_repeat_noise_within_the_budget():
    import numpy as np

    from spex_api.engine.explainer import Explainer

    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    asked = []
    draws = np.random.default_rng(5)

    def noisy(masks, repeat=0):
        asked.append(repeat)
        m = np.asarray(masks, float)
        return m @ w + draws.normal(0, 0.5, len(m))

    e = Explainer(noisy, 8, 300, noise_pairs=20).explain()  # 2^8 masks + 40: exact, and fast
    assert e.queries_used <= 300 and e.plan.n_noise == 40 and e.plan.total <= 300
    assert 1 in asked  # the re-ask was told it is one, so a cache would not serve it
    assert e.noise.n_pairs == 20 and 0.3 < e.noise.noise_sd < 0.75
    assert e.noise.r2_ceiling == pytest.approx(1 - e.noise.noise_sd ** 2 / e.noise.score_sd ** 2)
    assert e.faithfulness_share == pytest.approx(e.faithfulness / e.noise.r2_ceiling)
    assert Explainer(noisy, 8, 300).explain().noise is None  # off by default for Python functions
    with pytest.raises(ValueError):
        Explainer(noisy, 8, 300, noise_pairs=-1)


def test_planner_refuses_spex_under_noise():
    from spex_api.engine.planner import SPEX_MAX_NOISE, plan

    quiet = plan(64, 8000, method="auto", noise=0.05)
    loud = plan(64, 8000, method="auto", noise=SPEX_MAX_NOISE + 0.1)
    assert quiet.method == "spex" and loud.method == "proxyspex"
    assert "refused for noise" in loud.reason
    assert "warning" in plan(64, 8000, method="spex", noise=0.5).reason


def test_removal_check_masks_the_top_features_and_compares():
    from spex_api.engine.removal import check_removal

    w = np.array([3.0, -1.0, 2.0, 0.5, 0.0, 1.0])
    f = lambda m: np.asarray(m, float) @ w  # noqa: E731
    e = Explainer(f, 6, 64, method="exhaustive").explain()
    checked = check_removal(e, f, 3)
    steps = checked.removal.steps
    assert checked.removal.ranking_index == "banzhaf"
    assert [s["removed"] for s in steps] == [[0], [0, 2], [0, 2, 5]]  # largest contribution first
    assert [s["measured"] for s in steps] == pytest.approx([-3.0, -5.0, -6.0])
    assert [s["predicted"] for s in steps] == pytest.approx([-3.0, -5.0, -6.0])
    assert checked.queries_used == e.queries_used + 4  # 3 steps and the full prompt (a plain function)
    with pytest.raises(ValueError):
        check_removal(e, f, 0)
    with pytest.raises(ValueError):
        check_removal(e, f, 2, index="fourier")
    given = check_removal(e, f, 2, index="shapley", full_score=6.5)  # the full prompt's score is known: not asked
    assert given.queries_used == e.queries_used + 2
    assert [s["measured"] for s in given.removal.steps] == pytest.approx([-4.0, -6.0])  # 2.5 and 0.5 against 6.5


def test_n_jobs_limits_the_thread_pools_while_fitting_and_leaves_results_alone(hier64):
    from threadpoolctl import threadpool_info

    def pools():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    outside = pools()
    inside = []

    def f(masks):
        inside.append(pools())
        return hier64(masks)

    one = Explainer(f, 64, 800, method="proxyspex", n_jobs=1).explain()
    assert inside and all(set(p) == {1} for p in inside)  # every BLAS pool at one thread during the run ...
    assert pools() == outside  # ... and the libraries' own setting back after it
    inside.clear()
    default = Explainer(f, 64, 800, method="proxyspex", n_jobs=None).explain()
    assert all(p == outside for p in inside)
    assert one.fourier.keys == default.fourier.keys
    # other thread counts sum LightGBM's histograms in another order: equal up to rounding, not bit for bit
    np.testing.assert_allclose(one.fourier.values, default.fourier.values, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="n_jobs"):
        Explainer(f, 64, 800, n_jobs=0)



def test_n_jobs_limits_the_blas_pools_from_any_thread(hier64):
    """explain_many runs explanations on worker threads: their limit must hold even after another thread (here
    the main one) has set it, which threadpoolctl's one-controlling-thread rule for OpenBLAS used to ignore."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from spex_api.engine.threads import limit_threads

    def pools():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    with limit_threads(1):  # the main thread sets and restores the pools first
        pass
    outside, inside = pools(), []

    def f(masks):
        inside.append(pools())
        return hier64(masks)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: Explainer(f, 64, 800, method="proxyspex", n_jobs=1).explain()).result()
    assert inside and all(set(p) == {1} for p in inside)
    assert pools() == outside
