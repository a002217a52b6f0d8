"""Interaction indices computed from a sparse Fourier transform, over its support only.

Every index here is linear in the Fourier coefficients and, for each interaction T, a sum over the
supersets S ⊇ T in the support with a weight that depends only on (|S|, |T|):

    I(T) = Σ_{S ⊇ T} W(|S|, |T|) · F(S).

So one pass that enumerates the subsets of every support key (vectorised per degree, with precomputed
subset patterns) computes any index in O(#coeffs · 2^degree) — never O(n · 2^d) per term.

Conventions: masks keep feature i when x_i = 1; the game is v(S) = f(1_S).
Möbius: f(x) = Σ_S a(S) Π_{i∈S} x_i with a(S) = (−2)^{|S|} Σ_{T⊇S} F(T), and back
F(T) = (−1)^{|T|} Σ_{S⊇T} 2^{−|S|} a(S). Möbius-based indices use a weight w(|S|, |T|) on a(S);
composing with the Fourier→Möbius map gives W(r, t) = Σ_{j=t}^{r} C(r−t, j−t) (−2)^j w(j, t).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from math import comb
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from spex_api.engine.fourier import Key, SparseFourier, incidence
from spex_api.engine.masks import as_masks

INDICES = ("fourier", "mobius", "banzhaf", "shapley", "bii", "sii", "k-sii", "fbii", "fsii", "stii")

_ALIASES = {
    "fourier": "fourier",
    "mobius": "mobius",
    "moebius": "mobius",
    "möbius": "mobius",
    "banzhaf": "banzhaf",
    "bv": "banzhaf",
    "shapley": "shapley",
    "sv": "shapley",
    "bii": "bii",
    "sii": "sii",
    "k-sii": "k-sii",
    "ksii": "k-sii",
    "fbii": "fbii",
    "faith-banzhaf": "fbii",
    "fsii": "fsii",
    "faith-shapley": "fsii",
    "stii": "stii",
    "shapley-taylor": "stii",
}

# Indices whose `order` is a parameter of the definition (not just a display filter).
_ORDERED = ("k-sii", "fbii", "fsii", "stii")


def canonical_index(index: str) -> str:
    """Our lower-case index name for `index` (accepts shapiq spellings such as 'k-SII', 'SV', 'Moebius')."""
    name = _ALIASES.get(str(index).strip().lower())
    if name is None:
        raise ValueError(f"unknown index {index!r}; choose one of {', '.join(INDICES)}")
    return name


@dataclass
class SparseMobius:
    """Sparse Möbius (multilinear) form: f(x) = Σ_S a(S) Π_{i∈S} x_i."""

    n: int
    keys: list[Key] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float).reshape(-1)
        if len(self.values) != len(self.keys):
            raise ValueError(f"{len(self.keys)} keys but {len(self.values)} values")

    def __len__(self) -> int:
        return len(self.keys)

    def to_dict(self) -> dict[Key, float]:
        return dict(zip(self.keys, self.values.tolist()))

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """f(x) for every row of masks: a(S) counts when every feature of S is kept."""
        masks = as_masks(masks, self.n)
        if not self.keys:
            return np.zeros(masks.shape[0])
        hits = (sp.csr_matrix(masks.astype(np.int32)) @ incidence(self.keys, self.n)).toarray()
        sizes = np.fromiter((len(k) for k in self.keys), dtype=np.int64, count=len(self.keys))
        return (hits == sizes).astype(float) @ self.values

    __call__ = predict

    def to_fourier(self) -> SparseFourier:
        return mobius_to_fourier(self)


# ---------------------------------------------------------------------------------------------
# The superset-sum engine


@lru_cache(maxsize=None)
def subset_patterns(d: int, t: int) -> np.ndarray:
    """(C(d, t), t) array of the column patterns choosing t of d sorted positions."""
    combos = list(itertools.combinations(range(d), t))
    return np.array(combos, dtype=np.int64).reshape(len(combos), t)


def _by_degree(keys: Sequence[Key], values: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Group keys into (m, d) int arrays per degree d, with their values."""
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    flat = np.fromiter((i for k in keys for i in k), dtype=np.int64, count=int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(keys) else np.zeros(0, np.int64)
    groups = {}
    for d in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == d)
        cols = starts[rows][:, None] + np.arange(d)[None, :]
        groups[d] = (flat[cols].reshape(len(rows), d), values[rows])
    return groups


