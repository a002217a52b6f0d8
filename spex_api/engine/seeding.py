"""Seed handling for every estimator (a leaf module): one int seed from what the caller passed, and named
independent streams drawn from it.

`random_state` may be an int (reproducible), a numpy Generator (one draw from it) or None (fresh entropy);
`check_random_state` turns it into an int once, at construction, so a design and the fit that asks it always
agree, and `stream(seed, tag)` gives each random draw of a run (held-out masks, the noise pilot's order, ...)
its own generator, so adding a draw never shifts another.
"""

from __future__ import annotations

import numpy as np

RandomState = int | np.integer | np.random.Generator | None


def check_random_state(random_state: RandomState) -> int:
    """One int seed: an int as given, one draw from a Generator, fresh entropy for None."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if random_state is None:
        return int(np.random.SeedSequence().entropy % 2**63)  # type: ignore[operator]  # entropy is an int here
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"random_state must be an int, a numpy Generator or None, got {random_state!r}")
    return int(random_state)


def stream(seed: int, *tag: int) -> np.random.Generator:
    """The generator of one named draw: `seed` itself without a tag, else an independent stream per tag."""
    return np.random.default_rng([seed, *tag] if tag else seed)
