"""What every report needs from an Explanation: feature texts, ranked interactions, per-feature attributions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Möbius coefficients read as "the effect of keeping these features together", which is what a report
# reader wants; the constant term (everything masked) is shown separately as the baseline.
DEFAULT_INDEX = "mobius"


@dataclass(frozen=True)
class Row:
    """One ranked interaction ready for display."""

    rank: int
    features: tuple[int, ...]
    texts: tuple[str, ...]
    value: float

    @property
    def order(self) -> int:
        return len(self.features)

    def label(self, width: int = 40, sep: str = " × ") -> str:
        """The interaction's feature texts joined, each shortened to `width` characters."""
        return sep.join(shorten(t, width) for t in self.texts)


def shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 1)].rstrip() + "…"


def feature_texts(expl: Any) -> list[str]:
    """Readable text of each feature: the prompt's own words/sentences when recorded, else names."""
    texts = expl.metadata.get("feature_texts") if expl.metadata else None
    if texts and len(texts) == expl.n:
        return [str(t) for t in texts]
    if expl.feature_names and len(expl.feature_names) == expl.n:
        return [str(t) for t in expl.feature_names]
    return [f"x{i}" for i in range(expl.n)]


def top_rows(expl: Any, k: int = 10, index: str = DEFAULT_INDEX) -> list[Row]:
    """The k largest non-constant interactions under `index`, ranked by magnitude."""
    texts = feature_texts(expl)
    items = [it for it in expl.interactions(index=index) if len(it.features) > 0][:k]
    return [
        Row(r + 1, tuple(it.features), tuple(texts[i] for i in it.features), float(it.value))
        for r, it in enumerate(items)
    ]


def baseline(expl: Any) -> float:
    """Predicted score with every feature masked (the Möbius constant)."""
    return float(expl.predict(np.zeros((1, expl.n), dtype=bool))[0])


def full_score(expl: Any) -> float:
    """Predicted score with every feature kept."""
    return float(expl.predict(np.ones((1, expl.n), dtype=bool))[0])


def attributions(expl: Any) -> np.ndarray:
    """Shapley value of every feature (length n): its share of f(all kept) − f(all masked)."""
    phi = np.zeros(expl.n)
    for it in expl.interactions(index="shapley", order=1):
        if len(it.features) == 1:
            phi[it.features[0]] = it.value
    return phi


def summary(expl: Any) -> dict[str, Any]:
    """Plan, spend and fit figures shown at the top of every report."""
    meta = expl.metadata or {}
    plan = expl.plan
    return {
        "provider": meta.get("provider"),
        "model": meta.get("model"),
        "scorer": meta.get("scorer"),
        "answer": meta.get("original_answer"),
        "original_score": meta.get("original_score"),
        "method": expl.method,
        "queries_used": expl.queries_used,
        "budget": meta.get("budget"),
        "cost": expl.cost,
        "faithfulness": expl.faithfulness,
        "faithfulness_kind": expl.faithfulness_kind,
        "n": expl.n,
        "plan_reason": getattr(plan, "reason", None) if plan is not None else None,
        "plan_total": getattr(plan, "total", None) if plan is not None else None,
        "baseline": baseline(expl),
        "full": full_score(expl),
    }


def fmt_cost(cost: float | None) -> str:
    if cost is None:
        return "n/a"
    return "$0 (local model)" if cost == 0 else f"${cost:.4f}"


def fmt_r2(r2: float | None) -> str:
    return "not measured (no held-out masks)" if r2 is None else f"{r2:.3f}"
