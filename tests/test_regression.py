"""Shared regressions on a Fourier basis: the |t|-screened least squares, the staged Lasso path."""

import numpy as np
import pytest

from spex_api.engine.regression import lasso_cv, screened_least_squares


def test_screen_keeps_the_columns_whose_t_passes_and_refits_them():
    rng = np.random.default_rng(0)
    basis = 1.0 - 2.0 * (rng.random((500, 20)) < 0.5)
    y = 3.0 + basis[:, [2, 7, 11]] @ np.array([1.0, -0.6, 0.4]) + rng.normal(0.0, 0.5, 500)
    (full, icpt_full), (screened, icpt) = screened_least_squares(basis, y, (0.0, 4.0))
    assert np.count_nonzero(full) == 20
    assert set(np.flatnonzero(screened)) == {2, 7, 11}
    kept = np.linalg.lstsq(np.column_stack([np.ones(500), basis[:, [2, 7, 11]]]), y, rcond=None)[0]
    assert np.allclose(np.concatenate([[icpt], screened[[2, 7, 11]]]), kept, atol=1e-8)
    assert abs(icpt_full - 3.0) < 0.1


@pytest.mark.parametrize("noise", [0.02, 0.05, 0.5, 2.0])
def test_lasso_path_in_two_legs_is_as_good_as_the_whole_path(noise):
    """The staged path walks its last third only when the first two end at the CV curve's bottom: at every noise
    level its CV error is that of sklearn's whole automatic path (near-noiseless answers need the last third),
    and on noisy answers it picks the same penalty."""
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(3)
    basis = 1.0 - 2.0 * (rng.random((300, 60)) < 0.5)
    y = basis[:, :12] @ np.linspace(1.0, 0.05, 12) + rng.normal(0.0, noise, 300)
    fit = lasso_cv(basis, y, 5, 0, max_iter=3000, alphas=20)
    whole = LassoCV(cv=KFold(5, shuffle=True, random_state=0), alphas=20, max_iter=3000, precompute=True).fit(basis, y)
    assert fit.cv_mse <= whole.mse_path_.mean(axis=1).min() * 1.02  # cold vs warm starts differ a little
    if noise >= 0.5:
        assert fit.alpha == pytest.approx(whole.alpha_, rel=1e-9)
        assert np.allclose(fit.coef, whole.coef_, atol=1e-3)
