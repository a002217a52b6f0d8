"""The engine's front door: plan a budget, spend it through one capped Oracle, measure faithfulness.

`Explainer(value_fn, n, budget).explain()` runs SPEX or ProxySPEX as planned, queries a held-out
slice of uniform random masks, and compares the result with a first-order LassoCV fit of the same
training answers. The returned explanation is never less faithful than that linear fit: when
interactions do not pay, the linear fit is returned and the diagnostics say so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import KFold

from spex_api.engine.explanation import Explanation, NoiseEstimate
from spex_api.engine.fourier import r2_score
from spex_api.engine.baseline import LinearBaseline
from spex_api.engine import planner
from spex_api.engine.planner import (CROSSVAL_FOLDS, CROSSVAL_MAX_ANSWERS, MIN_HOLDOUT, Plan, cross_validates,
                                     default_noise_pairs, minimum_budget)
from spex_api.engine.hierarchical import HierarchicalLasso
from spex_api.engine.kernel import FourierRidge
from spex_api.engine.neighbours import NeighbourLasso
from spex_api.engine.masks import row_ids
from spex_api.engine.regression import support_cv_r2
from spex_api.engine.seeding import RandomState, check_random_state, stream
from spex_api.engine.oracle import Oracle, ValueFunction
from spex_api.engine.threads import check_n_jobs, limit_threads


def _beats_linear(y: np.ndarray, pred: np.ndarray, pred_linear: np.ndarray) -> tuple[bool, float, float]:
    """One-standard-error rule on held-out answers: interactions must beat the linear fit by more than
    the standard error of the paired difference in squared error (a 20-mask slice is noisy; the simpler
    model wins ties). Returns (beats, mean gain, its standard error)."""
    d = (y - pred_linear) ** 2 - (y - pred) ** 2
    gain = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return gain > se, gain, se


# Most answers the kernel family is fitted on: an N x N eigendecomposition per prior setting (cubic in N; on
# 500 answers about a second of CPU for the whole grid). At these budgets the fit is cross-validated anyway.
KERNEL_MAX_ANSWERS = CROSSVAL_MAX_ANSWERS
# Fewest unseen held-out masks worth an R² (below it, small-n runs fall back to cross-validation).
MIN_FRESH = 10


def _fresh_masks(rng: np.random.Generator, count: int, seen: np.ndarray) -> np.ndarray:
    """Up to `count` distinct uniform random masks not among `seen`, so the held-out R² is truly held out.

    Only matters for small n (2^n comparable to the budget); for large n a collision never happens.
    """
    if count == 0:
        return np.zeros((0, seen.shape[1]), dtype=bool)
    candidates = rng.random((4 * count, seen.shape[1])) < 0.5
    first, ids = row_ids(np.vstack([seen, candidates]))
    cand_ids = ids[len(seen):]
    unseen = ~np.isin(cand_ids, ids[: len(seen)])
    first_time = first[cand_ids] == np.arange(len(seen), len(ids))
    return candidates[np.flatnonzero(unseen & first_time)[:count]]


class Explainer:
    """Explain a value function over n features with at most `budget` queries.

    Parameters
    ----------
    value_fn: callable (sync or async) mapping a (N, n) bool mask array (True = kept) to N floats.
    n: number of features.
    budget: hard cap on distinct masks sent to value_fn.
    method: "auto", "spex", "proxyspex", "adaptive" (ProxySPEX asked in rounds) or "exhaustive" (see
        `spex_api.engine.planner.plan`).
    max_order: largest interaction order sought (SPEX: BCH correction capacity t).
    random_state: seeds every random draw (algorithm, held-out masks, baseline folds).
    holdout: fraction of the budget spent on held-out uniform random masks (0 = none; the
        faithfulness is then None and the linear comparison uses cross-validated R²).
    min_holdout: floor on the held-out slice when holdout > 0.
    feature_names: optional names, one per feature.
    noise_pairs: uniform masks asked twice before the run to measure repeat noise (0 = none, the default
        for deterministic Python functions; "auto" = a few % of the budget, see default_noise_pairs). The
        estimate (NoiseEstimate: noise sd, score sd, R² ceiling) is attached to the explanation, and the
        planner refuses SPEX when the noise is too high for it. The pilot costs 2 * noise_pairs queries of
        the budget; a value function taking a `repeat` keyword is told which asking it is (so a cache does
        not answer a re-ask with the first answer).
    plan: the plan to spend, made by `spex_api.engine.planner.plan` with these settings (e.g. one already
        shown to the user); None plans here. A noise pilot still re-plans once it has measured the noise.
    n_jobs: threads of the fits (LightGBM's, and the BLAS pools' through threadpoolctl, see
        `spex_api.engine.threads`); None = the libraries' defaults. 1 by default: as fast in wall time for
        these fits (ProxySPEX at n=128 and 2,000 answers) as the default pools while using one core, so
        several explanations at once scale with cores. Another thread count changes the results only by
        rounding (~1e-15: LightGBM sums in another order); the SDK's paths all use the default, so theirs
        are equal bit for bit.
    ordered_features: the features are spans of one text in reading order (words, sentences, documents), so
        neighbours are likelier to interact than distant features; ProxySPEX plans then also compare the
        neighbour-pair Lasso (`spex_api.engine.neighbours`). False for functions whose feature order means nothing.
    """

    def __init__(
        self,
        value_fn: ValueFunction,
        n: int,
        budget: int,
        method: str = "auto",
        max_order: int = 5,
        random_state: RandomState = 0,
        holdout: float = 0.05,
        feature_names: Sequence[str] | None = None,
        min_holdout: int = MIN_HOLDOUT,
        noise_pairs: int | str = 0,
        plan: Plan | None = None,
        n_jobs: int | None = 1,
        ordered_features: bool = False,
    ) -> None:
        if not callable(value_fn):
            raise TypeError(f"value_fn must be callable, got {type(value_fn).__name__}")
        if feature_names is not None and len(feature_names) != n:
            raise ValueError(f"{len(feature_names)} feature names for n={n} features")
        self.value_fn = value_fn
        self.n = n
        self.budget = budget
        self.method = method
        self.max_order = max_order
        self.random_state = check_random_state(random_state)  # one int: every draw below is a stream of it
        self.holdout = holdout
        self.min_holdout = min_holdout
        self.feature_names = None if feature_names is None else [str(s) for s in feature_names]
        self.noise_pairs = self._noise_pairs(noise_pairs)
        self.n_jobs = check_n_jobs(n_jobs)
        self.ordered_features = bool(ordered_features)
        if plan is None:
            plan = self._make_plan(None)
        elif (plan.n, plan.budget, plan.max_order) != (n, budget, max_order):
            raise ValueError(f"the plan is for n={plan.n}, budget={plan.budget}, max_order={plan.max_order}; "
                             f"this explainer has n={n}, budget={budget}, max_order={max_order}")
        self._plan = plan

    def _noise_pairs(self, noise_pairs: int | str) -> int:
        """Resolve noise_pairs; "auto" gives up the pilot when the budget could not afford it."""
        if noise_pairs == "auto":
            pairs = default_noise_pairs(self.budget)
            floor = minimum_budget(self.n, self.method, self.max_order, self.holdout, self.min_holdout)
            return pairs if isinstance(self.budget, int) and self.budget - 2 * pairs >= floor else 0
        if isinstance(noise_pairs, bool) or not isinstance(noise_pairs, (int, np.integer)) or noise_pairs < 0:
            raise ValueError(f"noise_pairs must be an integer >= 0 or 'auto', got {noise_pairs!r}")
        if noise_pairs == 1:
            raise ValueError("noise_pairs=1 gives no noise estimate worth its queries; use 0 or >= 2")
        return int(noise_pairs)

    def _make_plan(self, noise: float | None) -> Plan:
        """The plan for what is left after the noise pilot (2 * noise_pairs queries)."""
        reserve = 2 * self.noise_pairs
        if not isinstance(self.budget, (int, np.integer)) or self.budget - reserve < 1:
            raise ValueError(f"budget {self.budget!r} cannot pay for a noise pilot of {reserve} queries")
        p = planner.plan(self.n, self.budget - reserve, method=self.method, max_order=self.max_order,
                 holdout=self.holdout, min_holdout=self.min_holdout, noise=noise)
        if not reserve:
            return p
        return dataclasses.replace(p, budget=self.budget, n_noise=reserve, total=p.total + reserve)

    def _measure_noise(self, oracle: Oracle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pilot: noise_pairs uniform masks (the head of ProxySPEX's stream, so its answers are reused when
        ProxySPEX runs), each asked, then asked again in another order (a server that batches requests sees
        other batch companions, as it would on any later day)."""
        from spex_api.engine.proxyspex import uniform_masks

        masks = uniform_masks(self.n, self.noise_pairs + 2, stream(self.random_state))[2:]
        first = oracle(masks)
        order = stream(self.random_state, 0x5EED).permutation(len(masks))
        again = np.empty(len(masks))
        again[order] = oracle.repeat(masks[order])
        return masks, first, again

    def plan(self) -> Plan:
        """The plan (method, b, exact query counts, reason); no query is sent."""
        return self._plan

    def _algorithm(self) -> Any:
        p = self._plan
        if p.method == "exhaustive":
            from spex_api.engine.exhaustive import Exhaustive

            return Exhaustive(self.n)
        if p.method == "spex":
            from spex_api.engine.spex import SPEX

            return SPEX(self.n, max_order=self.max_order, b=p.b, random_state=self.random_state)
        if p.adaptive:  # one call to the value function (one provider batch) per round
            from spex_api.engine.adaptive import AdaptiveProxySPEX

            return AdaptiveProxySPEX(self.n, n_samples=p.n_queries, rounds=len(p.rounds),
                                     first_share=p.rounds[0] / p.n_queries, max_order=self.max_order,
                                     random_state=self.random_state, n_jobs=self.n_jobs)
        from spex_api.engine.proxyspex import ProxySPEX

        return ProxySPEX(self.n, n_samples=p.n_queries, max_order=self.max_order, random_state=self.random_state,
                         n_jobs=self.n_jobs)

    def _families(self) -> list[str]:
        """Interaction families compared on the same answers: the planned method, and for ProxySPEX plans
        also the hierarchical pairwise Lasso (better with few answers, where trees find little) and, up to
        KERNEL_MAX_ANSWERS answers, the Fourier kernel ridge (many small terms, the shape of noisy LLM scores), and
        with ordered features the neighbour-pair Lasso."""
        p = self._plan
        if p.method != "proxyspex":
            return [p.method]
        return ([p.method, "hierarchical"] + (["neighbours"] if self.ordered_features else [])
                + (["kernel"] if p.n_queries <= KERNEL_MAX_ANSWERS else []))

    def _fit_family(self, name: str, masks: np.ndarray, y: np.ndarray) -> Explanation:
        if name == "hierarchical":
            return HierarchicalLasso(self.n, max_order=min(self.max_order, 3),
                                     random_state=self.random_state).fit_answers(masks, y)
        if name == "neighbours":
            return NeighbourLasso(self.n, random_state=self.random_state).fit_answers(masks, y)
        if name == "kernel":
            return FourierRidge(self.n, max_order=min(self.max_order, 3),
                                random_state=self.random_state).fit_answers(masks, y)
        return self._algorithm().fit_answers(masks, y)

    def _out_of_fold(self, masks: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Out-of-fold predictions of every family and the linear fit, each refitted per fold on the
        answers already paid for (no new query)."""
        out = {name: np.empty_like(y) for name in [*self._families(), "linear"]}
        for train, test in KFold(CROSSVAL_FOLDS, shuffle=True, random_state=self.random_state).split(masks):
            for name in self._families():
                out[name][test] = self._fit_family(name, masks[train], y[train]).predict(masks[test])
            out["linear"][test] = LinearBaseline(self.n, random_state=self.random_state).fit(
                masks[train], y[train]).predict(masks[test])
        return out

    def _cross_validated(self, n_answers: int) -> bool:
        """Small ProxySPEX fits (`cross_validates`): judged by cross-validation over every answer, none withheld."""
        p = self._plan
        return p.method == "proxyspex" and p.n_holdout == 0 and cross_validates(self.n, n_answers)

    def holdout_masks(self, train_masks: np.ndarray) -> np.ndarray:
        """The held-out masks the plan asks after `train_masks` (deterministic under random_state): none for an
        exhaustive or cross-validated plan, nor when too few unseen masks are left (small n; CV is used then)."""
        p = self._plan
        if p.method == "exhaustive" or self._cross_validated(len(train_masks)):
            return np.zeros((0, self.n), dtype=bool)
        held = _fresh_masks(stream(self.random_state, 0x401D), p.n_holdout, train_masks)
        return held if len(held) >= min(p.n_holdout, MIN_FRESH) else held[:0]

    def explain(self) -> Explanation:
        """Spend the plan: training design (+ held-out slice) through one budget-capped Oracle."""
        with limit_threads(self.n_jobs):
            return self._spend()

    def _spend(self) -> Explanation:
        oracle = Oracle(self.value_fn, self.n, budget=self._plan.total)
        pilot = None
        if self.noise_pairs:
            pilot = self._measure_noise(oracle)
            estimate = NoiseEstimate.from_pairs(pilot[1], pilot[2], pilot[1])
            ratio = estimate.noise_sd / estimate.score_sd if estimate.score_sd > 0 else None
            if self._plan.method == "spex":  # noise only ever turns SPEX down (or warns): other plans stand
                self._plan = self._make_plan(ratio)
        explanation = self._explain(oracle)
        if pilot is None:
            return explanation
        # the score sd over every mask answered (pilot, design, held-out slice: all near-uniform random masks),
        # a steadier figure than the pilot's alone
        noise = NoiseEstimate.from_pairs(pilot[1], pilot[2], oracle.answered()[1])
        return dataclasses.replace(explanation, noise=noise, queries_used=int(oracle.queries_used))

    def _explain(self, oracle: Oracle) -> Explanation:
        p = self._plan
        # Each algorithm sends its design in one batch per round (adaptive plans: several), so a provider can run
        # each round concurrently.
        result = self._algorithm().fit(oracle)
        if p.method == "exhaustive":  # every mask is answered: the fit is exact, nothing is left to hold out
            r2 = None if result.diagnostics is None else result.diagnostics.train_r2
            return dataclasses.replace(
                result, queries_used=int(oracle.queries_used), plan=p, faithfulness=r2,
                faithfulness_detail={"criterion": "all_masks", "selected": "exhaustive", "n_holdout": 0,
                                     "n_train": int(oracle.queries_used), "train_r2": r2},
                feature_names=self.feature_names)
        train_masks, train_y = oracle.answered()
        holdout_masks = self.holdout_masks(train_masks)
        n_holdout = len(holdout_masks)
        if self._cross_validated(len(train_y)):
            truth, preds = train_y, self._out_of_fold(train_masks, train_y)
            criterion = "cv_r2"
        else:
            truth = oracle(holdout_masks) if n_holdout else np.zeros(0)
            preds = None
            criterion = "holdout_r2" if n_holdout else "cv_r2"

        linear = LinearBaseline(self.n, random_state=self.random_state).fit(train_masks, train_y)
        candidates = {p.method: result}
        for name in self._families()[1:]:
            candidates[name] = self._fit_family(name, train_masks, train_y)
        candidates["linear"] = linear
        if n_holdout:
            preds = {name: cand.predict(holdout_masks) for name, cand in candidates.items()}
        scores: dict[str, dict[str, float]] = {}
        for name, cand in candidates.items():
            entry = {"train_r2": r2_score(train_y, cand.predict(train_masks))}
            if preds is not None:
                entry[criterion] = r2_score(truth, preds[name])
            else:
                cv = cand.diagnostics.cv_r2 if name == "linear" and cand.diagnostics is not None else None
                entry["cv_r2"] = cv if cv is not None else support_cv_r2(
                    train_masks, train_y, cand.fourier.keys, self.n, self.random_state)
            scores[name] = entry
        # The interaction family with the better score on the answers already paid for stands against linear.
        family = max(self._families(), key=lambda name: np.nan_to_num(scores[name][criterion], nan=-np.inf))
        main_score = scores[family][criterion]
        linear_score = scores["linear"][criterion]
        if preds is not None:
            beats, gain, se = _beats_linear(truth, preds[family], preds["linear"])
            use_linear = not beats
            where = "held-out" if n_holdout else f"{CROSSVAL_FOLDS}-fold out-of-fold"
            selection: dict[str, Any] = {"rule": f"one standard error on {where} squared error", "gain": gain,
                                         "se": se}
        else:
            use_linear = bool(linear_score > main_score)
            selection = {"rule": "higher cv_r2"}
        selection["family"] = family
        selection["families"] = {name: scores[name][criterion] for name in self._families()}
        use_linear = use_linear or not np.isfinite(main_score)
        chosen = "linear" if use_linear else family
        if use_linear and n_holdout:
            # Every paid answer trains the returned fit; its faithfulness stays the held-out figure
            # measured before the slice joined training (conservative for the refit model).
            all_masks, all_y = oracle.answered()
            candidates["linear"] = LinearBaseline(self.n, random_state=self.random_state).fit(all_masks, all_y)
        why = (f"{family} chosen among {', '.join(self._families())} by {criterion.replace('_', ' ')} on the "
               f"answers already paid for (" + ", ".join(f"{k} {v:.3f}" for k, v in selection["families"].items())
               + ")")
        selection["why"] = why
        reasons: tuple[str, ...] = (why,)
        if use_linear:
            reasons = (
                f"interactions did not pay on this value function: {family} was not more faithful than "
                f"a first-order (linear) fit of the same answers ({criterion.replace('_', ' ')} "
                f"{main_score:.3f} vs {linear_score:.3f} linear); the linear fit"
                + (f", refit on all {oracle.queries_used} answers," if n_holdout else "") + " is returned",
            )
        others = {name: d for name, cand in candidates.items() if name != chosen
                  and (d := cand.diagnostics) is not None}
        own = candidates[chosen].diagnostics
        assert own is not None  # every estimator records its diagnostics
        diagnostics = dataclasses.replace(own, fallback="linear" if use_linear else None, reasons=reasons,
                                          others=others)
        detail = {
            "criterion": criterion,
            "selected": chosen,
            "selection": selection,
            "n_holdout": n_holdout,
            "n_train": int(len(train_y)),
            "train_r2": scores[chosen]["train_r2"],
            "holdout_r2": scores[chosen].get("holdout_r2"),
            "cv_r2": scores[chosen].get("cv_r2"),
            **{name: scores[name] for name in self._families()},
            "linear": scores["linear"],
        }
        return dataclasses.replace(
            candidates[chosen],
            queries_used=int(oracle.queries_used),
            plan=p,
            faithfulness=scores[chosen][criterion] if preds is not None else None,
            faithfulness_detail=detail,
            feature_names=self.feature_names,
            diagnostics=diagnostics,
        )
