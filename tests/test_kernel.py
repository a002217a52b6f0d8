"""Fourier kernel ridge: its coefficients are exactly the kernel machine, it finds many small pairs from few
noisy answers better than a first-order fit, and it stays near first order on additive functions."""

import numpy as np
import pytest

from benchmarks._planted import planted_additive, random_masks
from spex_api.engine.baseline import LinearBaseline
from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.kernel import FourierRidge
from spex_api.engine.proxyspex import uniform_masks


def test_coefficients_reproduce_an_interpolating_kernel_machine():
    # 6 features, orders <= 3: 41 non-constant terms, 30 answers; a vanishing penalty interpolates them, which
    # only holds when every F(S) is mapped from the dual weights correctly
    masks = uniform_masks(6, 30, np.random.default_rng(0))  # distinct: repeated masks cannot be interpolated
    y = np.random.default_rng(1).normal(size=30)
    expl = FourierRidge(6, max_order=3, shares={2: (1.0,), 3: (1.0,)}, sharpness=(0.0,),
                        alphas=[1e-9]).fit_answers(masks, y)
    assert np.allclose(expl.predict(masks), y, atol=1e-4)
    assert expl.fourier.degree == 3 and expl.diagnostics.method == "kernel"


def test_dense_small_pairs_beat_the_linear_fit():
    n, rng = 30, np.random.default_rng(2)
    keys = [(i,) for i in range(n)] + [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.3]
    truth = SparseFourier(n, keys, rng.normal(size=len(keys)) * np.where([len(k) == 1 for k in keys], 1.0, 0.4))
    masks, test = random_masks(n, 400, seed=3), random_masks(n, 500, seed=4)
    y = truth.predict(masks) + 0.5 * rng.normal(size=400)
    kernel = FourierRidge(n).fit_answers(masks, y)
    linear = LinearBaseline(n).fit(masks, y)
    r2 = {name: r2_score(truth.predict(test), e.predict(test)) for name, e in [("kernel", kernel), ("linear", linear)]}
    assert r2["kernel"] > r2["linear"] + 0.1, r2
    assert kernel.diagnostics.params["share_2"] > 0


def test_additive_function_stays_close_to_first_order():
    f = planted_additive(20, noise=0.2, seed=3)
    masks, test = random_masks(20, 300, seed=4), random_masks(20, 500, seed=5)
    expl = FourierRidge(20).fit_answers(masks, f(masks))
    pairs = sum(v ** 2 for k, v in zip(expl.fourier.keys, expl.fourier.values) if len(k) >= 2)
    mains = sum(v ** 2 for k, v in zip(expl.fourier.keys, expl.fourier.values) if len(k) == 1)
    assert pairs < 0.05 * mains
    assert r2_score(f.clean(test), expl.predict(test)) > 0.8


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 5, "max_order": 4}, {"n": 5, "max_order": 0}])
def test_bad_parameters_fail(kwargs):
    with pytest.raises(ValueError):
        FourierRidge(**kwargs)


def test_orders_above_max_terms_are_left_out():
    assert FourierRidge(200, max_order=3).orders() == [1, 2]
    assert FourierRidge(30, max_order=3).orders() == [1, 2, 3]
