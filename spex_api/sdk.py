"""One call from a prompt to ranked interactions: `explain` and, for many prompts at once, `explain_many`.

This is the composition layer: it builds the masked prompt, the provider adapter, the scorer and the
runner (rate limits, retries, disk cache, cost caps) from `providers`, plans the queries with the engine,
shows the plan and its price, and only then spends. Providers are imported inside functions so that
`import spex_api` stays light.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

DEFAULT_CACHE_DIR = "~/.cache/spex-api"
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
LOCAL = "local"
_NOT_STARTED = "http://127.0.0.1:0/v1"
SCORERS = ("auto", "label-margin", "answer-logprob", "frequency", "similarity")


class SpendRefused(RuntimeError):
    """The user declined the confirmation, so nothing was spent."""


@dataclass
class Preview:
    """Everything decided before the first query: what is asked, of whom, how often, at what price."""

    prompt: Any  # providers.prompt.MaskedPrompt
    provider: str
    model: str
    base_url: str | None
    scorer: Any
    plan: Any  # spex_api.planner.Plan
    budget: int
    max_cost: float | None
    estimated_cost: float | None
    method: str
    max_order: int
    random_state: int
    cache_dir: str | None
    labels: tuple[str, ...] | None = None
    _api_key: str | None = field(default=None, repr=False)

    @property
    def local(self) -> bool:
        return self.provider == LOCAL

    @property
    def n_queries(self) -> int:
        """Queries the run will send: the plan's total plus one for the original answer."""
        return int(self.plan.total) + 1

    def renderable(self) -> Any:
        """A rich table of the plan and its price (shown before any spend)."""
        from rich.table import Table

        t = Table(title="spex-api plan (nothing spent yet)", title_justify="left", show_header=False)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("model", f"{self.provider} / {self.model}" + (f" at {self.base_url}" if self.base_url else ""))
        t.add_row("features", f"{self.prompt.n_features} ({', '.join(_preview_names(self.prompt))})")
        t.add_row("scorer", getattr(self.scorer, "name", str(self.scorer)))
        t.add_row("method", f"{self.plan.method}: {self.plan.reason}")
        t.add_row("queries", f"{self.n_queries} of a budget of {self.budget} (incl. held-out {self.plan.n_holdout} and the original answer)")
        if self.estimated_cost is None:
            t.add_row("est. cost", "unknown (no price for this model)")
        else:
            cap = f" (cap ${self.max_cost:.2f})" if self.max_cost is not None else ""
            t.add_row("est. cost", ("$0 (local model)" if self.local else f"≤ ${self.estimated_cost:.4f} before cache hits") + cap)
        t.add_row("cache", os.path.expanduser(self.cache_dir) if self.cache_dir else "off")
        return t


def _preview_names(prompt: Any, k: int = 6) -> list[str]:
    names = prompt.feature_names
    return names[:k] + (["…"] if len(names) > k else [])


# ---------------------------------------------------------------------------------------------- planning
def _resolve_provider(
    provider: str | None, model: str | None, base_url: str | None, api_key: str | None
) -> tuple[str, str, str | None]:
    """Pick provider and model: explicit choice, else OpenAI when a key is set, else the local server."""
    if provider is None:
        if base_url is not None:
            provider = "openai-compatible"
        elif api_key or os.environ.get("OPENAI_API_KEY"):
            provider = "openai"
        else:
            provider = LOCAL
    provider = provider.lower()
    if provider == LOCAL:
        from providers.local import MODEL_NAME

        return LOCAL, model or MODEL_NAME, base_url
    if model is None:
        if provider not in DEFAULT_MODELS:
            raise ValueError(f"give a model for provider {provider!r}")
        model = DEFAULT_MODELS[provider]
    return provider, model, base_url


def _as_prompt(prompt: Any, features: str, template: str | None, system: str | None) -> Any:
    from providers.prompt import MaskedPrompt

    if isinstance(prompt, MaskedPrompt):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string or a MaskedPrompt, got {type(prompt).__name__}")
    if features not in ("words", "sentences", "paragraphs"):
        raise ValueError(f"features must be words, sentences or paragraphs, got {features!r}")
    return MaskedPrompt.from_text(prompt, granularity=features, template=template, system=system)


