"""What every report needs from an Explanation: feature texts, ranked interactions, per-feature attributions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from spex_api.engine.metadata import RunMetadata

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


_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: Any) -> str:
    """Text any UTF-8 output can hold: lone surrogates (undecodable bytes, hostile JSON) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", str(text))


def run_metadata(expl: Any) -> RunMetadata:
    """The run behind the explanation as a typed record (`Explanation.from_json` restores it from a saved file;
    an engine-only explanation has every field None)."""
    return RunMetadata.of(getattr(expl, "metadata", None))


def text_or_none(value: str | None) -> str | None:
    """A recorded string made printable (see `printable`); None stays None."""
    return None if value is None else printable(value)


def feature_texts(expl: Any) -> list[str]:
    """Readable text of each feature: the prompt's own words/sentences when recorded, else names."""
    texts = run_metadata(expl).feature_texts
    if texts and len(texts) == expl.n:
        return [printable(t) for t in texts]
    if expl.feature_names and len(expl.feature_names) == expl.n:
        return [printable(t) for t in expl.feature_names]
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
    plan = expl.plan
    run = run_metadata(expl)
    return {
        "provider": text_or_none(run.provider),
        "model": text_or_none(run.model),
        "scorer": text_or_none(run.scorer),
        "answer": text_or_none(run.original_answer),
        "original_score": run.original_score,
        "method": printable(expl.method),
        "queries_used": expl.queries_used,
        "budget": run.budget,
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


def _plan_field(plan: Any, name: str) -> Any:
    return plan.get(name) if isinstance(plan, dict) else getattr(plan, name, None)


def plan_in_words(expl: Any) -> str | None:
    """What the run did and why, in a user's words (the planner's own reason is the technical detail)."""
    plan = expl.plan
    method = _plan_field(plan, "method") if plan is not None else None
    n, budget = _plan_field(plan, "n") or expl.n, _plan_field(plan, "budget")
    train, held = _plan_field(plan, "n_queries"), _plan_field(plan, "n_holdout") or 0
    if method is None or train is None:
        return None
    parts = "part" if n == 1 else "parts"
    check = (f" {held} further random versions were kept aside to check the result." if held else
             " The fit was checked by cross-validation, so no query was set aside for checking.")
    if method == "exhaustive":
        return (f"The prompt has {n} {parts}, few enough to ask the model every one of the {train} ways of hiding "
                "some of them, so the explanation is exact: nothing is estimated.")
    if method == "spex":
        return (f"The model was asked {train} versions of the prompt with some of its {n} {parts} hidden, in a "
                "coded pattern (SPEX) that pins down the few combinations that matter exactly, as long as only "
                f"a few do.{check}")
    why = ""
    if _plan_field(plan, "requested") == "auto" and n is not None:
        from spex_api.engine.design import spex_queries
        from spex_api.engine.planner import auto_min_b

        need = spex_queries(n, auto_min_b(n), _plan_field(plan, "max_order") or 5)
        if budget is not None and need > train:
            why = (f" The coded SPEX pattern would have needed about {need} versions for {n} {parts}; the budget "
                   f"allowed {budget}, so the learned model was the better use of it.")
    return (f"The model was asked {train} randomly masked versions of the prompt ({n} {parts}); a tree model "
            f"learned how its answer depends on which parts are kept (ProxySPEX), and the interactions were read "
            f"off that model.{why}{check}")


def _quality(r2: float) -> str:
    if r2 >= 0.9:
        return "excellent: the explanation reproduces the model's behaviour almost exactly"
    if r2 >= 0.7:
        return "good: the ranking can be trusted, small effects less so"
    if r2 >= 0.4:
        return "partial: the strongest effects are real, the rest is uncertain"
    return "weak: treat the ranking with caution (more queries, coarser features or a steadier scorer may help)"


def faithfulness_in_words(expl: Any) -> list[str]:
    """Sentences a user can read: how well the explanation predicts the model, against what is reachable."""
    r2 = expl.faithfulness
    kind = expl.faithfulness_detail.get("criterion") if expl.faithfulness_detail else None
    on = {"cv_r2": "answers it was not fitted on (cross-validation)", "all_masks": "every possible masking"}.get(
        str(kind), "held-out masked prompts it was not fitted on")
    if r2 is None:
        lines = ["Faithfulness was not measured: no query was set aside to check the explanation."]
    else:
        share = max(0.0, min(1.0, float(r2)))
        lines = [f"On {on}, the explanation predicts the model's score with R² = {r2:.2f}: it accounts for "
                 f"{share:.0%} of how the score varies when parts of the prompt are hidden. That is "
                 f"{_quality(float(r2))}."]
    noise = getattr(expl, "noise", None)
    if noise is not None:
        text = (f"The model itself is not perfectly repeatable: asking {noise.n_pairs} masked prompts twice gave "
                f"answers that differ by sd {noise.noise_sd:.3g}, against a score spread of sd {noise.score_sd:.3g}. "
                f"So no explanation could exceed R² ≈ {noise.r2_ceiling:.2f} (the noise ceiling)")
        reached = noise.share(r2) if r2 is not None else None
        lines.append(text + (f"; this one reaches {reached:.0%} of it." if reached is not None else "."))
    return lines


def removal_rows(expl: Any) -> list[dict[str, Any]]:
    """The verified-removal steps as rows: features masked so far (texts), predicted and measured change."""
    removal = getattr(expl, "removal", None)
    if removal is None:
        return []
    texts = feature_texts(expl)
    return [{"removed": [int(i) for i in step["removed"]], "last": texts[int(step["removed"][-1])]
             if step["removed"] else "", "predicted": float(step["predicted"]), "measured": float(step["measured"])}
            for step in removal.steps]


def removal_in_words(expl: Any) -> str | None:
    """One sentence on whether masking the top features changed the model's answer as the explanation said."""
    rows = removal_rows(expl)
    if not rows:
        return None
    gaps = np.array([abs(r["predicted"] - r["measured"]) for r in rows])
    biggest = max(max(abs(r["measured"]) for r in rows), 1e-12)
    last = rows[-1]
    verdict = ("closely" if gaps.mean() <= 0.2 * biggest else "roughly" if gaps.mean() <= 0.5 * biggest
               else "poorly")
    return (f"Checked on the model: hiding the top {len(last['removed'])} features (ranked by "
            f"{expl.removal.ranking_index}) one after another changed its score by {last['measured']:+.3f}, where the "
            f"explanation predicted {last['predicted']:+.3f}; over the {len(rows)} steps prediction and measurement "
            f"agree {verdict} (mean gap {gaps.mean():.3f}, largest measured change {biggest:.3f}).")


_SCORERS = {
    "label_margin": "how much more likely the model makes {a} than {b} as its answer (log-probability margin)",
    "answer_logprob": "how likely the model finds the first token of its original answer (log-probability)",
    "answer_frequency": "how often sampled answers say {a} rather than {b} (log-odds of the counts)",
    "answer_similarity": "how much each answer shares the original answer's words (token F1, 0 to 1)",
    "semantic_similarity": "how close each answer's meaning is to the original answer's (cosine of sentence "
                           "embeddings, 1 = same meaning)",
}


def scorer_in_words(expl: Any) -> str:
    """What the explained score measures, in a user's words."""
    run = run_metadata(expl)
    name = printable(run.scorer or "")
    labels = run.labels or ("the first label", "the second")
    words = _SCORERS.get(name.replace("-", "_"), "the scorer's value of each answer")
    return words.format(a=f"“{labels[0]}”", b=f"“{labels[1]}”" if len(labels) > 1 else "the other labels")
