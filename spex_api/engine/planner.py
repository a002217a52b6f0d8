"""Budget planner: decide method, SPEX b and the held-out slice before a single query is spent.

The plan splits the budget into a training part (the SPEX design, or ProxySPEX's random masks)
and a held-out slice of uniform random masks that measures faithfulness. `Plan.total` is the exact
maximum number of distinct queries the run can send; it never exceeds the budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spex_api.engine.design import EXHAUSTIVE_MAX_N, adaptive_rounds, spex_largest_b, spex_queries
from spex_api.engine.plan import Plan

METHODS = ("auto", "spex", "proxyspex", "adaptive", "exhaustive")

# Smallest SPEX design we run: 2^b bins per group. Below b = 2 there is nothing to peel.
SPEX_MIN_B = 2
# Fewest random masks ProxySPEX is run on: its 5-fold CV grid needs a handful of rows per fold.
PROXYSPEX_MIN_SAMPLES = 32
# Below this n there are fewer than 8 distinct masks: too few to cross-validate a proxy (SPEX is exact).
PROXYSPEX_MIN_N = 3
# Default floor on the held-out slice when holdout > 0: fewer points give a meaningless R².
MIN_HOLDOUT = 20
# ProxySPEX budgets up to this many queries are all spent on training, and faithfulness is measured by
# CROSSVAL_FOLDS-fold cross-validation of the whole fit (a few CPU seconds at most): a held-out slice of
# >= 20 masks would take a third of a 60-query budget and still judge the fit on a noisy handful.
CROSSVAL_MAX_ANSWERS = 600
# ... and up to CROSSVAL_MAX_WORK answers x features (1,500 answers of a 64-feature prompt): on 10 real prompts
# at 1,500 answers, choosing the family by cross-validation raised mean held-out R² from 0.456 (a 75-mask slice)
# to 0.479 (the 9 prompts of n <= 46 cross-validated, 3-9 s CPU instead of 1-2 s; the n=211 one keeps its slice);
# at n=256 the per-fold ProxySPEX refits would add ~20 s, so larger prompts keep the slice.
CROSSVAL_MAX_WORK = 96_000
CROSSVAL_FOLDS = 5
# Repeat-noise pilot: NOISE_SHARE of the budget (at least NOISE_MIN_PAIRS masks), each asked twice.
NOISE_SHARE = 0.03
NOISE_MIN_PAIRS = 8
# auto refuses SPEX when the measured repeat-noise sd exceeds this share of the score sd (R² ceiling below
# ~0.91): SPEX's singleton tests read the sign/ratio of single bins, which noise flips, while ProxySPEX's
# trees average the noise over all random masks.
SPEX_MAX_NOISE = 0.3
# Adaptive ProxySPEX (method="adaptive", engine/adaptive.py): round 1 uniform, round 2 keeps the features round 1
# found active more often; each round needs a CV-able design of its own. auto keeps one uniform round:
# benchmarks/adaptive.py (planted hierarchical functions, paired adaptive - uniform R² at equal budget, mean ± se
# over seeds, load ~10 on 2 cores) measured a gain only on small noisy functions, and none to a loss elsewhere:
# n=32 B=300 noise 0.3 +0.028 ± 0.010 (5/5 seeds), clean -0.003 ± 0.001; n=64 B=500 noise 0.3 -0.017 ± 0.020,
# clean +0.008 ± 0.006; n=128 B=800 noise 0.3 +0.002 ± 0.012; n=256 B=1000 noise 0.3 -0.006 ± 0.015.
# On 10 real Gemma-3-270M prompts (benchmarks/faithfulness.py, same budget, R² on 200 fresh uniform masks) two
# rounds were even at 500 queries (mean -0.003, -0.060 to +0.097) and behind at 1,500 (mean -0.040, 8 of 10
# behind, -0.117 to +0.005); round 2 keeps active words with probability 0.7, away from the uniform masks the
# fit is judged on (a likely cause, not measured).
ADAPTIVE_MIN_SAMPLES = 2 * PROXYSPEX_MIN_SAMPLES


def cross_validates(n: int, answers: int) -> bool:
    """Whether a ProxySPEX fit of this many answers is judged by cross-validation of the whole fit (every answer
    trains it) rather than by a withheld slice: small budgets, or small prompts up to CROSSVAL_MAX_WORK."""
    return answers <= CROSSVAL_MAX_ANSWERS or answers * n <= CROSSVAL_MAX_WORK


def default_noise_pairs(budget: int) -> int:
    """Masks asked twice for the noise estimate by default: a few % of the budget (3%, at least 8)."""
    return max(NOISE_MIN_PAIRS, math.ceil(NOISE_SHARE * budget))


def auto_min_b(n: int) -> int:
    """Smallest SPEX b that `method="auto"` accepts for n features (see `plan` for the evidence).

    For n <= 6, b = n already gives 3 * 2^n bins, at least one per possible interaction.
    """
    return min(n, 6)


def minimum_budget(n: int, method: str = "auto", max_order: int = 5, holdout: float = 0.05,
                   min_holdout: int = MIN_HOLDOUT) -> int:
    """Smallest budget `plan` accepts for this method (training minimum plus the held-out floor)."""
    _check_method(method)
    if method == "exhaustive":
        return 2**n
    spex_only = method == "spex"  # auto at n < PROXYSPEX_MIN_N is exhaustive (see _with_exhaustive)
    train = (spex_queries(n, SPEX_MIN_B, max_order) if spex_only else
             ADAPTIVE_MIN_SAMPLES if method == "adaptive" else PROXYSPEX_MIN_SAMPLES)
    if holdout <= 0:
        return _with_exhaustive(train, n, method)
    # n_holdout = max(min_holdout, ceil(holdout * budget)); find the least budget leaving `train`.
    return _with_exhaustive(max(train + min_holdout, math.ceil(train / (1.0 - holdout))), n, method)


def _with_exhaustive(minimum: int, n: int, method: str) -> int:
    """auto can always fall back to asking every mask when that is cheaper than the minimum design."""
    if method == "auto" and n <= EXHAUSTIVE_MAX_N:
        return min(minimum, 2**n)
    return minimum


def _is_int(value: Any) -> bool:
    """A true integer (Python or numpy), not a bool, float or string."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def plan(
    n: int,
    budget: int,
    method: str = "auto",
    max_order: int = 5,
    holdout: float = 0.05,
    min_holdout: int = MIN_HOLDOUT,
    noise: float | None = None,
) -> Plan:
    """Split `budget` into a held-out slice and a training design, and pick the method.

    `noise` is the measured repeat-noise sd as a share of the score sd (None = not measured); above
    SPEX_MAX_NOISE auto refuses SPEX and says so in the reason.

    The held-out slice is max(min_holdout, ceil(holdout * budget)) uniform random masks (none when
    holdout = 0). SPEX gets the largest b whose exact query count 3·(P+1)·2^b fits the rest;
    ProxySPEX gets all of the rest as random masks — all of the budget when `cross_validates(n, budget)`,
    where cross-validation of the whole fit replaces the slice.

    `method="auto"` asks every mask (method "exhaustive", exact) when 2^n fits the budget; else it runs SPEX when that b >= auto_min_b(n) = min(n, 6), else ProxySPEX. Evidence
    (`python benchmarks/engine.py --crossover`; held-out R² of SPEX | ProxySPEX at the same number
    of queries, CPU seconds in brackets; planted hierarchical functions, noise 0.1):
      ~90 terms:  n=64   b=3 .77|.99  b=4 .98|.997  b=5 .999|.998  b=6 1.000|.999 (1.1 s|25 s)
                  n=256  b=3 .84|.996 b=4 .97|.998  b=5 .998|.998  b=6 .999|.999  (0.8 s|59 s)
      ~300 terms: n=64   b=4 .71|.97  b=5 .95|.99   b=6 .997|.998  (1.4 s|25 s)
                  n=256  b=4 .59|.94  b=5 .81|.98   b=6 .994|.997  (1.9 s|59 s)
    Below b = 6 SPEX's peeling has too few bins (3·2^b) for these supports and ProxySPEX's tree
    proxy is far more faithful per query (LLM functions are rarely sparser). From b = 6 SPEX is
    within 0.003 of ProxySPEX at 1/20-1/30 of its CPU, and unlike the proxy it does not rely on
    the function being hierarchical. The b = 6 design grows with n through the BCH parity
    length P (6,912 queries at n=64, 8,832 at n=256, 10,752 at n=1000), so the budget at which
    auto switches grows with n.
    """
    _check_method(method)
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not _is_int(budget):
        raise ValueError(f"budget must be an integer number of queries, got {budget!r}")
    if not _is_int(max_order) or max_order < 1:
        raise ValueError(f"max_order must be an integer >= 1, got {max_order!r}")
    n, budget, max_order = int(n), int(budget), int(max_order)
    if not 0.0 <= holdout < 0.5:
        raise ValueError(f"holdout must be a fraction in [0, 0.5), got {holdout!r}")
    if min_holdout < 1:
        raise ValueError(f"min_holdout must be >= 1, got {min_holdout!r}")
    if method in ("proxyspex", "adaptive") and n < PROXYSPEX_MIN_N:
        raise ValueError(f"ProxySPEX needs n >= {PROXYSPEX_MIN_N} features (2^n distinct masks to cross-validate "
                         f"its proxy); use method='spex' for n={n}")
    if method == "exhaustive" and n > EXHAUSTIVE_MAX_N:
        raise ValueError(f"method='exhaustive' enumerates 2^n masks and needs n <= {EXHAUSTIVE_MAX_N}, got n={n}")
    minimum = minimum_budget(n, method, max_order, holdout, min_holdout)
    if budget < minimum:
        every_mask = method == "exhaustive" or (method == "auto" and minimum == 2**n)
        detail = ("all 2^n masks" if every_mask else "SPEX with b=2" if method == "spex"
                  else f"two adaptive rounds of {PROXYSPEX_MIN_SAMPLES} samples" if method == "adaptive"
                  else f"ProxySPEX ({PROXYSPEX_MIN_SAMPLES} samples)")
        held = holdout > 0 and not every_mask
        raise ValueError(
            f"budget {budget} is below the minimum of {minimum} queries for method={method!r} "
            f"at n={n}: {detail}"
            + (f" plus {min_holdout} held-out masks (or pass holdout=0)" if held else "")
        )
    if method == "exhaustive" or (method == "auto" and n <= EXHAUSTIVE_MAX_N and 2**n <= budget):
        reason = (f"method={method!r} requested" if method == "exhaustive" else
                  f"the budget covers all 2^{n} = {2 ** n} masks: the exact transform needs no sampling "
                  f"and no held-out slice")
        return Plan("exhaustive", n, budget, max_order, 2**n, 0, 2**n, reason, method)
    n_holdout = max(min_holdout, math.ceil(holdout * budget)) if holdout > 0 else 0
    train = budget - n_holdout
    b = spex_largest_b(n, train, max_order)
    b = b if b is not None and b >= SPEX_MIN_B else None
    n_spex = spex_queries(n, b, max_order) if b is not None else 0

    noisy = noise is not None and noise > SPEX_MAX_NOISE
    refusal = (f"; SPEX refused for noise: the repeat-noise sd is {noise:.0%} of the score sd (above "
               f"{SPEX_MAX_NOISE:.0%}), which flips SPEX's single-bin tests, while ProxySPEX's trees average "
               f"the noise over all random masks") if noisy else ""
    if method == "auto":
        need = auto_min_b(n)
        if b is not None and b >= need and noisy:
            chosen = "proxyspex"
            reason = f"budget affords SPEX with b={b}" + refusal
        elif b is not None and b >= need:
            chosen = "spex"
            reason = (
                f"budget affords SPEX with b={b} ({2 ** b} bins per group, >= {2 ** need} needed at "
                f"n={n}); the coded design recovers sparse interactions without relying on hierarchy"
            )
        else:
            chosen = "proxyspex"
            have = f"only b={b}" if b is not None else "not even b=2"
            reason = (
                f"budget affords {have} for SPEX at n={n} (needs b >= {need}, i.e. "
                f"{spex_queries(n, need, max_order)} training queries); ProxySPEX's tree proxy is "
                f"more faithful per query at this budget"
            )
    else:
        chosen = method
        reason = f"method={method!r} requested"
        if noisy and method == "spex":
            reason += (f" (warning: the repeat-noise sd is {noise:.0%} of the score sd; SPEX is fragile under "
                       "noise and auto would refuse it)")
    if chosen == "spex":
        return Plan("spex", n, budget, max_order, n_spex, n_holdout, n_spex + n_holdout,
                    reason, method, b, max_order)
    if n_holdout and cross_validates(n, budget):
        n_holdout, train = 0, budget
        reason += (f"; at {budget} queries every answer trains the fit and faithfulness comes from "
                   f"{CROSSVAL_FOLDS}-fold cross-validation of the whole fit, not a withheld slice")
    rounds: tuple[int, ...] = ()
    if method == "adaptive":
        rounds = adaptive_rounds(train)
        reason += (f"; the training masks are asked in {len(rounds)} rounds ({' + '.join(map(str, rounds))}): round 1 "
                   "uniform, round 2 keeping the features round 1 found active more often")
    elif method == "auto" and train >= ADAPTIVE_MIN_SAMPLES:
        reason += ("; one uniform round, not adaptive ones (method='adaptive'): benchmarks/adaptive.py measured "
                   "two rounds ahead at equal budget only on small noisy functions, even or behind elsewhere, and "
                   "benchmarks/faithfulness.py even (500 queries) or behind (1,500) on real prompts")
    return Plan("proxyspex", n, budget, max_order, train, n_holdout, budget, reason, method, rounds=rounds)