def superset_sums(
    keys: Sequence[Key],
    values: np.ndarray,
    weight: Callable[[int, int], float],
    max_order: int | None = None,
    min_order: int = 0,
) -> tuple[list[Key], np.ndarray]:
    """I(T) = Σ_{S ⊇ T} weight(|S|, |T|) · values(S) for every subset T of a key, min_order ≤ |T| ≤ max_order.

    Subsets come from fixed per-degree column patterns applied to all keys of that degree at once;
    equal subsets are merged with np.unique + bincount. Exact zeros are dropped.
    """
    values = np.asarray(values, dtype=float)
    groups = _by_degree(keys, values)
    top = max(groups, default=0)
    max_order = top if max_order is None else min(max_order, top)
    out_keys: list[Key] = []
    out_values: list[np.ndarray] = []
    for t in range(min_order, max_order + 1):
        subs, vals = [], []
        for d, (arr, v) in groups.items():
            if d < t:
                continue
            w = weight(d, t)
            if w == 0.0:
                continue
            pattern = subset_patterns(d, t)
            subs.append(arr[:, pattern].reshape(len(arr) * len(pattern), t))
            vals.append(np.repeat(v * w, len(pattern)))
        if not subs:
            continue
        sub = np.concatenate(subs)
        val = np.concatenate(vals)
        if t == 0:
            total = float(val.sum())
            if total != 0.0:
                out_keys.append(())
                out_values.append(np.array([total]))
            continue
        uniq, inverse = np.unique(sub, axis=0, return_inverse=True)
        sums = np.bincount(inverse.reshape(-1), weights=val, minlength=len(uniq))
        keep = sums != 0.0
        out_keys.extend(map(tuple, uniq[keep].tolist()))
        out_values.append(sums[keep])
    return out_keys, (np.concatenate(out_values) if out_values else np.zeros(0))


def _compose(w: Callable[[int, int], float]) -> Callable[[int, int], float]:
    """Fourier weight W(r, t) = Σ_{j=t}^{r} C(r−t, j−t) (−2)^j w(j, t) for a Möbius weight w."""

    @lru_cache(maxsize=None)
    def weight(r: int, t: int) -> float:
        return float(sum(comb(r - t, j - t) * (-2.0) ** j * w(j, t) for j in range(t, r + 1)))

    return weight


# ---------------------------------------------------------------------------------------------
# Möbius weights w(|S|, |T|) of each index (functions of sizes only)

_BERNOULLI = {0: 1.0, 1: -0.5}  # B_1 = −1/2: the convention that makes k-SII efficient


def _bernoulli(m: int) -> float:
    """Bernoulli number B_m (B_1 = −1/2), from the recurrence Σ_{j<m+1} C(m+1, j) B_j = 0."""
    if m not in _BERNOULLI:
        _BERNOULLI[m] = -sum(comb(m + 1, j) * _bernoulli(j) for j in range(m)) / (m + 1)
    return _BERNOULLI[m]


def _w_mobius(s: int, t: int) -> float:
    return 1.0 if s == t else 0.0


def _w_shapley(s: int, t: int) -> float:
    if t == 0:
        return 1.0 if s == 0 else 0.0  # the baseline v(∅)
    return 1.0 / s if t == 1 else 0.0


def _w_banzhaf(s: int, t: int) -> float:
    return 2.0 ** (1 - s) if t == 1 else 0.0


def _w_sii(s: int, t: int) -> float:
    return 1.0 / (s - t + 1)


def _w_bii(s: int, t: int) -> float:
    return 2.0 ** (t - s)


@lru_cache(maxsize=None)
def _w_ksii(k: int, s: int, t: int) -> float:
    """k-SII (Bordt & von Luxburg): top order equals SII, lower orders add Bernoulli-weighted SII."""
    if t == 0:
        return 1.0 if s == 0 else 0.0
    if t > k or s < t:
        return 0.0
    if t == k:
        return 1.0 / (s - k + 1)
    step = _bernoulli(k - t) * comb(s - t, k - t) / (s - k + 1) if s >= k else 0.0
    return _w_ksii(k - 1, s, t) + step


