"""The estimator contract every algorithm keeps (a leaf module: it imports only the types it names).

An estimator is built with its settings (`n`, `max_order`, `random_state`, ...) and `fit(oracle)` asks its
whole design through the budgeted, de-duplicating `Oracle` (a plain value function is wrapped in one) and
returns an `Explanation`. Methods that can refit on answers already paid for (cross-validation without new
queries) also offer `fit_answers(masks, y)`.

`Explanation.queries_used` means one thing for every estimator: the distinct masks this call sent to the
value function, i.e. what it cost (answers an Oracle already held are free; `fit_answers` and the linear
baseline, which fit on given answers, report 0). How many masks the fit rests on is in its diagnostics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from spex_api.engine.explanation import Explanation
    from spex_api.engine.oracle import Oracle, ValueFunction


@runtime_checkable
class Estimator(Protocol):
    """An algorithm that explains a value function over `n` features through one Oracle."""

    n: int

    def fit(self, value_fn: ValueFunction | Oracle) -> Explanation:
        """Ask the design through the Oracle and return the fitted Explanation."""
        ...


@runtime_checkable
class AnswerEstimator(Estimator, Protocol):
    """An estimator that also refits on answers already paid for (no query)."""

    def fit_answers(self, masks: np.ndarray, y: np.ndarray) -> Explanation:
        """Fit on (N, n) bool masks and their N scores; queries_used is 0."""
        ...
