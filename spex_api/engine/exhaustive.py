"""Exhaustive transform: when the budget covers all 2^n masks, ask them all and transform exactly.

For small n this beats any sampling design: 2^n queries give the exact Fourier transform, while
even the smallest SPEX design (3·(P+1)·4 rows) is larger and ProxySPEX only approximates.
"""

from __future__ import annotations

import time

import numpy as np

from spex_api.engine.design import EXHAUSTIVE_MAX_N as MAX_N
from spex_api.engine.diagnostics import Diagnostics
from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import SparseFourier, fwht, r2_score
from spex_api.engine.oracle import Oracle, ValueFunction


def all_masks(n: int) -> np.ndarray:
    """Every mask of n features as a (2^n, n) bool array; row r keeps feature i iff bit i of r is set."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"exhaustive enumeration needs 1 <= n <= {MAX_N}, got n={n}")
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)


class Exhaustive:
    """Exact Fourier transform from all 2^n masks (n <= MAX_N).

    Parameters
    ----------
    n: number of features.
    tol: coefficients with |F(k)| <= tol * max|F| are dropped (numerical zeros).
    """

    def __init__(self, n: int, tol: float = 1e-12) -> None:
        if not 1 <= n <= MAX_N:
            raise ValueError(f"Exhaustive needs 1 <= n <= {MAX_N}, got n={n}")
        self.n = n
        self.tol = tol

    @staticmethod
    def n_queries(n: int) -> int:
        return 2**n

    def fit(self, value_fn: ValueFunction | Oracle) -> Explanation:
        """Query every mask in one batch and return the exact transform."""
        oracle = value_fn if isinstance(value_fn, Oracle) else Oracle(value_fn, self.n)
        start = time.process_time()
        masks = all_masks(self.n)
        used0 = oracle.queries_used
        y = oracle(masks)
        coefficients = fwht(y) / len(y)  # F(k) = 2^-n sum_x f(x) (-1)^<x,k>; row r of all_masks is mask r
        keep = np.flatnonzero(np.abs(coefficients) > self.tol * max(np.abs(coefficients).max(), 1e-300))
        bits = (keep[:, None] >> np.arange(self.n)) & 1
        keys = [tuple(np.flatnonzero(row).tolist()) for row in bits]
        fourier = SparseFourier(self.n, keys, coefficients[keep])
        return Explanation(
            fourier=fourier,
            method="exhaustive",
            queries_used=oracle.queries_used - used0,  # what this call sent (see spex_api.engine.estimator)
            diagnostics=Diagnostics(method="exhaustive", rows_used=len(masks), n_coefficients=len(fourier),
                                    train_r2=r2_score(y, fourier.predict(masks)), cpu_seconds=time.process_time() - start),
        )
