"""Adaptive ProxySPEX: spend the training budget in rounds, each leaning on the features earlier answers showed active.

Round 1 asks uniform random masks (the head of ProxySPEX's own stream, so a noise pilot's answers are reused)
and fits ProxySPEX to them. Every later round asks masks whose features are kept independently, the ones
that round's fit found active with probability `keep` (> 1/2, so that the AND-type interactions of LLM
value functions, on only when all their features are present, fire more often) and every other feature with
probability 1/2. The final fit is ProxySPEX on every answer: a regression, not a uniform-design average, so
the non-uniform rounds bias nothing; what they change is which interactions the trees get to see.
Each round is one call to the value function (one provider batch in batch mode).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from spex_api.engine.design import adaptive_rounds
from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import SparseFourier, incidence
from spex_api.engine.oracle import Oracle, ValueFunction
from spex_api.engine.masks import distinct_rows
from spex_api.engine.proxyspex import ProxySPEX, uniform_masks
from spex_api.engine.seeding import RandomState, check_random_state, stream

log = logging.getLogger(__name__)


def feature_importance(fourier: SparseFourier) -> np.ndarray:
    """Σ over the non-constant keys holding feature i of F(k)²: how much of the variance feature i takes part in."""
    keys = [k for k in fourier.keys if k]
    if not keys:
        return np.zeros(fourier.n)
    values = np.array([v for k, v in zip(fourier.keys, fourier.values) if k])
    return np.asarray(incidence(keys, fourier.n) @ values**2).reshape(-1)


def active_features(fourier: SparseFourier, share: float) -> np.ndarray:
    """The fewest features (sorted) holding `share` of the total feature importance; none for a constant fit."""
    imp = feature_importance(fourier)
    if imp.sum() <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-imp, kind="stable")
    cum = np.cumsum(imp[order])
    return np.sort(order[: int(np.searchsorted(cum, share * cum[-1] * (1 - 1e-12))) + 1])


def focused_masks(n: int, count: int, active: np.ndarray, keep: float, rng: np.random.Generator,
                  seen: np.ndarray) -> np.ndarray:
    """Up to `count` distinct masks not in `seen`: active features kept with probability `keep`, the rest 1/2."""
    prob = np.full(n, 0.5)
    prob[active] = keep
    draw = rng.random((2 * count + 8, n)) < prob
    both = np.concatenate([seen, draw])
    first = distinct_rows(both)
    return both[first[first >= len(seen)]][:count]


class AdaptiveProxySPEX:
    """ProxySPEX whose n_samples training masks are asked in `rounds` rounds (see the module docstring).

    n: number of features. n_samples: training masks in all (default ProxySPEX.default_samples). rounds: >= 2.
    first_share: share of n_samples asked uniformly in round 1 (the rest is split evenly over later rounds).
    active_share: share of the fitted feature importance that names the active features. keep: their keep
    probability in later rounds. max_order, random_state, n_jobs: as ProxySPEX (it fits every round).
    """

    def __init__(self, n: int, n_samples: int | None = None, rounds: int = 2, first_share: float = 0.5,
                 active_share: float = 0.99, keep: float = 0.7, max_order: int = 5, random_state: RandomState = 0,
                 n_jobs: int | None = 1) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 2:
            raise ValueError(f"rounds must be an integer >= 2 (one round is ProxySPEX), got {rounds!r}")
        if not 0.0 < first_share < 1.0:
            raise ValueError(f"first_share must be in (0, 1), got {first_share!r}")
        if not 0.0 < active_share <= 1.0:
            raise ValueError(f"active_share must be in (0, 1], got {active_share!r}")
        if not 0.5 <= keep < 1.0:
            raise ValueError(f"keep must be in [0.5, 1), got {keep!r}")
        self.n, self.n_samples, self.rounds = n, n_samples, int(rounds)
        self.first_share, self.active_share, self.keep = float(first_share), float(active_share), float(keep)
        self.max_order, self.random_state, self.n_jobs = max_order, random_state, n_jobs
        self._seed = check_random_state(random_state)  # once: round 1 and every fit share this seed
        self._proxy()._check()

    def _proxy(self, n_samples: int | None = None) -> ProxySPEX:
        return ProxySPEX(self.n, n_samples=n_samples, max_order=self.max_order, random_state=self._seed,
                         n_jobs=self.n_jobs)

    def round_sizes(self) -> tuple[int, ...]:
        """Training masks asked in each round (the planner's `Plan.rounds` for the same settings)."""
        return adaptive_rounds(self._proxy(self.n_samples)._samples(), self.rounds, self.first_share)

    def fit(self, value_fn: ValueFunction | Oracle) -> Explanation:
        """Ask round 1 (uniform), fit, ask each later round focused on the active features, fit all answers."""
        oracle = value_fn if isinstance(value_fn, Oracle) else Oracle(value_fn, self.n)
        if oracle.n != self.n:
            raise ValueError(f"oracle has n={oracle.n}, estimator has n={self.n}")
        sizes = self.round_sizes()
        before, wall0 = oracle.queries_used, time.perf_counter()
        masks = uniform_masks(self.n, sizes[0], stream(self._seed))  # ProxySPEX's (and the noise pilot's) stream
        y = oracle(masks)
        focus_rng = stream(self._seed, 0xADA)
        history = [f"round 1: {len(masks)} uniform masks"]
        n_active = 0
        for r, size in enumerate(sizes[1:], start=2):
            fit = self._proxy().fit_answers(masks, y)
            active = active_features(fit.fourier, self.active_share)
            new = focused_masks(self.n, size, active, self.keep, focus_rng, masks)
            y = np.concatenate([y, oracle(new)])
            masks = np.concatenate([masks, new])
            n_active = len(active)
            history.append(f"round {r}: {len(new)} masks keeping the {n_active} features round {r - 1}'s fit found "
                           f"active with probability {self.keep:g} (the others 1/2)")
            log.debug("adaptive round %d: %d masks, %d active features", r, len(new), len(active))
        result = self.fit_answers(masks, y)
        assert result.diagnostics is not None  # ProxySPEX.fit_answers always records them
        diagnostics = dataclasses.replace(
            result.diagnostics, wall_seconds=time.perf_counter() - wall0,
            params={**result.diagnostics.params, "adaptive_rounds": len(sizes), "n_active": n_active},
            reasons=(*result.diagnostics.reasons, "asked in rounds: " + "; ".join(history)))
        return dataclasses.replace(result, queries_used=oracle.queries_used - before, diagnostics=diagnostics)

    def fit_answers(self, masks: np.ndarray, y: np.ndarray) -> Explanation:
        """ProxySPEX on answers already paid for (any design: its refit is a regression); no query is sent."""
        return self._proxy().fit_answers(masks, y)
