"""First-order baseline: a cross-validated Lasso on the same answers, as a sparse Fourier transform.

The Explainer compares every interaction result against this fit; when interactions do not pay
on a prompt, the linear fit is what the user gets (and is told so).
"""

from __future__ import annotations

import numpy as np

from spex_api.engine.diagnostics import Diagnostics
from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import Key, SparseFourier, r2_score
from spex_api.engine.masks import as_answers
from spex_api.engine.regression import lasso_cv
from spex_api.engine.seeding import RandomState, check_random_state, stream


class LinearBaseline:
    """LassoCV on the characters (-1)^{x_i}: F(∅) = intercept, F({i}) = weight of feature i.

    Parameters
    ----------
    n: number of features.
    cv: folds for choosing the Lasso penalty (and for the reported CV R²).
    n_alphas: size of the penalty grid.
    max_rows: rows used for the fit; a first-order model of n features is well determined by a
        few times n rows, so larger training sets are subsampled (seeded) to keep the cost at
        about a second for n = 1000 instead of ~10 s for 20,000 rows.
    random_state: seeds the fold split and the row subsample.
    """

    def __init__(
        self,
        n: int,
        cv: int = 5,
        n_alphas: int = 30,
        max_rows: int | None = None,
        random_state: RandomState = 0,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.cv = cv
        self.n_alphas = n_alphas
        self.max_rows = max_rows
        self.random_state = random_state
        self._seed = check_random_state(random_state)

    def fit(self, masks: np.ndarray, y: np.ndarray) -> Explanation:
        """Fit on (masks, y) and return an Explanation with method "linear"; it asks nothing, so queries_used is
        0 (see spex_api.engine.estimator) and diagnostics.rows_used says how many answers it fitted on."""
        masks, y = as_answers(masks, y, self.n)
        if len(y) < 2:
            raise ValueError("the linear baseline needs at least 2 answers")
        rng = stream(self._seed)
        max_rows = max(2000, 4 * self.n) if self.max_rows is None else self.max_rows
        rows = np.sort(rng.choice(len(y), size=max_rows, replace=False)) if len(y) > max_rows else slice(None)
        chi = 1.0 - 2.0 * masks[rows]
        target = y[rows]
        folds = min(self.cv, len(target))
        variance = float(target.var())
        keys: list[Key]
        if variance == 0.0 or folds < 2:
            keys, values, cv_r2, alpha = [()], np.array([float(target.mean())]), 1.0 if variance == 0.0 else 0.0, None
        else:
            fit = lasso_cv(chi, target, folds, self._seed, alphas=self.n_alphas)
            nonzero = np.flatnonzero(fit.coef)
            keys = [()] + [(int(i),) for i in nonzero]
            values = np.concatenate([[fit.intercept], fit.coef[nonzero]])
            cv_r2 = 1.0 - fit.cv_mse / variance
            alpha = fit.alpha
        fourier = SparseFourier(self.n, keys, values)
        train_r2 = r2_score(target, fourier.predict(masks[rows]))
        return Explanation(
            fourier=fourier,
            method="linear",
            queries_used=0,
            diagnostics=Diagnostics(method="linear", rows_used=len(target), n_coefficients=len(fourier),
                                    train_r2=train_r2, cv_r2=cv_r2, params={"alpha": alpha}),
        )