def _w_stii(k: int, s: int, t: int) -> float:
    """Shapley–Taylor: Möbius below order k; each a(S), |S| ≥ k, split evenly over its k-subsets."""
    if t < k:
        return 1.0 if s == t else 0.0
    if t == k:
        return 1.0 / comb(s, k)
    return 0.0


def _w_fsii(k: int, s: int, t: int) -> float:
    """Faith-Shap (Tsai, Yeh & Ravikumar 2023, closed form in the Möbius transform)."""
    if t > k or s < t:
        return 0.0
    if s == t:
        return 1.0
    if s <= k:
        return 0.0
    return (-1.0) ** (k - t) * t / (k + t) * comb(k, t) * comb(s - 1, k) / comb(s + k - 1, k + t)


def _fourier_weight(index: str, order: int) -> Callable[[int, int], float]:
    """W(|S|, |T|) applied to F(S) for `index` at `order`."""
    if index == "fourier":
        return lambda r, t: 1.0 if r == t else 0.0
    if index == "fbii":
        # Uniform least squares onto order <= k is Fourier truncation, then Möbius of the result.
        return lambda r, t: (-2.0) ** t if r <= order else 0.0
    mobius_weight = {
        "mobius": _w_mobius,
        "shapley": _w_shapley,
        "banzhaf": _w_banzhaf,
        "sii": _w_sii,
        "bii": _w_bii,
        "k-sii": lambda s, t: _w_ksii(order, s, t),
        "stii": lambda s, t: _w_stii(order, s, t),
        "fsii": lambda s, t: _w_fsii(order, s, t),
    }[index]
    return _compose(mobius_weight)


# ---------------------------------------------------------------------------------------------
# Public API


def fourier_to_mobius(fourier: SparseFourier) -> SparseMobius:
    """Möbius coefficients a(S) = (−2)^{|S|} Σ_{T⊇S} F(T) over all subsets of the support."""
    keys, values = superset_sums(fourier.keys, fourier.values, lambda r, t: (-2.0) ** t)
    return SparseMobius(fourier.n, keys, values)


def mobius_to_fourier(mobius: SparseMobius) -> SparseFourier:
    """Fourier coefficients F(T) = (−1)^{|T|} Σ_{S⊇T} 2^{−|S|} a(S)."""
    keys, values = superset_sums(mobius.keys, mobius.values, lambda s, t: (-1.0) ** t * 2.0 ** (-s))
    return SparseFourier(mobius.n, keys, values)


def interaction_index(
    fourier: SparseFourier, index: str = "fourier", order: int | None = None
) -> dict[Key, float]:
    """Interaction values of `index` at `order` as {sorted tuple: value}, from the sparse support.

    index: fourier, mobius, banzhaf, shapley, bii, sii, k-sii, fbii, fsii, stii (shapiq names accepted).
    order: for k-sii, fbii, fsii, stii the order of the index (default: the degree of the support, at which
    all four equal the Möbius transform); for fourier, mobius, sii, bii the largest order reported;
    banzhaf and shapley are first order (order must be None or 1). The empty tuple carries the
    baseline where the index defines one (v(∅) for shapley, k-sii, fsii, stii, mobius; the
    constant for fourier; the index's own value at ∅ for sii, bii, fbii).
    """
    name = canonical_index(index)
    if order is not None and (int(order) != order or order < 1):
        raise ValueError(f"order must be a positive integer or None, got {order!r}")
    if name in ("banzhaf", "shapley"):
        if order not in (None, 1):
            raise ValueError(f"{name} values are first order; got order={order}")
        order = 1
    degree = fourier.degree
    k = max(degree, 1) if order is None else int(order)
    min_order = 1 if name == "banzhaf" else 0
    keys, values = superset_sums(fourier.keys, fourier.values, _fourier_weight(name, k), max_order=k, min_order=min_order)
    return dict(zip(keys, values.tolist()))
