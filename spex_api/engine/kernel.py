"""Fourier kernel ridge: a Gaussian prior on every Fourier coefficient up to a low order, fitted in closed form.

With few, noisy answers an LLM's score is rarely a handful of large terms: it spreads over many small main
effects and pairs. A ridge prior F(S) ~ N(0, w_|S|·Π_{i∈S} v_i) over all |S| <= max_order (v_i: each feature's
share in a first-order fit, so pairs of strong features get the larger prior) turns the fit into kernel ridge
regression on the N answers, whose kernel between two masks is a weighted elementary symmetric polynomial of
the products χ_i(x)χ_i(x'). Its prior variance per order and its penalty are chosen by exact leave-one-out error
(one eigendecomposition per kernel), and the fitted coefficients F(S) = w_|S|Π v_i·Σ_j α_j χ_S(x_j) are exact:
the explanation predicts exactly what the kernel machine does.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Sequence

import numpy as np

from spex_api.engine.diagnostics import Diagnostics
from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import Key, SparseFourier, fourier_basis
from spex_api.engine.masks import as_answers, check_n

# Prior variance of all order-d terms together, as a share of the first-order total (0 = no order-d terms).
DEFAULT_SHARES: dict[int, tuple[float, ...]] = {2: (0.0, 0.3, 1.0, 3.0), 3: (0.0, 1.0)}
# Exponent on each feature's first-order weight in its prior scale v_i (0 = every feature alike).
DEFAULT_SHARPNESS = (0.0, 1.0)


def _symmetric(p: list[np.ndarray], order: int) -> list[np.ndarray]:
    """Elementary symmetric polynomials e_0..e_order from power sums p_1..p_order (Newton's identities)."""
    e = [np.ones_like(p[0])]
    for k in range(1, order + 1):
        e.append(sum((-1) ** (i - 1) * e[k - i] * p[i - 1] for i in range(1, k + 1)) / k)
    return e


class FourierRidge:
    """Kernel ridge regression with a Fourier prior up to `max_order`, hyperparameters by leave-one-out error.

    n: number of features. max_order: highest interaction order (1-3). shares: per order d >= 2, the candidate
    prior variances of the order-d terms as a share of the first-order ones. sharpness: candidate exponents γ of
    the feature scales v_i ∝ (|β_i| + ε)^γ, β a ridge fit of the main effects. alphas: candidate ridge
    penalties, relative to the mean kernel diagonal. max_terms: orders whose term count C(n, d) exceeds it are
    left out (the explanation lists every term of every order it keeps). random_state: unused by the closed
    form, kept for the estimator contract.
    """

    def __init__(self, n: int, max_order: int = 3, shares: dict[int, Sequence[float]] | None = None,
                 sharpness: Sequence[float] = DEFAULT_SHARPNESS, alphas: Sequence[float] | None = None,
                 max_terms: int = 40_000, random_state: int = 0) -> None:
        check_n(n)
        if not 1 <= max_order <= 3:
            raise ValueError(f"max_order must be 1, 2 or 3, got {max_order}")
        self.n, self.max_order, self.max_terms, self.random_state = int(n), int(max_order), int(max_terms), random_state
        self.shares = {d: tuple(float(s) for s in v) for d, v in (shares or DEFAULT_SHARES).items()}
        self.sharpness = tuple(float(g) for g in sharpness)
        self.alphas = np.asarray(alphas if alphas is not None else np.logspace(-3, 2, 26), dtype=float)

    def orders(self) -> list[int]:
        """The interaction orders fitted: up to max_order, while C(n, d) <= max_terms."""
        return [d for d in range(1, self.max_order + 1) if d == 1 or math.comb(self.n, d) <= self.max_terms]

    def _scales(self, chi: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
        """Feature scales v_i (mean 1): |β_i|^γ of a ridge fit of the main effects, floored at 5% of the largest."""
        if gamma == 0.0:
            return np.ones(self.n)
        gram = chi.T @ chi
        beta = np.linalg.solve(gram + np.trace(gram) / self.n * np.eye(self.n), chi.T @ (y - y.mean()))
        v = np.maximum(np.abs(beta), 0.05 * np.abs(beta).max() + 1e-300) ** gamma
        return v / v.mean()

    def fit_answers(self, masks: np.ndarray, y: np.ndarray) -> Explanation:
        """Fit on answers already paid for ((N, n) bool masks, N scores); no query is sent."""
        cpu0 = time.process_time()
        masks, y = as_answers(masks, y, self.n)
        if len(y) < 3:
            raise ValueError(f"the kernel fit needs at least 3 answers, got {len(y)}")
        orders = self.orders()
        chi = 1.0 - 2.0 * masks
        mean = float(y.mean())
        yc = y - mean
        best: dict | None = None
        for gamma in self.sharpness:
            v = self._scales(chi, y, gamma)
            # power sums p_k(x, x') = Σ_i v_i^k (χ_i χ'_i)^k; even powers of ±1 are 1
            p = [(chi * v ** k) @ chi.T if k % 2 else np.full((len(y), len(y)), float(np.sum(v ** k)))
                 for k in range(1, max(orders) + 1)]
            e = _symmetric(p, max(orders))
            totals = _symmetric([np.array(np.sum(v ** k)) for k in range(1, max(orders) + 1)], max(orders))
            for combo in itertools.product(*[self.shares.get(d, (0.0,)) for d in orders[1:]]):
                # order d's prior variance, summed over its terms (w_d · e_d(v)), is `share` times the first order's
                weights = {1: 1.0 / float(totals[1])}
                weights.update({d: share / float(totals[d]) for d, share in zip(orders[1:], combo)})
                kernel = sum(weights[d] * e[d] for d in orders)
                scale = float(np.mean(np.diag(kernel)))
                lam, q = np.linalg.eigh(kernel)
                lam = np.clip(lam, 0.0, None)
                qy = q.T @ yc
                shrink = lam[:, None] / (lam[:, None] + self.alphas[None, :] * scale)  # (N, A)
                fitted = q @ (shrink * qy[:, None])
                hat = (q ** 2) @ shrink
                loo = np.mean(((yc[:, None] - fitted) / np.clip(1.0 - hat, 1e-9, None)) ** 2, axis=0)
                a = int(np.argmin(loo))
                entry = {"sharpness": gamma, "shares": dict(zip(orders[1:], combo)), "alpha": float(self.alphas[a]),
                         "loo_mse": float(loo[a])}
                if best is None or entry["loo_mse"] < best["entry"]["loo_mse"]:
                    coef = q @ (qy / (lam + self.alphas[a] * scale))  # α = (K + λI)^{-1} y
                    best = {"entry": entry, "alpha_vec": coef, "v": v, "weights": weights}
        assert best is not None
        keys: list[Key] = [()]
        values = [mean]
        alpha_vec, v, weights = best["alpha_vec"], best["v"], best["weights"]
        for d in orders:
            if d > 1 and weights[d] == 0.0:
                continue
            terms = list(itertools.combinations(range(self.n), d))
            prior = weights[d] * np.prod(v[np.array(terms)], axis=1)  # the term's prior variance
            values.extend((prior * (fourier_basis(masks, terms, self.n).T @ alpha_vec)).tolist())
            keys.extend(terms)
        fourier = SparseFourier(self.n, keys, np.asarray(values)).pruned(0.0)
        chosen = best["entry"]
        params: dict[str, float | int | str | None] = {"sharpness": chosen["sharpness"], "alpha": chosen["alpha"],
                                                       **{f"share_{d}": s for d, s in chosen["shares"].items()}}
        diagnostics = Diagnostics(method="kernel", rows_used=len(y), n_coefficients=len(fourier),
                                  cv_mse=chosen["loo_mse"],
                                  cv_r2=1.0 - chosen["loo_mse"] / float(y.var()) if y.var() > 0 else None,
                                  cpu_seconds=time.process_time() - cpu0, params=params)
        return Explanation(fourier=fourier, method="kernel", queries_used=0, diagnostics=diagnostics)