def _make_adapter(provider: str, model: str, base_url: str | None, api_key: str | None) -> Any:
    from providers.adapters import make_adapter

    if provider == LOCAL:
        # Before the server runs (preview) the adapter gets an unreachable placeholder URL: nothing is sent
        # from a preview, and run() builds a fresh adapter on the live server's port.
        return make_adapter("openai-compatible", model, base_url=base_url or _NOT_STARTED)
    return make_adapter(provider, model, base_url=base_url, api_key=api_key)


def _make_scorer(scorer: Any, labels: Sequence[str] | None, adapter: Any) -> Any:
    """A scorer object from its name; "auto" picks the best the provider supports.

    auto: with labels, the logprob margin between them (or, without logprobs, their answer frequency over
    samples); without labels, the logprob of the original answer's first token (or answer similarity).
    """
    from providers import scorers

    if not isinstance(scorer, str):
        return scorer
    name = scorer.lower().replace("_", "-")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; use one of {', '.join(SCORERS)} or pass a Scorer object")
    if name in ("answer-logprob", "similarity") and labels:
        raise ValueError(f"scorer {name} takes no labels")
    if name == "auto":
        has_logprobs = getattr(adapter, "max_top_logprobs", None) is not None
        if labels:
            name = "label-margin" if has_logprobs else "frequency"
        else:
            name = "answer-logprob" if has_logprobs else "similarity"
    labels = tuple(labels) if labels else ("True", "False")
    if name == "label-margin":
        return scorers.LabelMargin(labels)
    if name == "frequency":
        return scorers.AnswerFrequency(labels)
    if name == "answer-logprob":
        return scorers.AnswerLogprob()
    return scorers.AnswerSimilarity()


def _plan(n: int, budget: int, method: str, max_order: int) -> Any:
    from spex_api.planner import plan

    # One query is kept back for the original (unmasked) answer.
    return plan(n, budget - 1, method=method, max_order=max_order)


def preview(
    prompt: Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    features: str = "words",
    template: str | None = None,
    system: str | None = None,
    scorer: Any = "auto",
    labels: Sequence[str] | None = None,
    budget: int = 1000,
    max_cost: float | None = None,
    method: str = "auto",
    max_order: int = 5,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    random_state: int = 0,
) -> Preview:
    """Validate everything and plan the run without sending a single query (what `--dry-run` shows).

    Raises ValueError/TypeError (or a provider configuration error) on bad input: an empty prompt, an
    unknown provider, a missing API key, a label the model cannot score, a budget below the minimum,
    an estimated cost above `max_cost`.
    """
    if not isinstance(budget, (int, np.integer)) or budget < 2:
        raise ValueError(f"budget must be an integer >= 2 queries, got {budget!r}")
    if max_cost is not None and max_cost < 0:
        raise ValueError(f"max_cost must be >= 0 dollars, got {max_cost}")
    provider, model, base_url = _resolve_provider(provider, model, base_url, api_key)
    masked = _as_prompt(prompt, features, template, system)
    adapter = _make_adapter(provider, model, base_url, api_key)
    score = _make_scorer(scorer, labels, adapter)
    score.validate(adapter)
    the_plan = _plan(masked.n_features, int(budget), method, max_order)
    estimate = 0.0 if provider == LOCAL else _estimate_cost(masked, adapter, score, the_plan.total + 1)
    if max_cost is not None and estimate is not None and estimate > max_cost:
        raise ValueError(
            f"the estimated cost ${estimate:.4f} of {the_plan.total + 1} queries exceeds max_cost ${max_cost:.4f}; "
            "lower the budget or raise max_cost"
        )
    return Preview(
        masked, provider, model, base_url, score, the_plan, int(budget), max_cost, estimate, method,
        max_order, random_state, cache_dir, tuple(labels) if labels else None, api_key,
    )


