"""Shared regressions on a Fourier basis: the |t|-screened least squares."""

import numpy as np

from spex_api.engine.regression import screened_least_squares


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
