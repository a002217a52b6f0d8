"""LLMValueFunction end to end against the fake server: masks -> prompts -> calls -> scores, with the engine's
Oracle, the cache, faults, and every validation that must happen before any spend."""

from __future__ import annotations

import numpy as np
import pytest
from fakeserver import FakeServer

from providers.adapters import make_adapter
from providers.cost import Price, PriceTable
from providers.errors import CapExceededError, ConfigurationError
from providers.prompt import MaskedPrompt
from providers.runner import Runner
from providers.scorers import AnswerFrequency, AnswerLogprob, AnswerSimilarity, LabelMargin, ScorerError
from providers.value_function import LLMValueFunction
from spex_api.engine.oracle import Oracle

TEXT = "The movie was long. The acting was superb. The plot made no sense. I would watch it again."
TEMPLATE = "Review: {content}\nIs the review positive? Answer True or False."


@pytest.fixture(scope="module")
def server():
    with FakeServer() as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server):
    server.state.control({"reset": True})


def prompt():
    return MaskedPrompt.from_text(TEXT, granularity="sentences", template=TEMPLATE)


def masks(n_rows, n, seed=0):
    return np.random.default_rng(seed).random((n_rows, n)) < 0.5


def vf(server, tmp_path=None, scorer=None, provider="compatible", **runner_kw):
    a = make_adapter(provider, "gemma", base_url=server.url + "/v1")
    r = Runner(a, cache=None if tmp_path is None else str(tmp_path), **runner_kw)
    return LLMValueFunction(prompt(), a, scorer or LabelMargin(top_logprobs=5), r, progress=False)


async def test_scores_match_direct_scoring_and_cache_makes_reruns_free(server, tmp_path):
    f = vf(server, tmp_path, concurrency=4)
    m = masks(16, f.n)
    y = await f(m)
    assert y.shape == (16,) and np.isfinite(y).all() and len(set(np.round(y, 9))) > 1
    # the same scores by hand: render, request, send, score
    sc = f.scorer
    direct = [sc.score(await f.adapter.send(sc.request(msgs))) for msgs in f.prompt.render_many(m)]
    assert np.allclose(y, direct)
    calls = f.stats["api_calls"]
    f2 = vf(server, tmp_path)
    assert np.array_equal(await f2(m), y) and f2.stats["api_calls"] == 0
    assert calls == f2.stats["cache_hits"] == len({tuple(r) for r in m})  # repeated masks are asked once


def test_works_through_the_engine_oracle_with_faults(server, tmp_path):
    server.fail_first(["429", "500"])
    f = vf(server, tmp_path, concurrency=4, backoff_initial=0.01, backoff_max=0.02)
    oracle = Oracle(f, f.n, budget=64)
    m = masks(20, f.n, seed=1)
    y1 = oracle(m)  # sync call: the Oracle runs the async value function on its own loop
    y2 = oracle(masks(20, f.n, seed=2))
    assert np.isfinite(y1).all() and np.isfinite(y2).all()
    assert set(server.stats()["paid"].values()) == {1}
    assert f.stats["retries"] == 2 * server.stats()["paid_total"]


async def test_reference_is_fetched_once_for_scorers_that_need_it(server):
    f = vf(server, scorer=AnswerFrequency(samples=3, temperature=1.0))
    ref = await f.reference()
    assert await f.reference() is ref
    await f(masks(4, f.n))
    assert f.stats["masks_scored"] == 4


async def test_teacher_forcing_scorer_gets_its_reference_first(server):
    f = vf(server, scorer=AnswerLogprob(mode="sequence"), provider="vllm")  # the fake server answers vLLM-style
    assert f.estimate_cost(10) == 0.0  # compatible server: free unless priced
    y = await f(masks(6, f.n, seed=3))
    assert np.isfinite(y).all() and (y < 0).all()
    ref = f.scorer.reference.text
    assert all(b["messages"][-1] == {"role": "assistant", "content": ref}
               for b in server.state.bodies[1:])  # every scoring call teacher-forces the reference answer
    assert all(b.get("prompt_logprobs") == 1 for b in server.state.bodies[1:])


