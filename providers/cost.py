"""Prices and cost accounting: what a call cost (from the usage it reported) and the worst case before sending.

The built-in table holds list prices in US dollars per 1M tokens, as known when it was written
(PRICES_AS_OF). Prices change: pass your own `PriceTable({...})` or `overrides=` to replace or add entries.
A model matches a table key exactly or as that key plus a snapshot suffix (a date such as "-2024-07-18" or
"-20241022", a four-digit version, "-latest", "-preview"), so dated snapshots find their family; any other
suffix is a different model ("o3-pro" is not "o3": it costs ten times more) and must be priced, else paid
providers refuse it before any spend. Local and OpenAI-compatible servers cost 0 unless priced explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from providers.errors import ConfigurationError
from providers.types import Usage

PRICES_AS_OF = "2026-11-21 (table written from the providers' published list prices known to the author; verify before relying on it)"
# Source: the providers' published list prices (OpenAI's pricing page, Anthropic's pricing docs). The Batch
# API halves every token price at both providers, and their discounts stack with prompt caching: a batched
# cached input token costs half the cached-input price. Anthropic bills a prompt-cache write (5-minute TTL)
# at 1.25x the input price; OpenAI caches automatically and charges nothing extra for writes.
ANTHROPIC_CACHE_WRITE = 1.25


@dataclass(frozen=True)
class Price:
    """US dollars per 1M tokens. `batch_*` are Batch-API prices (half the list price at both providers);
    `cache_write` is the price of an input token written to the prompt cache (None: the input price)."""

    input: float
    cached_input: float
    output: float
    batch_input: float | None = None
    batch_output: float | None = None
    batch_cached_input: float | None = None
    cache_write: float | None = None
    batch_cache_write: float | None = None

    def cost(self, usage: Usage, batch: bool = False) -> float:
        """Dollars for a call that used `usage` (cached and cache-write tokens are subsets of input tokens)."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        p = self.batch() if batch else self
        write = p.input if p.cache_write is None else p.cache_write
        return ((usage.input_tokens - cached - written) * p.input + cached * p.cached_input + written * write
                + usage.output_tokens * p.output) / 1e6

    def batch(self) -> "Price":
        """The Batch-API prices as a price of their own; ConfigurationError if this entry has none."""
        if self.batch_input is None or self.batch_output is None:
            raise ConfigurationError("this model has no Batch-API price; give Price(batch_input=..., batch_output=...)")
        return Price(self.batch_input, self.cached_input if self.batch_cached_input is None else self.batch_cached_input,
                     self.batch_output, self.batch_input, self.batch_output, self.batch_cached_input,
                     self.cache_write if self.batch_cache_write is None else self.batch_cache_write, self.batch_cache_write)


def _p(inp: float, cached: float, out: float, write: float | None = None) -> Price:
    return Price(inp, cached, out, inp / 2, out / 2, cached / 2, write, None if write is None else write / 2)


def _a(inp: float, cached: float, out: float) -> Price:
    """An Anthropic price: cache writes at 1.25x input."""
    return _p(inp, cached, out, inp * ANTHROPIC_CACHE_WRITE)


FREE = Price(0.0, 0.0, 0.0, 0.0, 0.0)

