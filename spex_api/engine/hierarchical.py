"""Hierarchical sparse regression: main effects first, then pairs (and triples) among the active features.

A cheap interaction family for small budgets: where a tree proxy has too few answers to find structure, a
cross-validated Lasso on the main effects names the features that matter, and a second Lasso on those
main effects plus the products of the strongest ones (strong hierarchy: a pair is offered only when both
of its features are active) finds the pairwise terms. Triples whose three pairs all survive are offered in
a third stage, kept only when the cross-validated error drops.
"""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np

from spex_api.engine.diagnostics import Diagnostics, HierarchicalDetails, LassoStage
from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import Key, SparseFourier, fourier_basis
from spex_api.engine.masks import as_answers, check_n
from spex_api.engine.proxyspex import fit_uniform
from spex_api.engine.regression import lasso_cv
from spex_api.engine.oracle import Oracle, ValueFunction
from spex_api.engine.seeding import RandomState, check_random_state, stream

# Penalties on each LassoCV path: 12 rather than 30 cut the fit of 950 answers at n=256 from 6.5 to 3.8 s CPU
# (load ~11 on 2 cores) with held-out R² within 0.005 on the planted 20-top function, clean and noise 0.3.
N_ALPHAS = 12


def strong_triples(pairs: Sequence[Key]) -> list[Key]:
    """Triples {a, b, c} all three of whose pairs are in `pairs` (strong hierarchy one order up)."""
    have = set(pairs)
    neighbours: dict[int, set[int]] = {}
    for a, b in pairs:
        neighbours.setdefault(a, set()).add(b)
    out: list[Key] = []
    for a, b in sorted(have):
        for c in sorted(neighbours.get(b, set())):
            if (a, c) in have:
                out.append((a, b, c))
    return out


class HierarchicalLasso:
    """Main effects, then pairs among the strongest active features, then strong triples, each by LassoCV.

    n: number of features. max_pairs: most pair columns offered (the top-m active main effects by |F|,
    m(m−1)/2 <= max_pairs). max_order: 1, 2 or 3. cv_folds: folds of every LassoCV (and of the error
    that decides whether the pair and triple stages are kept). n_samples: masks `fit` queries (uniform,
    default 4·n·log2 n). random_state: seeds the masks and the folds.
    """

    def __init__(self, n: int, max_pairs: int = 600, max_order: int = 3, cv_folds: int = 5,
                 n_samples: int | None = None, random_state: RandomState = 0) -> None:
        check_n(n)
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        if cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {cv_folds}")
        self.n, self.max_pairs, self.max_order = int(n), int(max_pairs), int(max_order)
        self.cv_folds, self.n_samples, self.random_state = int(cv_folds), n_samples, random_state
        self._seed = check_random_state(random_state)

    def fit(self, value_fn: ValueFunction | Oracle) -> Explanation:
        """Query uniform random masks (one batch) and fit them."""
        return fit_uniform(self, value_fn, self.n_samples, stream(self._seed))

    def fit_answers(self, masks: np.ndarray, y: np.ndarray) -> Explanation:
        """Fit on answers already paid for ((N, n) bool masks, N scores); no query is sent."""
        cpu0 = time.process_time()
        masks, y = as_answers(masks, y, self.n)
        folds = max(2, min(self.cv_folds, len(y) // 4))
        keys: list[Key] = [(i,) for i in range(self.n)]
        chi = 1.0 - 2.0 * masks
        stages: list[LassoStage] = []
        if y.var() == 0.0:
            best = (keys, np.zeros(self.n), float(y.mean()), 0.0)
        else:
            coef, icpt, mse, _ = lasso_cv(chi, y, folds, self._seed, max_iter=3000, alphas=N_ALPHAS)
            best = (keys, coef, icpt, mse)
            stages.append(LassoStage(order=1, columns=self.n, cv_mse=mse, kept=True))
            active = np.flatnonzero(coef)
            m = int(min(len(active), np.floor((1 + np.sqrt(1 + 8 * self.max_pairs)) / 2)))
            top = np.sort(active[np.argsort(-np.abs(coef[active]), kind="stable")[:m]])
            offer: list[Key] = [tuple(p) for p in itertools.combinations(top.tolist(), 2)] if self.max_order >= 2 else []
            order = 2
            while offer:
                trial = keys + offer
                basis = np.hstack([chi, fourier_basis(masks, trial[self.n:], self.n)])
                coef, icpt, mse, _ = lasso_cv(basis, y, folds, self._seed, max_iter=3000, alphas=N_ALPHAS)
                kept = mse < best[3]
                stages.append(LassoStage(order=order, columns=len(offer), cv_mse=mse, kept=kept))
                if not kept:
                    break
                best = (trial, coef, icpt, mse)
                keys = trial
                order += 1
                if order > self.max_order:
                    break
                survivors = [k for k, c in zip(trial, coef) if len(k) == order - 1 and c != 0.0]
                offer = strong_triples(survivors) if order == 3 else []
        keys, coef, icpt, mse = best
        nonzero = np.flatnonzero(coef)
        fourier = SparseFourier(self.n, [()] + [keys[i] for i in nonzero], np.concatenate([[icpt], coef[nonzero]]))
        diagnostics = Diagnostics(method="hierarchical", rows_used=len(y), n_coefficients=len(fourier), cv_mse=mse,
                                  cpu_seconds=time.process_time() - cpu0,
                                  params={"order": max((len(k) for k in fourier.keys), default=0)},
                                  details=HierarchicalDetails(tuple(stages)))
        return Explanation(fourier=fourier, method="hierarchical", queries_used=0, diagnostics=diagnostics)