def test_validation_before_any_spend(server):
    a = make_adapter("anthropic", "claude-3-5-haiku-latest", base_url=server.url)
    with pytest.raises(ScorerError):
        LLMValueFunction(prompt(), a, LabelMargin(), Runner(a), progress=False)  # no logprobs on Anthropic
    b = make_adapter("compatible", "gemma", base_url=server.url + "/v1")
    with pytest.raises(ConfigurationError, match="different adapter"):
        LLMValueFunction(prompt(), b, LabelMargin(), Runner(a), progress=False)
    # every feature removed leaves an empty user message, which Anthropic refuses: caught before the design runs
    bare = MaskedPrompt.from_text("Fire is hot today", mask_style="remove")
    with pytest.raises(ConfigurationError, match="empty messages"):
        LLMValueFunction(bare, a, AnswerSimilarity(), Runner(a), progress=False)
    framed = MaskedPrompt.from_text("Fire is hot today", template="Statement: {content}\nTrue or False?",
                                    mask_style="remove")
    LLMValueFunction(framed, a, AnswerSimilarity(), Runner(a), progress=False)
    assert server.stats()["requests"] == 0

    class Empty:
        n_features = 0

    with pytest.raises(ConfigurationError, match="zero"):
        LLMValueFunction(Empty(), b, LabelMargin(), Runner(b), progress=False)
    f = vf(server)
    with pytest.raises(ConfigurationError, match="shape"):
        import asyncio

        asyncio.run(f(np.ones((2, f.n + 1), dtype=bool)))
    assert server.stats()["requests"] == 0


async def test_budget_the_estimate_already_exceeds_is_refused_before_sending(server):
    prices = PriceTable({"compatible": {"gemma": Price(1.0, 1.0, 1.0)}})  # $1 per 1M tokens
    f = vf(server, max_cost=1e-4, prices=prices)
    est = f.estimate_cost(100)
    assert est > 1e-4
    typical = np.random.default_rng(0).random((32, f.n)) < 0.5  # priced on masked prompts, as designs ask them
    assert est == pytest.approx(100 * np.mean([f.runner.estimate_cost(f.scorer.request(m))
                                               for m in f.prompt.render_many(typical)]))
    with pytest.raises(CapExceededError, match="nothing was sent"):
        await f(masks(100, f.n))
    assert server.stats()["requests"] == 0
    g = vf(server, max_queries=3)
    with pytest.raises(CapExceededError, match="max_queries"):
        await g(masks(10, g.n))
    assert server.stats()["requests"] == 0


async def test_progress_bar_runs(server, capsys):
    a = make_adapter("compatible", "gemma", base_url=server.url + "/v1")
    f = LLMValueFunction(prompt(), a, LabelMargin(top_logprobs=5), Runner(a), progress=True)
    y = await f(masks(5, f.n))
    assert len(y) == 5 and f.runner.on_progress is None


def test_teacher_forcing_refused_before_spend_on_servers_without_prompt_logprobs(server):
    a = make_adapter("llama-server", "gemma", base_url=server.url + "/v1")
    assert not a.prompt_logprobs and make_adapter("vllm", "m", base_url=server.url + "/v1").prompt_logprobs
    with pytest.raises(ScorerError, match="needs prompt logprobs"):
        LLMValueFunction(prompt(), a, AnswerLogprob(mode="sequence"), Runner(a), progress=False)
    assert server.stats()["requests"] == 0


async def test_repeats_are_genuine_re_asks_cached_under_their_own_key(server, tmp_path):
    f = vf(server, tmp_path)
    m = masks(8, f.n, seed=3)
    await f(m)
    first_calls = f.stats["api_calls"]
    await f(m, repeat=1)  # not served from the first answers: asked again
    assert f.stats["api_calls"] == 2 * first_calls
    f2 = vf(server, tmp_path)
    await f2(m, repeat=1)  # ...but a repeat already paid for is cached like any answer
    assert f2.stats["api_calls"] == 0 and f2.stats["cache_hits"] == first_calls
    body = f.adapter.body(f.scorer.request(f.prompt.render(m[0])))
    assert "repeat" not in body  # the provider sees the identical request
    with pytest.raises(ConfigurationError):
        await f(m, repeat=-1)