DEFAULT_PRICES: dict[str, dict[str, Price]] = {
    "openai": {
        "gpt-4o-mini": _p(0.15, 0.075, 0.60),
        "gpt-4o": _p(2.50, 1.25, 10.00),
        "gpt-4o-2024-05-13": _p(5.00, 5.00, 15.00),  # the first gpt-4o snapshot kept its launch price
        "gpt-4.1": _p(2.00, 0.50, 8.00),
        "gpt-4.1-mini": _p(0.40, 0.10, 1.60),
        "gpt-4.1-nano": _p(0.10, 0.025, 0.40),
        "gpt-4-turbo": _p(10.00, 10.00, 30.00),
        "gpt-3.5-turbo": _p(0.50, 0.50, 1.50),
        "gpt-3.5-turbo-instruct": _p(1.50, 1.50, 2.00),  # serves the legacy /completions endpoint
        "gpt-5": _p(1.25, 0.125, 10.00),
        "gpt-5-mini": _p(0.25, 0.025, 2.00),
        "gpt-5-nano": _p(0.05, 0.005, 0.40),
        "gpt-5-chat": _p(1.25, 0.125, 10.00),
        "gpt-5-pro": _p(15.00, 15.00, 120.00),
        "o1": _p(15.00, 7.50, 60.00),
        "o1-pro": _p(150.00, 150.00, 600.00),
        "o1-mini": _p(1.10, 0.55, 4.40),
        "o3": _p(2.00, 0.50, 8.00),
        "o3-pro": _p(20.00, 20.00, 80.00),
        "o3-deep-research": _p(10.00, 2.50, 40.00),
        "o3-mini": _p(1.10, 0.55, 4.40),
        "o4-mini": _p(1.10, 0.275, 4.40),
        "o4-mini-deep-research": _p(2.00, 0.50, 8.00),
    },
    "anthropic": {  # cached_input = prompt-cache read price
        "claude-3-haiku": _p(0.25, 0.03, 1.25, 0.30),  # its published cache-write price is 1.2x
        "claude-3-5-haiku": _a(0.80, 0.08, 4.00),
        "claude-haiku-4-5": _a(1.00, 0.10, 5.00),
        "claude-3-5-sonnet": _a(3.00, 0.30, 15.00),
        "claude-3-7-sonnet": _a(3.00, 0.30, 15.00),
        "claude-sonnet-4": _a(3.00, 0.30, 15.00),
        "claude-sonnet-4-5": _a(3.00, 0.30, 15.00),
        "claude-3-opus": _a(15.00, 1.50, 75.00),
        "claude-opus-4": _a(15.00, 1.50, 75.00),
        "claude-opus-4-1": _a(15.00, 1.50, 75.00),
        "claude-opus-4-5": _a(5.00, 0.50, 25.00),
    },
}

PAID_PROVIDERS = frozenset(DEFAULT_PRICES)


# What may follow a table key in a model id of the same model: a dated or numbered snapshot, or an alias.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest|preview(-\d{4}-\d{2}-\d{2})?)")


class PriceTable:
    """Per-provider price lookup (exact key or key + snapshot suffix, longest key wins); `overrides` win over
    the built-in table."""

    def __init__(self, overrides: Mapping[str, Mapping[str, Price]] | None = None, builtin: bool = True) -> None:
        self._table: dict[str, dict[str, Price]] = {p: dict(m) for p, m in DEFAULT_PRICES.items()} if builtin else {}
        for provider, models in (overrides or {}).items():
            self._table.setdefault(provider, {}).update(models)

    def _entry(self, provider: str, model: str) -> Price | None:
        models = self._table.get(provider, {})
        best = max((k for k in models if model == k or (model.startswith(k) and _SNAPSHOT.fullmatch(model[len(k):]))),
                   key=len, default=None)
        return None if best is None else models[best]

    def priced(self, provider: str, model: str) -> bool:
        """True if the table has an entry for this model (a FREE default for unknown servers does not count)."""
        return self._entry(provider, model) is not None

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price entry for this model, FREE for unpriced non-paid providers, None if a paid one is unknown."""
        entry = self._entry(provider, model)
        if entry is not None:
            return entry
        return None if provider in PAID_PROVIDERS else FREE

    def price(self, provider: str, model: str) -> Price:
        """Like lookup, but a paid provider's unknown model is a clear error (raised before any spend)."""
        p = self.lookup(provider, model)
        if p is None:
            known = ", ".join(sorted(self._table.get(provider, {})))
            raise ConfigurationError(
                f"no price for {provider} model {model!r} (known families: {known}); "
                f"pass PriceTable({{'{provider}': {{'{model}': Price(input=..., cached_input=..., output=...)}}}})"
            )
        return p


def worst_case_cost(price: Price, input_tokens: int, max_tokens: int, samples: int = 1) -> float:
    """Upper bound on a call's cost: every prompt token uncached, every sample runs to max_tokens."""
    return price.cost(Usage(input_tokens=input_tokens, output_tokens=max_tokens * samples))
