"""Price table lookups, overrides, cost of usage, and the worst-case bound the caps rely on."""

from __future__ import annotations

import pytest
from fakeserver import FakeServer

from providers.adapters import make_adapter
from providers.cost import FREE, PRICES_AS_OF, Price, PriceTable, worst_case_cost
from providers.errors import ConfigurationError
from providers.runner import Runner
from providers.types import Message, Request, Usage


def test_lookup_by_family_and_snapshots():
    t = PriceTable()
    assert t.price("openai", "gpt-4o-mini-2024-07-18") == t.price("openai", "gpt-4o-mini")
    assert t.price("openai", "gpt-4o-2024-08-06").input == 2.50
    assert t.price("openai", "gpt-4.1-nano").output == 0.40
    assert t.price("openai", "o3-mini").input == 1.10 and t.price("openai", "o3").input == 2.00
    assert t.price("anthropic", "claude-3-5-haiku-20241022").output == 4.00
    assert t.price("anthropic", "claude-opus-4-1-20250805").input == 15.00
    assert "20" in PRICES_AS_OF


def test_other_suffixes_are_other_models_not_their_family():
    """'o3-pro' is not 'o3' (ten times the price): a suffix that is not a snapshot must be priced explicitly."""
    t = PriceTable()
    assert t.price("openai", "o3-pro").output == 80.00 and t.price("openai", "o1-pro").input == 150.00
    assert t.price("openai", "gpt-4o-2024-05-13").input == 5.00  # the first snapshot kept its launch price
    assert t.price("openai", "gpt-3.5-turbo-0125") == t.price("openai", "gpt-3.5-turbo")
    assert t.price("openai", "gpt-5-chat-latest").output == 10.00
    assert t.price("anthropic", "claude-3-5-haiku-latest") == t.price("anthropic", "claude-3-5-haiku")
    for unknown in ("o3-ultra", "gpt-4o-mini-transcribe", "gpt-5-codex-max"):
        assert t.lookup("openai", unknown) is None
    assert not t.priced("compatible", "gemma-3-270m") and t.lookup("compatible", "gemma-3-270m") == FREE


def test_max_cost_refused_for_an_unpriced_remote_server_before_any_spend():
    """A paid gateway (OpenRouter, Azure, a proxy) by base_url is free only if the caller says so."""
    remote = make_adapter("openai", "gpt-4o", base_url="https://openrouter.example/api/v1", api_key="sk-x-123456")
    assert remote.provider == "openai-compatible"
    with pytest.raises(ConfigurationError, match="max_cost cannot be enforced"):
        Runner(remote, max_cost=1.0)
    Runner(remote)  # no cap asked: nothing to enforce
    priced = PriceTable({"openai-compatible": {"gpt-4o": Price(2.5, 1.25, 10.0)}})
    assert Runner(remote, max_cost=1.0, prices=priced).price.output == 10.0
    for own in ("http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://192.168.1.20:8000/v1"):
        Runner(make_adapter("vllm", "m", base_url=own), max_cost=0.0)  # servers the user runs: free
    official = make_adapter("openai", "gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-x-123456")
    assert official.provider == "openai" and official.base_url is None  # written out, still the official API
    assert Runner(official, max_cost=1.0).price.input == 0.15


def test_unknown_paid_model_is_an_error_local_is_free_overrides_win():
    t = PriceTable()
    with pytest.raises(ConfigurationError, match="no price"):
        t.price("openai", "gpt-99")
    assert t.price("compatible", "gemma-3-270m") == FREE
    assert t.price("anthropic-compatible", "anything") == FREE
    mine = Price(1.0, 0.5, 2.0)
    t2 = PriceTable({"openai": {"gpt-99": mine}, "compatible": {"gemma-3-270m": Price(0.1, 0.1, 0.1)}})
    assert t2.price("openai", "gpt-99") is mine
    assert t2.price("compatible", "gemma-3-270m-latest").input == 0.1
    assert t2.price("openai", "gpt-4o-mini").input == 0.15  # built-ins kept


def test_cost_of_usage_with_cached_and_batch():
    p = Price(input=2.0, cached_input=0.5, output=8.0, batch_input=1.0, batch_output=4.0)
    u = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_input_tokens=200_000)
    assert p.cost(u) == pytest.approx(0.8 * 2.0 + 0.2 * 0.5 + 0.5 * 8.0)
    assert p.cost(u, batch=True) == pytest.approx(0.8 * 1.0 + 0.2 * 0.5 + 0.5 * 4.0)
    assert worst_case_cost(p, 1000, 10, samples=3) == pytest.approx((1000 * 2.0 + 30 * 8.0) / 1e6)


async def test_worst_case_reservation_bounds_actual_cost():
    with FakeServer() as s:
        a = make_adapter("openai", "gpt-4o-mini", api_key="sk-test-cost-0123456789")
        a.base_url = s.url + "/v1"
        r = Runner(a)
        reqs = [Request(messages=(Message("system", "Be brief."), Message("user", "word " * i)), max_tokens=3,
                        samples=2, top_logprobs=2) for i in range(1, 6)]
        out = await r.run(reqs)
        for q, c in zip(reqs, out):
            assert r.price.cost(c.usage) <= r.worst_case_cost(q)
            assert r.estimate_cost(q) <= r.worst_case_cost(q)
