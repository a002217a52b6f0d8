"""The value-function protocol: masks in, finite scores out.

A value function takes a (N, n) boolean array (True = feature kept) and returns N finite floats;
it may be a plain or an async callable. The engine only ever talks to it through `Oracle`, which
validates answers, never asks the same mask twice, and refuses to go over the query budget.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Awaitable, Callable, Union, cast

import numpy as np

from spex_api.engine.aio import run_sync
from spex_api.engine.masks import as_masks, pack_rows

ValueFunction = Union[Callable[[np.ndarray], Any], Callable[[np.ndarray], Awaitable[Any]]]


class ValueFunctionError(ValueError):
    """The value function answered something other than N finite floats."""


class BudgetExceededError(RuntimeError):
    """A step would need more queries than the budget has left (raised before any is spent)."""


def _run_maybe_async(fn: ValueFunction, masks: np.ndarray) -> Any:
    out = fn(masks)
    return run_sync(out) if inspect.isawaitable(out) else out


def validate_scores(scores: Any, n_rows: int) -> np.ndarray:
    """Return scores as a float64 vector of length n_rows, or raise naming the bad rows."""
    try:
        arr = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueFunctionError(f"value function must return numbers, got {type(scores).__name__}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n_rows,):
        raise ValueFunctionError(f"value function returned shape {arr.shape} for {n_rows} masks; expected ({n_rows},)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        shown = ", ".join(f"row {i}: {arr[i]}" for i in bad[:10])
        more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueFunctionError(f"value function returned {len(bad)} non-finite score(s): {shown}{more}")
    return arr


def call_value_function(fn: ValueFunction, masks: np.ndarray) -> np.ndarray:
    """Evaluate fn on a batch of masks (sync or async) and validate its answer."""
    return validate_scores(_run_maybe_async(fn, masks), masks.shape[0])


def accepts_repeat(fn: ValueFunction) -> bool:
    """Whether fn takes a `repeat` keyword (a genuine re-ask that a caching value function must not serve
    from its cache); a function without it is simply called again."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "repeat" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class Oracle:
    """Budgeted, de-duplicating access to a value function.

    Every distinct mask is queried at most once; `queries_used` counts distinct masks sent.
    A batch that would push the count past `budget` raises BudgetExceededError before
    anything is sent.
    """

    def __init__(self, fn: ValueFunction, n: int, budget: int | None = None) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.fn = fn
        self.n = n
        self.budget = budget
        self.queries_used = 0
        self._keys = np.zeros((0, (n + 63) // 64), dtype=np.uint64)
        self._values = np.zeros(0)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used

    def answered(self) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct mask asked so far, in the order first asked, and its score."""
        bits = np.unpackbits(self._keys.view(np.uint8), axis=1, count=self.n)
        return bits.astype(bool), self._values.copy()

    def count_new(self, masks: np.ndarray) -> int:
        """How many distinct masks in this batch have not been asked yet."""
        return len(self._index(pack_rows(as_masks(masks, self.n)))[2])

    def _index(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Give every distinct row of (memo ∪ batch) an id.

        Returns (ids of the memo rows, ids of the batch rows, ids never seen before,
        the batch row where each of those first appears), new ones in batch order.
        """
        m = len(self._keys)
        _, first, inverse = np.unique(
            np.vstack([self._keys, keys]), axis=0, return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
        known = np.zeros(len(first), dtype=bool)
        known[inverse[:m]] = True
        new_ids = np.flatnonzero(~known)
        new_rows = first[new_ids] - m
        order = np.argsort(new_rows)  # ask in the caller's order, not the sort order of the keys
        return inverse[:m], inverse[m:], new_ids[order], new_rows[order]

    def repeat(self, masks: np.ndarray, repeat: int = 1) -> np.ndarray:
        """Ask masks again (the `repeat`-th re-ask, to measure repeat noise): every row is sent and counted,
        none is served from the memo, and the memo keeps the first answers."""
        masks = as_masks(masks, self.n)
        if self.budget is not None and self.queries_used + len(masks) > self.budget:
            raise BudgetExceededError(
                f"{len(masks)} repeated queries needed but only {self.budget - self.queries_used} "
                f"of the budget of {self.budget} remain"
            )
        if len(masks) == 0:
            return np.zeros(0)
        fn: ValueFunction = self.fn
        if accepts_repeat(fn):  # it takes the keyword: tell it which asking this is
            fn = functools.partial(cast("Callable[..., Any]", fn), repeat=repeat)
        scores = call_value_function(fn, masks)
        self.queries_used += len(masks)
        return scores

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = as_masks(masks, self.n)
        if masks.shape[0] == 0:
            return np.zeros(0)
        keys = pack_rows(masks)
        memo_ids, row_ids, new_ids, new_rows = self._index(keys)
        if self.budget is not None and self.queries_used + len(new_rows) > self.budget:
            raise BudgetExceededError(
                f"{len(new_rows)} new queries needed but only {self.budget - self.queries_used} "
                f"of the budget of {self.budget} remain"
            )
        table = np.full(int(max(row_ids.max(), memo_ids.max(initial=0))) + 1, np.nan)
        table[memo_ids] = self._values
        if len(new_rows):
            fresh = call_value_function(self.fn, masks[new_rows])
            table[new_ids] = fresh
            self._keys = np.vstack([self._keys, keys[new_rows]])
            self._values = np.concatenate([self._values, fresh])
            self.queries_used += len(new_rows)
        return table[row_ids]
