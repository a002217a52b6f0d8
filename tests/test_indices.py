"""Every index against its brute-force definition over all 2^n coalitions (small n)."""

import itertools
from math import comb, factorial

import numpy as np
import pytest

from spex_api.engine.fourier import SparseFourier
from spex_api.engine.indices import (
    SparseMobius,
    canonical_index,
    fourier_to_mobius,
    interaction_index,
    mobius_to_fourier,
)

N = 6
BERNOULLI = [1.0, -0.5, 1 / 6, 0.0, -1 / 30, 0.0, 1 / 42]


def subsets(items, max_size=None):
    items = tuple(items)
    top = len(items) if max_size is None else max_size
    return [c for r in range(top + 1) for c in itertools.combinations(items, r)]


def random_fourier(n=N, n_terms=25, max_degree=None, seed=0):
    rng = np.random.default_rng(seed)
    keys = {()}
    max_degree = n if max_degree is None else max_degree
    while len(keys) < n_terms:
        d = int(rng.integers(1, max_degree + 1))
        keys.add(tuple(sorted(rng.choice(n, d, replace=False).tolist())))
    keys = sorted(keys, key=lambda k: (len(k), k))
    return SparseFourier(n, keys, rng.normal(size=len(keys)))


class Game:
    """v(S) for every coalition S of a Fourier function, by direct evaluation."""

    def __init__(self, fourier):
        self.n = fourier.n
        self.coalitions = subsets(range(self.n))
        masks = np.zeros((len(self.coalitions), self.n), dtype=bool)
        for row, s in enumerate(self.coalitions):
            masks[row, list(s)] = True
        self.table = dict(zip(self.coalitions, fourier.predict(masks)))

    def v(self, s):
        return self.table[tuple(sorted(s))]

    def delta(self, t, s):
        """Discrete derivative Δ_T v(S) = Σ_{L⊆T} (−1)^{|T|−|L|} v(S ∪ L)."""
        return sum((-1) ** (len(t) - len(u)) * self.v(set(s) | set(u)) for u in subsets(t))

    def rest(self, t):
        return subsets(sorted(set(range(self.n)) - set(t)))


def brute_shapley(g):
    out = {}
    for i in range(g.n):
        total = 0.0
        for perm in itertools.permutations(range(g.n)):
            before = perm[: perm.index(i)]
            total += g.v(set(before) | {i}) - g.v(before)
        out[(i,)] = total / factorial(g.n)
    return out


def brute_banzhaf(g):
    return {(i,): np.mean([g.delta((i,), s) for s in g.rest((i,))]) for i in range(g.n)}


def brute_sii(g, t):
    n, k = g.n, len(t)
    return sum(
        factorial(n - len(s) - k) * factorial(len(s)) / factorial(n - k + 1) * g.delta(t, s) for s in g.rest(t)
    )


def brute_bii(g, t):
    return np.mean([g.delta(t, s) for s in g.rest(t)])


def brute_ksii(g, k):
    """Bordt & von Luxburg: Φ^1 = Shapley; Φ^k(T) = SII(T) at |T| = k, else Φ^{k−1}(T) + B_{k−|T|} Σ SII."""
    sii = {t: brute_sii(g, t) for t in subsets(range(g.n), k) if t}
    phi = {t: v for t, v in brute_shapley(g).items()}
    for order in range(2, k + 1):
        new = {}
        for t in subsets(range(g.n), order):
            if not t:
                continue
            if len(t) == order:
                new[t] = sii[t]
            else:
                sup = [s for s in sii if len(s) == order and set(t) <= set(s)]
                new[t] = phi[t] + BERNOULLI[order - len(t)] * sum(sii[s] for s in sup)
        phi = new
    phi[()] = g.v(())
    return phi


def brute_stii(g, k):
    out = {(): g.v(())}
    for t in subsets(range(g.n), k):
        if not t:
            continue
        if len(t) < k:
            out[t] = g.delta(t, ())
        else:
            out[t] = k / g.n * sum(g.delta(t, s) / comb(g.n - 1, len(s)) for s in g.rest(t))
    return out


def design(g, k):
    """0/1 matrix [T ⊆ S] for coalitions S (rows) and terms T with |T| ≤ k (columns)."""
    terms = subsets(range(g.n), k)
    x = np.array([[set(t) <= set(s) for t in terms] for s in g.coalitions], dtype=float)
    y = np.array([g.v(s) for s in g.coalitions])
    return terms, x, y


def brute_fbii(g, k):
    """Uniform-weight least squares over all coalitions, restricted to order <= k."""
    terms, x, y = design(g, k)
    return dict(zip(terms, np.linalg.lstsq(x, y, rcond=None)[0]))


def brute_fsii(g, k):
    """Shapley-kernel-weighted least squares with v(∅) and v(N) fitted exactly (KKT system)."""
    terms, x, y = design(g, k)
    sizes = np.array([len(s) for s in g.coalitions])
    inner = (sizes > 0) & (sizes < g.n)
    mu = np.zeros(len(sizes))
    s = sizes[inner]
    mu[inner] = (g.n - 1) / (np.array([comb(g.n, int(v)) for v in s]) * s * (g.n - s))
    eq = ~inner
    a = x[inner].T @ (mu[inner, None] * x[inner])
    kkt = np.block([[2 * a, x[eq].T], [x[eq], np.zeros((eq.sum(), eq.sum()))]])
    rhs = np.concatenate([2 * x[inner].T @ (mu[inner] * y[inner]), y[eq]])
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return dict(zip(terms, sol[: len(terms)]))