def _estimate_cost(prompt: Any, adapter: Any, scorer: Any, n_queries: int) -> float | None:
    """Dollars for n_queries before any cache hit: every masked prompt is at most as long as the full one
    and every answer is taken to run to max_tokens. None when the model has no known price."""
    from providers.cost import PriceTable, worst_case_cost

    price = PriceTable().lookup(adapter.provider, adapter.model)
    if price is None:
        return None
    messages = prompt.render(prompt.full_mask())
    request = scorer.reference_request(messages) if scorer.needs_reference else scorer.request(messages)
    per_query = worst_case_cost(price, adapter.estimate_input_tokens(request), request.max_tokens, request.samples)
    return per_query * n_queries


# ---------------------------------------------------------------------------------------------- running
class _Loop:
    """One event loop on a background thread: every query of a run (or a batch) goes through it, so one
    runner's rate limiter, semaphore and cache serve all explanations, while the engine stays synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="spex-api-io", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _make_runner(pre: Preview, max_queries: int | None, max_cost: float | None, progress: bool) -> Any:
    from providers.runner import Runner

    cache = os.path.expanduser(pre.cache_dir) if pre.cache_dir else None
    return Runner(max_queries=max_queries, max_cost=max_cost, cache_dir=cache, progress=progress)


def _metadata(pre: Preview, reference: Any) -> dict[str, Any]:
    """Original answer, the prompt and where each feature sits in it (for the HTML report), provenance."""
    d = pre.prompt.to_dict()
    holders = sorted({f["message"] for f in d["features"]})
    starts, parts, pos = {}, [], 0
    for m in holders:
        starts[m] = pos
        parts.append(d["messages"][m]["content"])
        pos += len(parts[-1]) + 2
    return {
        "original_answer": reference.text,
        "prompt": d["messages"],
        "text": "\n\n".join(parts),
        "feature_texts": [f["text"] for f in d["features"]],
        "feature_spans": [[starts[f["message"]] + f["start"], starts[f["message"]] + f["end"]] for f in d["features"]],
        "granularity": None,
        "provider": pre.provider,
        "model": pre.model,
        "base_url": pre.base_url,
        "scorer": getattr(pre.scorer, "name", str(pre.scorer)),
        "labels": list(pre.labels) if pre.labels else None,
        "budget": pre.budget,
        "estimated_cost": pre.estimated_cost,
    }


def _run_one(pre: Preview, adapter: Any, runner: Any, io: _Loop) -> Any:
    """Original answer, then the planned queries; returns the Explanation with cost and metadata."""
    from providers.value_function import LLMValueFunction

    from spex_api.explainer import Explainer

    vf = LLMValueFunction(pre.prompt, adapter, pre.scorer, runner)
    reference = io.run(vf.reference())

    def value(masks: np.ndarray) -> np.ndarray:
        return io.run(vf(masks))

    explainer = Explainer(
        value, pre.prompt.n_features, pre.budget - 1, method=pre.method, max_order=pre.max_order,
        random_state=pre.random_state, feature_names=pre.prompt.feature_names,
    )
    expl = explainer.explain()
    expl.queries_used += 1  # the original answer
    expl.cost = float(vf.stats.cost)
    expl.metadata.update(_metadata(pre, reference))
    return expl


def _confirm(pre: Preview, confirm: bool | None, console: Any) -> None:
    """Ask before spending real money when running interactively (or when asked to)."""
    ask = confirm if confirm is not None else (not pre.local and sys.stdin.isatty() and (pre.estimated_cost or 0) > 0)
    if not ask:
        return
    from rich.prompt import Confirm

    if not Confirm.ask("Spend these queries?", console=console, default=False):
        raise SpendRefused("cancelled before any query was sent")


def explain(
    prompt: Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    features: str = "words",
    template: str | None = None,
    system: str | None = None,
    scorer: Any = "auto",
    labels: Sequence[str] | None = None,
    budget: int = 1000,
    max_cost: float | None = None,
    method: str = "auto",
    max_order: int = 5,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    random_state: int = 0,
    confirm: bool | None = None,
    progress: bool = True,
) -> Any:
    """Explain why the model answers `prompt` as it does: ranked feature interactions of its score.

    `budget` caps the queries (the original answer included), `max_cost` the dollars. With no provider,
    no base_url and no OPENAI_API_KEY the local Gemma server is started for the call and stopped after.
    Before any spend the plan and estimated cost are shown (and confirmed when interactive or
    `confirm=True`); then the run shows a progress bar. Returns a `spex_api.explanation.Explanation`
    with faithfulness, queries_used, cost (dollars) and metadata (original answer, feature texts, prompt,
    provider, model, scorer).
    """
    pre = preview(
        prompt, provider=provider, model=model, base_url=base_url, api_key=api_key, features=features,
        template=template, system=system, scorer=scorer, labels=labels, budget=budget, max_cost=max_cost,
        method=method, max_order=max_order, cache_dir=cache_dir, random_state=random_state,
    )
    return run(pre, confirm=confirm, progress=progress)


def run(pre: Preview, *, confirm: bool | None = None, progress: bool = True) -> Any:
    """Spend the previewed plan: show it, confirm if needed, query, fit. See `explain`."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    console.print(pre.renderable())
    _confirm(pre, confirm, console)
    with ExitStack() as stack:
        adapter = _live_adapter(pre, stack)
        runner = _make_runner(pre, pre.budget, pre.max_cost, progress)
        io = _Loop()
        stack.callback(io.close)
        return _run_one(pre, adapter, runner, io)


