"""The value function the engine calls: masks -> masked prompts -> API calls -> scores.

`LLMValueFunction(prompt, adapter, scorer, runner)` is an async callable (the engine's `Oracle` accepts it):
each mask is rendered by the MaskedPrompt, turned into a Request by the scorer, sent through the Runner
(cache, limits, retries, caps) and scored. Everything that can be checked without spending is checked in
the constructor or before a batch is sent: zero features, a scorer that cannot run on this adapter, a batch
whose estimated cost no longer fits the runner's `max_cost` or `max_queries`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from providers.adapters.base import Adapter
from providers.cost import Price
from providers.errors import CapExceededError, ConfigurationError
from providers.runner import Runner, RunnerStats
from providers.types import Completion, Message, Request, Usage
from spex_api.engine.masks import as_masks

log = logging.getLogger(__name__)

ESTIMATE_MASKS = 32  # random masks whose prompts price a typical query
COUNTED_PROMPTS = 4  # of them, distinct masked prompts whose tokens the endpoint counts exactly (free calls)


class LLMValueFunction:
    """Scores of masked prompts from a model, for the engine.

    prompt: a MaskedPrompt (`n_features`, `render_many`, `full_mask`); adapter: from `make_adapter`; scorer: a
    configured providers.scorers Scorer, left unchanged (it may be shared): `scorer` here is the copy bound to
    this adapter and, once asked, this prompt's reference answer; runner: a Runner for this adapter (None = a default Runner without disk cache);
    progress: show a rich progress bar (queries done, cache hits, spend, rate) while a batch runs.
    """

    def __init__(self, prompt: Any, adapter: Adapter, scorer: Any, runner: Runner | None = None,
                 progress: bool = True) -> None:
        n = getattr(prompt, "n_features", 0)
        if not n:
            raise ConfigurationError("the prompt has zero maskable features; nothing to explain")
        full = prompt.render(prompt.full_mask())
        if not any(m.content.strip() for m in full):
            raise ConfigurationError("the prompt is empty")
        runner = runner if runner is not None else Runner(adapter)
        if runner.adapter is not adapter:
            raise ConfigurationError("runner was built for a different adapter than the value function's")
        self._configured = scorer
        scorer = scorer.bind(adapter)  # raises before any spend (unsupported provider, multi-token label, ...)
        if getattr(scorer, "needs_reference", False):
            adapter.check(scorer.reference_request(full))  # e.g. top_logprobs beyond the provider's maximum
        self.prompt = prompt
        self.scorer = scorer
        adapter.check(self._full_request())
        # every design asks some heavily masked prompts: the all-masked one must be sendable too (Anthropic
        # refuses an empty user message), or the run would stop partway, after spending
        adapter.check(self._request_for(prompt.render(np.zeros(int(n), dtype=bool))))
        self.adapter = adapter
        self.runner = runner
        self.progress = progress
        self.n = int(n)
        self.queries = 0
        self._reference: Completion | None = None
        self._calibrated: tuple[float, float, int | None] | bool | None = None

    def __repr__(self) -> str:
        return f"LLMValueFunction(n={self.n}, adapter={self.adapter!r}, scorer={self.scorer!r})"

    # ---- cost ---------------------------------------------------------------------------------------
    def _full_request(self) -> Request:
        """The unmasked prompt's scoring request; before the reference answer exists (teacher-forcing scorers
        append it), the reference request stands in (its max_tokens makes the estimate conservative)."""
        return self._request_for(self.prompt.render(self.prompt.full_mask()))

    def _request_for(self, messages: Any) -> Request:
        """The scoring request of rendered messages, or the reference request while the scorer still waits
        for its reference answer (teacher-forcing scorers append it)."""
        try:
            return self.scorer.request(messages)
        except ValueError:  # ScorerError: the scorer needs its reference answer first
            return self.scorer.reference_request(messages)

    def _sample(self) -> np.ndarray:
        """ESTIMATE_MASKS random masks keeping each feature with probability 1/2, as SPEX, ProxySPEX and the
        held-out slice ask them (placeholders make masked prompts longer than the original, removal shorter)."""
        return np.random.default_rng(0).random((ESTIMATE_MASKS, self.n)) < 0.5

    def _calibration(self, price: Price | None = None) -> tuple[float, float, int | None] | None:
        """Exact prompt tokens as a line in the share of features kept, (tokens with none kept, tokens the
        features add when all are kept, exact tokens of the cacheable prefix or None): least squares through
        COUNTED_PROMPTS distinct masked prompts counted by the endpoint's free token counter (every feature
        masked, none masked, then random masks of the sample), and, with a cacheable prefix, one of them counted
        without it. None without a counter or when prompt tokens are free (the adapter's estimate is used).
        Asked once per value function (and remembered per endpoint by the adapter)."""
        if self._calibrated is None:
            self._calibrated = False
            candidates = np.concatenate([np.zeros((1, self.n), bool), np.ones((1, self.n), bool), self._sample()])
            first = np.unique(candidates, axis=0, return_index=True)[1]
            rows = candidates[np.sort(first)][:COUNTED_PROMPTS]
            if (self.runner.price if price is None else price).input > 0:
                sample = [self._request_for(m) for m in self.prompt.render_many(rows)]
                bare = self.adapter.without_prefix(sample[0])
                counts = self.adapter.count_prompt_tokens_now(sample + ([bare] if bare is not None else []))
                if counts:
                    slope, intercept = np.polyfit(rows.mean(axis=1), np.asarray(counts[: len(rows)], float), 1)
                    self._calibrated = (float(intercept), float(slope),
                                        counts[0] - counts[-1] if bare is not None else None)
                    log.debug("exact prompt tokens = %.1f + %.1f x share kept (from %d counts); prefix %s tokens",
                              *self._calibrated[:2], len(rows), self._calibrated[2])
        return self._calibrated if isinstance(self._calibrated, tuple) else None

    def estimate_masks(self, masks: Any, requests: Sequence[Request] | None = None, price: Price | None = None
                       ) -> float:
        """Typical dollars of these masks' queries (`requests`: theirs as the run builds them, default the
        scoring requests) at the runner's price or `price`: prompt tokens from `_calibration` (else the
        adapter's estimate), the cacheable prefix at the cached-input price, max_tokens per sample."""
        m = np.atleast_2d(np.asarray(masks, dtype=bool))
        fit = self._calibration(price)
        a, r = self.adapter, self.runner
        if requests is None:
            requests = [self._request_for(msgs) for msgs in self.prompt.render_many(m)]
        if fit is None:
            return float(sum(r.estimate_cost(q, price=price) for q in requests))
        tokens = fit[0] + fit[1] * m.mean(axis=1)
        return float(sum(r.estimate_cost(q, price=price, input_tokens=t, cached_tokens=a.cached_prefix_tokens(q, fit[2]))
                         for q, t in zip(requests, tokens)))

    def typical_cost(self, price: Price | None = None) -> float:
        """Dollars of a typical masked query: the mean over the ESTIMATE_MASKS sample (`estimate_masks`)."""
        return self.estimate_masks(self._sample(), price=price) / ESTIMATE_MASKS

    def prefix_write(self, price: Price | None = None) -> tuple[str, float]:
        """(the cacheable prefix, what its first use costs above a cache read): the provider writes the prefix
        to its cache on the first call (Anthropic at 1.25x the input price; OpenAI bills it uncached) and serves
        it from the cache afterwards. ("", 0.0) when nothing is cached."""
        full = self._full_request()
        fit = self._calibration(price)
        n = self.adapter.cached_prefix_tokens(full, None if fit is None else fit[2])
        if not n:
            return "", 0.0
        p = self.runner.price if price is None else price
        return self.adapter.cacheable_prefix(full), p.cost(Usage(n, 0, 0, n)) - p.cost(Usage(n, 0, n, 0))

    def estimate_cost(self, n_queries: int, price: Price | None = None) -> float:
        """Dollars for n_queries masked prompts (plus the reference answer when the scorer needs one): each priced
        as the mean of the ESTIMATE_MASKS sample (`estimate_masks`), with one cache write of the fixed prefix;
        cached answers would make it cheaper. `price`: instead of the runner's."""
        if n_queries < 0:
            raise ConfigurationError("n_queries must be >= 0")
        per_query = self.typical_cost(price)
        ref = 0.0
        if getattr(self.scorer, "needs_reference", False) and self._reference is None:
            full = self.scorer.reference_request(self.prompt.render(self.prompt.full_mask()))
            fit = self._calibration(price)
            ref = self.runner.estimate_cost(full, price=price, input_tokens=None if fit is None else fit[0] + fit[1],
                                            cached_tokens=None if fit is None else
                                            self.adapter.cached_prefix_tokens(full, fit[2]))
        return n_queries * per_query + ref + (self.prefix_write(price)[1] if n_queries or ref else 0.0)

    def worst_case_cost(self, n_queries: int, price: Price | None = None) -> float:
        """Most dollars n_queries masked prompts (plus the reference answer when the scorer needs one) can cost
        on a cold cache: every prompt token billed uncached (masked prompts bounded by the unmasked one plus a
        placeholder per feature), every answer running to max_tokens. Used to admit prompts under one cap."""
        if n_queries < 0:
            raise ConfigurationError("n_queries must be >= 0")
        full = self._full_request()
        pad = len(getattr(self.prompt, "placeholder", "").encode()) * self.n
        longest = dataclasses.replace(full, messages=full.messages[:-1] + (Message(full.messages[-1].role,
                                                                        full.messages[-1].content + "x" * pad),))
        ref = 0.0
        if getattr(self.scorer, "needs_reference", False) and self._reference is None:
            ref = self.runner.worst_case_cost(self.scorer.reference_request(self.prompt.render(self.prompt.full_mask())),
                                              price=price)
        return n_queries * self.runner.worst_case_cost(longest, price=price) + ref

    def _check_budget(self, requests: list[Request]) -> None:
        """Refuse a batch, before sending any of it, when its uncached part cannot fit the runner's caps."""
        r = self.runner
        if r.max_cost is None and r.max_queries is None:
            return  # nothing to refuse: skip a second cache look-up per request (the runner does one)
        todo = [q for q in requests if not r.is_cached(q)]
        if r.max_cost is not None:
            need = sum(r.estimate_cost(q) for q in todo)
            if r.stats.spend + need > r.max_cost:
                raise CapExceededError(
                    f"this batch needs about ${need:.6f} for {len(todo)} uncached queries but only "
                    f"${r.max_cost - r.stats.spend:.6f} of max_cost=${r.max_cost:.6f} is left; nothing was sent")
        if r.max_queries is not None:
            calls = sum(1 if self.adapter.multi_sample else q.samples for q in todo)
            left = r.queries_left
            if left is not None and calls > left:
                raise CapExceededError(f"this batch needs {calls} API calls but max_queries leaves {left}; "
                                       "nothing was sent")

    # ---- calls --------------------------------------------------------------------------------------
    async def reference(self) -> Completion:
        """The unmasked prompt's answer; binds the scorer to it when the scorer compares against it."""
        if self._reference is None:
            full = self.prompt.render(self.prompt.full_mask())
            needs = getattr(self.scorer, "needs_reference", False)
            req = self.scorer.reference_request(full) if needs else self.scorer.request(full)
            self._check_budget([req])
            check = self._check_reference if needs else self._check_answer
            completion = (await self.runner.run([req], validate=check))[0]
            if needs:
                self.scorer = self._configured.bind(self.adapter, completion)
            self._reference = completion
        return self._reference

    async def __call__(self, masks: Any, repeat: int = 0) -> np.ndarray:
        """Scores of the masks ((N, n) bool, True = feature kept), one float per row.

        repeat = k > 0 asks the same masks again as the k-th genuine re-ask (a separate cache entry, never
        the cached first answer), for measuring repeat noise.
        """
        if not isinstance(repeat, (int, np.integer)) or isinstance(repeat, bool) or repeat < 0:
            raise ConfigurationError(f"repeat must be an integer >= 0, got {repeat!r}")
        m = as_masks(masks, self.n, ConfigurationError)
        if getattr(self.scorer, "needs_reference", False):
            await self.reference()
        requests = [self.scorer.request(msgs) for msgs in self.prompt.render_many(m)]
        if repeat:
            requests = [dataclasses.replace(r, repeat=int(repeat)) for r in requests]
        self._check_budget(requests)
        completions = await self._run(requests)
        self.queries += len(requests)
        return np.asarray(self.scorer.score_many(completions), dtype=float)

    def _check_answer(self, request: Request, completion: Completion) -> None:
        """Raise unless this answer can be scored (the runner then never caches it): what the adapter promises
        for the request (finite logprobs, one text per sample) and a finite score."""
        self.adapter.check_answer(request, completion)
        self.scorer.check(completion)

    def _check_reference(self, request: Request, completion: Completion) -> None:
        self.scorer.check_reference(completion)

    async def _run(self, requests: list[Request]) -> list[Completion]:
        if not self.progress or not requests:
            return await self.runner.run(requests, validate=self._check_answer)
        start = self.runner.stats.cache_hits
        # Two redraws a second: one takes ~1.3 ms of CPU, so rich's default 10 a second cost 1.3-1.4 ms per query
        # at 10 queries/s in a terminal (0.3-0.4 ms now).
        with Progress(TextColumn("[bold]queries"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[hits]} cached · ${task.fields[spend]:.4f} · {task.fields[rate]:.1f}/s"),
                      TimeElapsedColumn(), transient=True, refresh_per_second=2) as bar:
            task = bar.add_task("queries", total=len(set(requests)),  # the runner asks identical requests once
                                hits=0, spend=self.runner.stats.spend, rate=0.0)

            def tick(stats: RunnerStats) -> None:
                bar.update(task, advance=1, hits=stats.cache_hits - start, spend=stats.spend, rate=stats.rate)

            previous, self.runner.on_progress = self.runner.on_progress, tick
            try:
                return await self.runner.run(requests, validate=self._check_answer)
            finally:
                self.runner.on_progress = previous

    @property
    def stats(self) -> dict[str, Any]:
        """Runner counters (api_calls, cache_hits, retries, spend, tokens, rate) plus masks scored."""
        d = self.runner.stats.as_dict()
        d["masks_scored"] = self.queries
        d["bound_hits"] = getattr(self.scorer, "bound_hits", 0)
        return d
