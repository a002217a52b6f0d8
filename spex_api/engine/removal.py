"""Verified removal (the SPEX paper's Rem(r)): re-ask the model with the explanation's top features masked.

An explanation predicts what happens when features go; this spends `steps` queries to check it. Features
are ranked by the explanation's own first-order index (largest value first: the features that raise the
score most); step j masks the top j of them and keeps the rest. The predicted change (surrogate) and the
measured change (the model's answer) are both relative to the full prompt, so a faithful explanation
shows them close together.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spex_api.engine.explanation import Explanation, RemovalCheck, RemovalStep
from spex_api.engine.oracle import Oracle, ValueFunction

RANKING_INDICES = ("banzhaf", "shapley")


def removal_masks(explanation: Explanation, steps: int, index: str = "banzhaf") -> tuple[list[int], np.ndarray]:
    """The ranking (top `steps` features) and the (steps + 1, n) masks: the full prompt, then top 1..steps removed."""
    if index not in RANKING_INDICES:
        raise ValueError(f"ranking index must be one of {RANKING_INDICES}, got {index!r}")
    n = explanation.n
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n:
        raise ValueError(f"steps must be an integer in [1, n={n}], got {steps!r}")
    values = np.zeros(n)
    for key, value in explanation.values(index).items():
        if len(key) == 1:
            values[key[0]] = value
    ranking = [int(i) for i in np.lexsort((np.arange(n), -values))[:steps]]  # ties: lower feature index first
    masks = np.ones((steps + 1, n), dtype=bool)
    for j in range(1, steps + 1):
        masks[j, ranking[:j]] = False
    return ranking, masks


def check_removal(explanation: Explanation, value_fn: ValueFunction | Oracle, steps: int,
                  index: str = "banzhaf", full_score: float | None = None) -> Explanation:
    """The explanation with a RemovalCheck attached: `steps` masks sent, plus the full prompt unless its
    score is given (`full_score`, e.g. the original answer's) or the Oracle passed already asked it."""
    ranking, masks = removal_masks(explanation, steps, index)
    oracle = value_fn if isinstance(value_fn, Oracle) else Oracle(value_fn, explanation.n)
    before = oracle.queries_used
    if full_score is None:
        measured = oracle(masks)
    else:
        measured = np.concatenate([[float(full_score)], oracle(masks[1:])])
    predicted = explanation.predict(masks)
    check = RemovalCheck(index, [
        RemovalStep(removed=ranking[:j], predicted=float(predicted[j] - predicted[0]),
                    measured=float(measured[j] - measured[0]))
        for j in range(1, steps + 1)
    ])
    return dataclasses.replace(explanation, removal=check,
                               queries_used=explanation.queries_used + oracle.queries_used - before)
