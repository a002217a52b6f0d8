"""Design-size arithmetic shared by the planner and the algorithms: how many queries a design asks.

A leaf module (it imports only the BCH parity-length formula), so the planner can size designs
without importing the algorithms that run them.
"""

from __future__ import annotations

from spex_api.engine.bch import bch_parity_length

# Columns of M drawn per SPEX group whatever b is, so that designs for different b are nested.
SPEX_B_MAX = 30
# Largest n the exhaustive method enumerates: 2^20 queries is already far past any sensible API
# budget, and larger cubes would not fit in memory.
EXHAUSTIVE_MAX_N = 20


def spex_queries(n: int, b: int, max_order: int = 5, n_groups: int = 3) -> int:
    """Exact size of a SPEX design: C * (P + 1) * 2^b (before de-duplication)."""
    return int(n_groups) * (bch_parity_length(n, max_order) + 1) * (1 << int(b))


def spex_largest_b(n: int, budget: int, max_order: int = 5, n_groups: int = 3) -> int | None:
    """Largest b >= 1 whose SPEX design fits the budget (None if even b = 1 does not), by formula."""
    per_bin = int(n_groups) * (bch_parity_length(n, max_order) + 1)
    if budget < 2 * per_bin:
        return None
    return min(int(budget // per_bin).bit_length() - 1, SPEX_B_MAX)


def adaptive_rounds(n_samples: int, rounds: int = 2, first_share: float = 0.5) -> tuple[int, ...]:
    """Training masks per round of an adaptive design: round 1 gets first_share, later rounds share the rest evenly."""
    first = int(round(first_share * n_samples))
    rest = n_samples - first
    return (first, *(rest // (rounds - 1) + (i < rest % (rounds - 1)) for i in range(rounds - 1)))