def _live_adapter(pre: Preview, stack: ExitStack) -> Any:
    """The adapter to query: for the local provider, start (or reuse via base_url) the llama-server."""
    if not pre.local or pre.base_url:
        return _make_adapter(pre.provider, pre.model, pre.base_url, pre._api_key)
    from providers.local import LocalServer

    server = stack.enter_context(LocalServer())
    return _make_adapter(LOCAL, pre.model, server.base_url, None)


def explain_many(
    prompts: Sequence[Any],
    *,
    budget: int = 1000,
    max_cost: float | None = None,
    concurrency: int = 4,
    return_exceptions: bool = False,
    confirm: bool | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> list[Any]:
    """Explain many prompts concurrently through ONE runner: one rate limiter, one cache, and one cost cap
    (`max_cost`, dollars) and query cap (`budget` per prompt, summed) across the whole batch.

    Every prompt is validated and planned before anything is sent. With `return_exceptions=True` a prompt
    that fails (e.g. the batch's dollar cap ran out) yields its exception in the result list instead of
    stopping the batch; its paid answers stay cached, so rerunning the batch pays only for what is missing.
    """
    from rich.console import Console

    pres = [preview(p, budget=budget, **kwargs) for p in prompts]
    console = Console(stderr=True, quiet=not progress)
    total_q = sum(p.n_queries for p in pres)
    costs = [p.estimated_cost for p in pres]
    est = None if any(c is None for c in costs) else float(sum(costs))
    if pres:
        console.print(pres[0].renderable())
        console.print(
            f"batch: {len(pres)} prompts, ≤ {total_q} queries, estimated ≤ "
            + ("unknown" if est is None else f"${est:.4f}")
            + (f", hard cap ${max_cost:.2f} across the batch" if max_cost is not None else "")
        )
        _confirm(pres[0], confirm, console)
    results: list[Any] = [None] * len(pres)
    with ExitStack() as stack:
        adapter = _live_adapter(pres[0], stack) if pres else None
        runner = _make_runner(pres[0], total_q, max_cost, progress) if pres else None
        io = _Loop()
        stack.callback(io.close)

        def one(i: int) -> Any:
            try:
                return _run_one(pres[i], adapter, runner, io)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller on request
                if not return_exceptions:
                    raise
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(pres)))) as pool:
            results = list(pool.map(one, range(len(pres))))
    return results
