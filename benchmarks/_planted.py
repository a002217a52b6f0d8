"""Seeded planted sparse functions for benchmarks and tests.

Hierarchical: a few "top" interactions of degree <= max_degree in the Möbius (AND) basis, plus
some of their subsets at magnitudes decaying with the number of features dropped (the structure
LLM value functions show and ProxySPEX's trees exploit). Non-hierarchical: isolated interactions
with no subsets (sparse but adversarial for tree proxies). Optional noise is a deterministic
function of the mask (hashed), so a repeated or re-ordered query gets the same answer, as a cached
API call would.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from spex_api.engine.fourier import SparseFourier, as_masks



def _splitmix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed uint64 hash of each entry."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass
class PlantedFunction:
    """A value function with a known sparse Fourier transform, plus optional per-mask noise.

    `noise` is the noise standard deviation relative to the signal's standard deviation over
    uniform random masks (sqrt of the non-constant Fourier energy).
    """

    fourier: SparseFourier
    noise: float = 0.0
    seed: int = 0
    kind: str = "hierarchical"
    calls: int = field(default=0, init=False)
    queries: int = field(default=0, init=False)

    @property
    def n(self) -> int:
        return self.fourier.n

    @property
    def signal_std(self) -> float:
        values = np.array([v for k, v in zip(self.fourier.keys, self.fourier.values) if k])
        return float(np.sqrt(np.sum(values**2)))

    def clean(self, masks: np.ndarray) -> np.ndarray:
        """Noiseless f(x)."""
        return self.fourier.predict(as_masks(masks, self.n))

    def _noise(self, masks: np.ndarray) -> np.ndarray:
        packed = np.packbits(masks, axis=1)
        pad = (-packed.shape[1]) % 8
        words = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)
        rng = np.random.default_rng(self.seed + 7919)
        mult = rng.integers(1, 2**63, size=(2, words.shape[1]), dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):
            h = [_splitmix((words * m).sum(axis=1, dtype=np.uint64) + np.uint64(i)) for i, m in enumerate(mult)]
        u1 = ((h[0] >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        u2 = ((h[1] >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = as_masks(masks, self.n)
        self.calls += 1
        self.queries += len(masks)
        y = self.clean(masks)
        if self.noise > 0:
            y = y + self.noise * self.signal_std * self._noise(masks)
        return y


def _random_support(rng: np.random.Generator, n: int, degree: int, taken: set) -> tuple[int, ...]:
    """A random degree-sized support not in taken (raises when every one is taken, instead of looping)."""
    if sum(len(k) == degree for k in taken) >= math.comb(n, degree):
        raise ValueError(f"no unused support of degree {degree} left among {n} features; ask for fewer terms")
    while True:
        key = tuple(sorted(rng.choice(n, size=degree, replace=False).tolist()))
        if key not in taken:
            return key


def mobius_to_fourier(n: int, mobius: dict[tuple[int, ...], float]) -> SparseFourier:
    """Exact Fourier form of f(x) = sum_T a(T) prod_{i in T} x_i: F(S) = sum_{T ⊇ S} a(T) (-1)^|S| 2^-|T|."""
    coefficients: dict[tuple[int, ...], float] = {}
    for top, a in mobius.items():
        for size in range(len(top) + 1):
            for sub in itertools.combinations(top, size):
                coefficients[sub] = coefficients.get(sub, 0.0) + a * (-1.0) ** size / 2.0 ** len(top)
    return SparseFourier.from_dict(n, coefficients)


def planted_hierarchical(
    n: int,
    n_top: int = 10,
    max_degree: int = 4,
    min_degree: int = 2,
    decay: float = 0.5,
    subset_fraction: float = 0.5,
    constant: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
) -> PlantedFunction:
    """`n_top` top interactions (degrees uniform in [min_degree, max_degree]) with some of their subsets.

    Built in the Möbius (AND) basis, as LLM effects are ("this clause matters only when that one is
    present"): a top T gets a(T) = ±U(0.5, 1.5); each proper non-empty subset S of T is kept with
    probability `subset_fraction` with a(S) = ±|a(T)| decay^(|T|-|S|) U(0.5, 1). The Fourier form has
    every subset of every top (a degree-d AND spreads over all 2^d subsets), so ~10 tops of degree
    <= 4 give ~100-150 Fourier terms.
    """
    if not 1 <= min_degree <= max_degree <= n:
        raise ValueError(f"need 1 <= min_degree <= max_degree <= n, got {min_degree}, {max_degree}, {n}")
    rng = np.random.default_rng(seed)
    mobius: dict[tuple[int, ...], float] = {(): constant}
    tops: set[tuple[int, ...]] = set()
    for _ in range(n_top):
        top = _random_support(rng, n, int(rng.integers(min_degree, max_degree + 1)), tops)
        tops.add(top)
        scale = rng.uniform(0.5, 1.5)
        mobius[top] = mobius.get(top, 0.0) + scale * rng.choice((-1.0, 1.0))
        for size in range(len(top) - 1, 0, -1):
            for sub in itertools.combinations(top, size):
                if rng.random() < subset_fraction:
                    mag = scale * decay ** (len(top) - size) * rng.uniform(0.5, 1.0)
                    mobius[sub] = mobius.get(sub, 0.0) + mag * rng.choice((-1.0, 1.0))
    return PlantedFunction(mobius_to_fourier(n, mobius), noise=noise, seed=seed, kind="hierarchical")


def planted_isolated(
    n: int,
    n_terms: int = 20,
    degree: int = 4,
    constant: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
) -> PlantedFunction:
    """`n_terms` interactions of exactly `degree` with no lower-order subsets (non-hierarchical)."""
    if not 1 <= degree <= n:
        raise ValueError(f"need 1 <= degree <= n, got degree={degree}, n={n}")
    rng = np.random.default_rng(seed)
    coefficients: dict[tuple[int, ...], float] = {(): constant}
    for _ in range(n_terms):
        key = _random_support(rng, n, degree, set(coefficients))
        coefficients[key] = rng.uniform(0.5, 1.5) * rng.choice((-1.0, 1.0))
    return PlantedFunction(SparseFourier.from_dict(n, coefficients), noise=noise, seed=seed, kind="isolated")


def planted_additive(n: int, n_terms: int | None = None, noise: float = 0.0, seed: int = 0) -> PlantedFunction:
    """A purely first-order function (no interactions): the case where a linear fit is best."""
    rng = np.random.default_rng(seed)
    n_terms = n if n_terms is None else min(n_terms, n)
    features = rng.choice(n, size=n_terms, replace=False)
    coefficients = {(): 1.0, **{(int(i),): rng.normal() for i in features}}
    return PlantedFunction(SparseFourier.from_dict(n, coefficients), noise=noise, seed=seed, kind="additive")


def random_masks(n: int, n_masks: int, seed: int) -> np.ndarray:
    """Uniform random masks (each feature kept with probability 1/2)."""
    return np.random.default_rng(seed).random((n_masks, n)) < 0.5
