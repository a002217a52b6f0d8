"""Prompt caching: which bodies ask for it, and how cached-input and cache-write tokens are priced (offline)."""

from __future__ import annotations

import pytest

from providers.adapters import make_adapter
from providers.adapters.anthropic import cache_min_tokens
from providers.cost import DEFAULT_PRICES, Price, PriceTable
from providers.runner import Runner
from providers.types import Message, Request, Usage

LONG = "Rules for the classifier, with worked examples. " * 200  # ~9,800 characters: cacheable at both providers
SHORT = "Answer True or False."


def _req(system: str) -> Request:
    return Request((Message("system", system), Message("user", "Review: fine.\nAnswer:")), max_tokens=1)


def test_anthropic_marks_a_long_system_prompt_with_cache_control_only():
    a = make_adapter("anthropic", "claude-3-5-haiku", api_key="sk-ant-test")
    assert a.body(_req(LONG))["system"] == [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    assert a.body(_req(SHORT))["system"] == SHORT  # too short to cache: the body (and its cache key) is unchanged
    assert a.cached_prefix_tokens(_req(SHORT)) == 0 and a.cached_prefix_tokens(_req(LONG)) == a.count_tokens(LONG)
    assert cache_min_tokens("claude-3-5-haiku-20241022") == 2048 and cache_min_tokens("claude-sonnet-4-5") == 1024


def test_openai_sends_prompt_cache_key_for_a_cacheable_system_prefix_only():
    a = make_adapter("openai", "gpt-4o-mini", api_key="sk-test")
    long_body, short_body = a.body(_req(LONG)), a.body(_req(SHORT))
    assert "prompt_cache_key" not in short_body
    key = long_body["prompt_cache_key"]
    other = a.body(Request((Message("system", LONG), Message("user", "Review: awful.\nAnswer:")), max_tokens=1))
    assert other["prompt_cache_key"] == key and "awful" not in key  # one key per fixed prefix, no user text
    n = a.cached_prefix_tokens(_req(LONG))
    assert n >= 1024 and (n - 1024) % 128 == 0 and n <= a.count_tokens(LONG) + 4
    compat = make_adapter("vllm", "m", base_url="http://127.0.0.1:9/v1")
    assert "prompt_cache_key" not in compat.body(_req(LONG))  # other servers may reject unknown fields


def test_cached_and_written_tokens_are_priced_from_reported_usage():
    haiku = DEFAULT_PRICES["anthropic"]["claude-3-5-haiku"]
    u = Usage(input_tokens=3000, output_tokens=10, cached_input_tokens=2000, cache_write_tokens=500)
    assert haiku.cost(u) == pytest.approx((500 * 0.80 + 2000 * 0.08 + 500 * 1.00 + 10 * 4.00) / 1e6)
    assert haiku.cost(u, batch=True) == pytest.approx(haiku.cost(u) / 2)  # batch and cache discounts stack
    mini = DEFAULT_PRICES["openai"]["gpt-4o-mini"]
    assert mini.batch().input == 0.075 and mini.batch().cached_input == 0.0375 and mini.batch().output == 0.30
    with pytest.raises(ValueError, match="no Batch-API price"):
        Price(1.0, 0.5, 2.0).batch()


def test_estimate_prices_a_cacheable_prefix_at_the_cached_input_rate():
    a = make_adapter("openai", "gpt-4o-mini", api_key="sk-test")
    r = Runner(a, prices=PriceTable())
    req = _req(LONG)
    full = r.price.cost(Usage(a.estimate_input_tokens(req), 1))
    cached = a.cached_prefix_tokens(req)
    assert r.estimate_cost(req) == pytest.approx(full - cached * (0.15 - 0.075) / 1e6)
    assert r.estimate_cost(_req(SHORT)) == pytest.approx(r.price.cost(Usage(a.estimate_input_tokens(_req(SHORT)), 1)))