def brute_mobius(g):
    return {s: sum((-1) ** (len(s) - len(u)) * g.v(u) for u in subsets(s)) for s in g.coalitions}


def assert_matches(ours, expect, keys=None, atol=1e-9):
    keys = set(expect) | set(ours) if keys is None else keys
    for key in keys:
        assert ours.get(key, 0.0) == pytest.approx(expect.get(key, 0.0), abs=atol), key


@pytest.fixture(scope="module", params=[0, 1])
def case(request):
    f = random_fourier(seed=request.param)
    return f, Game(f)


def test_mobius_matches_definition_and_round_trips(case):
    f, g = case
    mob = fourier_to_mobius(f)
    assert_matches(mob.to_dict(), brute_mobius(g))
    X = np.array(list(itertools.product([0, 1], repeat=N)), dtype=bool)
    assert np.allclose(mob.predict(X), f.predict(X))
    back = mobius_to_fourier(mob)
    assert_matches(back.to_dict(), f.to_dict())
    assert_matches(interaction_index(f, "mobius"), brute_mobius(g))


def test_mobius_to_fourier_of_a_unanimity_game():
    # x0·x1 = (1 − χ0 − χ1 + χ01)/4
    f = mobius_to_fourier(SparseMobius(3, [(0, 1)], [1.0]))
    assert_matches(f.to_dict(), {(): 0.25, (0,): -0.25, (1,): -0.25, (0, 1): 0.25})


def test_shapley_and_banzhaf(case):
    f, g = case
    sv = interaction_index(f, "shapley")
    assert_matches(sv, {**brute_shapley(g), (): g.v(())})
    assert sum(sv.values()) == pytest.approx(g.v(range(N)))
    assert_matches(interaction_index(f, "banzhaf"), brute_banzhaf(g))
    with pytest.raises(ValueError):
        interaction_index(f, "shapley", order=2)


@pytest.mark.parametrize("order", [2, 3, None])
def test_sii_and_bii(case, order):
    f, g = case
    k = N if order is None else order
    terms = subsets(range(N), k)
    assert_matches(interaction_index(f, "sii", order), {t: brute_sii(g, t) for t in terms})
    assert_matches(interaction_index(f, "bii", order), {t: brute_bii(g, t) for t in terms})


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_k_sii_matches_definition_and_is_efficient(case, k):
    f, g = case
    ksii = interaction_index(f, "k-SII", k)
    assert_matches(ksii, brute_ksii(g, k))
    assert sum(v for t, v in ksii.items() if t) == pytest.approx(g.v(range(N)) - g.v(()))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stii_matches_definition(case, k):
    f, g = case
    stii = interaction_index(f, "stii", k)
    assert_matches(stii, brute_stii(g, k))
    assert sum(stii.values()) == pytest.approx(g.v(range(N)))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_faith_banzhaf_is_uniform_least_squares(case, k):
    f, g = case
    assert_matches(interaction_index(f, "fbii", k), brute_fbii(g, k), atol=1e-8)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_faith_shapley_is_kernel_weighted_least_squares(case, k):
    f, g = case
    fsii = interaction_index(f, "fsii", k)
    assert_matches(fsii, brute_fsii(g, k), atol=1e-8)
    assert sum(fsii.values()) == pytest.approx(g.v(range(N)))
    if k == 1:
        assert_matches({t: v for t, v in fsii.items() if t}, brute_shapley(g), atol=1e-8)


def test_full_order_indices_equal_mobius(case):
    f, g = case
    mob = brute_mobius(g)
    for index in ("k-sii", "fsii", "fbii", "stii"):
        assert_matches(interaction_index(f, index), mob, atol=1e-8)


def test_index_names_and_orders():
    assert canonical_index("k-SII") == "k-sii"
    assert canonical_index("Moebius") == "mobius"
    assert canonical_index("SV") == "shapley"
    f = random_fourier()
    with pytest.raises(ValueError, match="unknown index"):
        interaction_index(f, "owen")
    with pytest.raises(ValueError, match="order"):
        interaction_index(f, "k-sii", 0)
    assert max(len(t) for t in interaction_index(f, "fourier", 2)) == 2


def test_conversion_is_sparse_and_fast_at_n_1000():
    rng = np.random.default_rng(3)
    keys = {tuple(sorted(rng.choice(1000, int(rng.integers(1, 6)), replace=False).tolist())) for _ in range(2000)}
    f = SparseFourier(1000, sorted(keys), rng.normal(size=len(keys)))
    for index in ("mobius", "shapley", "k-sii", "fsii", "stii", "fbii", "sii"):
        interaction_index(f, index, None if index in ("mobius", "shapley", "sii") else 3)
    # Sparse: nothing outside subsets of the support, and k-SII stays efficient.
    ksii = interaction_index(f, "k-sii", 3)
    ones, zeros = np.ones((1, 1000), bool), np.zeros((1, 1000), bool)
    efficiency = f.predict(ones)[0] - f.predict(zeros)[0]
    assert sum(v for t, v in ksii.items() if t) == pytest.approx(efficiency)
    assert len(fourier_to_mobius(f)) <= 32 * len(f)
