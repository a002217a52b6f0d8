"""Issue 9 (money, data, protocol, resources): fault injection against the loopback fake server, counting every
request and dollar at the server. Each test fails on the code before its fix: unusable answers were cached, a
corrupt entry was a wall, HTTP-date Retry-After was ignored, clients leaked sockets per loop, endpoints shared
answers, a hung server held a run for minutes."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time

import pytest
from fakeserver import FakeServer

from providers.adapters import make_adapter
from providers.cache import cache_key
from providers.cost import Price, PriceTable
from providers.errors import UnusableAnswerError, TransportError
from providers.runner import Runner, pause_from_headers
from providers.scorers import LabelMargin
from providers.types import Message, Request

SECRET = "sk-test-reliability-SECRET-0123456789"


@pytest.fixture(scope="module")
def server():
    with FakeServer(timeout_hold=1.2) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server):
    server.state.control({"reset": True, "latency": 0.0})


def adapter(server, **kw):
    kw.setdefault("timeout", 2.0)
    return make_adapter("openai", "gpt-4o-mini", base_url=server.url + "/v1", api_key=SECRET, **kw)


def batch(n, max_tokens=3, word="Question"):
    return [Request(messages=(Message("user", f"{word} number {i}: true or false?"),), top_logprobs=5,
                    max_tokens=max_tokens) for i in range(n)]


# ---- 13: Retry-After as an HTTP date, and retry-after-ms ---------------------------------------------------
def test_retry_after_http_date_and_ms_are_read():
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)  # "Wed, 02 Dec 2026 01:23:23 GMT"
    assert 28 <= pause_from_headers({"Retry-After": soon}) <= 30
    assert pause_from_headers({"Retry-After": email.utils.formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert pause_from_headers({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert pause_from_headers({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0  # unreadable ms: next header
    assert pause_from_headers({"retry-after": "inf"}) == 0.0 and pause_from_headers({"retry-after": "-5"}) == 0.0


async def test_retry_after_http_date_is_honoured_at_the_server(server):
    when = email.utils.formatdate(time.time() + 2.0, usegmt=True)  # one-second resolution: 1-2 s from now
    server.script([{"kind": "429", "retry_after": when}])
    r = Runner(adapter(server), concurrency=1, backoff_initial=0.001, backoff_max=0.001)
    t = time.monotonic()
    await r.run(batch(1))
    waited = time.monotonic() - t
    assert server.stats()["requests"] == 2 and r.stats.retries == 1
    assert waited >= 0.9, f"the HTTP-date Retry-After was ignored (retried after {waited:.2f} s)"


# ---- 1: an answer the scorer cannot score never enters the cache ------------------------------------------
def value_function(server, cache, concurrency=2, **kw):
    from providers.prompt import MaskedPrompt
    from providers.value_function import LLMValueFunction

    a = adapter(server)
    prompt = MaskedPrompt.from_text("the pasta was great but the waiter was slow",
                                    template="Review: {content}\nPositive? Answer True or False.\nAnswer:")
    runner = Runner(a, cache=str(cache), concurrency=concurrency, backoff_initial=0.001, backoff_max=0.01, **kw)
    return LLMValueFunction(prompt, a, LabelMargin(), runner, progress=False)


MASKS = [[bool((i >> j) & 1) for j in range(9)] for i in range(1, 17)]


@pytest.mark.parametrize("kind", ["nanlogprob", "emptylogprobs", "nulllogprobs", "notop"])
async def test_an_unusable_answer_is_asked_once_more_and_never_cached(server, tmp_path, kind):
    import numpy as np

    server.fail_first([kind])  # every distinct request first gets an unusable (but billed) 200
    vf = value_function(server, tmp_path)
    scores = await vf(MASKS)
    assert np.isfinite(scores).all()
    st = server.stats()
    assert st["faults_served"][kind] == 16 and st["paid_total"] == 16 * 2  # every mask asked twice, paid twice
    cache = vf.runner.cache
    for q in [vf.scorer.request(m) for m in vf.prompt.render_many(np.array(MASKS))]:
        hit = cache.get(cache_key(vf.adapter.cache_material(q)))
        vf.adapter.check_answer(q, hit)  # only usable answers were cached
    again = value_function(server, tmp_path)
    assert np.array_equal(await again(MASKS), scores) and server.stats()["requests"] == st["requests"]


async def test_a_server_that_keeps_answering_unusably_stops_the_run_before_spending_more(server, tmp_path):
    server.fail_first(["nanlogprob"] * 10)
    vf = value_function(server, tmp_path, concurrency=2)
    with pytest.raises(UnusableAnswerError, match="not finite"):
        await vf(MASKS)
    st = server.stats()
    # each of the two workers asks its first mask twice, then the run stops: the other 14 masks are never sent
    assert 2 <= st["paid_total"] <= 2 * 2 and st["requests"] == st["paid_total"] and len(vf.runner.cache) == 0
    assert vf.runner.stats.spend == 0.0  # free server; the dollar charge of an unusable answer is tested below


async def test_unusable_answers_are_charged_and_count_against_max_cost(server, tmp_path):
    prices = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6)}})  # $1 per output token
    server.fail_first(["nanlogprob"] * 10)
    r = Runner(adapter(server), cache=str(tmp_path), concurrency=1, max_cost=100.0, prices=prices)
    with pytest.raises(UnusableAnswerError):
        await r.run(batch(5), validate=r.adapter.check_answer)
    st = server.stats()
    assert st["paid_total"] == 2 and r.stats.spend == pytest.approx(3.0 * 2) and len(r.cache) == 0


async def test_a_cached_unusable_answer_is_asked_again(server, tmp_path):
    """Caches written before answers were checked may hold unusable answers: a hit that fails the check is a miss."""
    server.fail_first(["nanlogprob"])
    r = Runner(adapter(server), cache=str(tmp_path), concurrency=1)
    poisoned = await r.run(batch(3), validate=lambda req, c: None)  # no check: NaN answers cached, as before the fix
    assert len(r.cache) == 3 and any(t.logprob != t.logprob for t in poisoned[0].logprobs[0])
    r2 = Runner(adapter(server), cache=str(tmp_path), concurrency=1)
    fresh = await r2.run(batch(3))  # the adapter's check by default
    assert server.stats()["requests"] == 6 and all(c.logprobs[0][0].logprob == c.logprobs[0][0].logprob for c in fresh)
    await Runner(adapter(server), cache=str(tmp_path)).run(batch(3))
    assert server.stats()["requests"] == 6  # overwritten: the third run is free


# ---- 2: a corrupt cache entry is a logged miss naming the entry -------------------------------------------
async def test_a_corrupt_cache_entry_is_a_logged_miss_and_is_overwritten(server, tmp_path, caplog):
    r = Runner(adapter(server), cache=str(tmp_path), concurrency=2)
    reference = await r.run(batch(6))
    keys = [cache_key(r.adapter.cache_material(q)) for q in batch(6)]
    r.cache._cache.set(keys[1], '{"texts": ["Tr')  # truncated
    r.cache._cache.set(keys[4], json.dumps({"texts": "x", "logprobs": [[{"token": 1}]]}))  # not an answer
    r.cache.close()
    with caplog.at_level(logging.WARNING, logger="providers.cache"):
        r2 = Runner(adapter(server), cache=str(tmp_path), concurrency=2)
        assert await r2.run(batch(6)) == reference
    assert server.stats()["requests"] == 6 + 2  # only the two corrupt entries were asked again
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert keys[1] in logged and keys[4] in logged and str(tmp_path) in logged
    await Runner(adapter(server), cache=str(tmp_path)).run(batch(6))
    assert server.stats()["requests"] == 8  # overwritten with the new answers


async def test_a_truncated_value_file_is_a_miss_naming_the_file(server, tmp_path, caplog):
    """Answers above diskcache's 32 kB inline limit live in their own files; a truncated one is a miss too."""
    long = [Request(messages=(Message("user", "x " * 20000 + str(i)),), top_logprobs=5, max_tokens=3) for i in range(2)]
    r = Runner(adapter(server), cache=str(tmp_path))
    await r.run(long)
    key = cache_key(r.adapter.cache_material(long[0]))
    ((name,),) = r.cache._cache._sql("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchall()
    if name is None:  # answers are short: make the entry file-backed the way diskcache does for big values
        r.cache._cache.set(key, json.dumps({**r.cache.get(key).to_dict(), "pad": "p" * 40000}))
        ((name,),) = r.cache._cache._sql("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchall()
    path = os.path.join(str(tmp_path), name)
    with open(path, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="providers.cache"):
        await Runner(adapter(server), cache=str(tmp_path)).run(long)
    assert server.stats()["requests"] == 3
    assert path in " ".join(rec.getMessage() for rec in caplog.records)


# ---- 7: cache identity includes the endpoint ----------------------------------------------------------------
def test_endpoint_identity_is_scheme_host_port_path_without_credentials():
    from providers.adapters.base import endpoint_identity

    assert endpoint_identity("http://user:pw@Example.COM/v1/") == "http://example.com:80/v1"
    assert endpoint_identity("https://example.com:443/v1?key=sk-abc#x") == "https://example.com:443/v1"
    assert endpoint_identity("http://127.0.0.1:8080/v1") != endpoint_identity("http://127.0.0.1:8081/v1")
    assert endpoint_identity("http://[::1]:9/v1") == "http://[::1]:9/v1"


async def test_two_servers_with_the_same_model_name_do_not_share_answers(server, tmp_path):
    with FakeServer() as other:
        first = await Runner(adapter(server), cache=str(tmp_path)).run(batch(4))
        second = await Runner(adapter(other), cache=str(tmp_path)).run(batch(4))
        assert server.stats()["requests"] == 4 and other.stats()["requests"] == 4  # B was asked, not served A's
        assert first == second  # (the fake servers answer alike; what matters is who was asked)
        await Runner(adapter(other), cache=str(tmp_path)).run(batch(4))
        assert other.stats()["requests"] == 4  # and each keeps its own cache


# ---- 14: per-loop SDK clients are closed when their loop ends -----------------------------------------------
def _sockets() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets through /proc")
def test_a_runner_reused_across_asyncio_runs_leaves_no_sockets_open(server):
    r = Runner(adapter(server), concurrency=4)
    before = _sockets()
    for i in range(20):
        asyncio.run(r.run(batch(4, word=f"Run {i}")))
    import gc

    gc.collect()
    assert _sockets() - before <= 1 and len(r.adapter._clients) == 0
    assert server.stats()["requests"] == 80


# ---- 15: a hung server stops within the caller's timeout ---------------------------------------------------
async def test_a_hung_server_stops_within_the_timeout_with_a_clear_error(server):
    from providers.errors import RequestTimeoutError

    server.fail_first([{"kind": "timeout", "hold": 10}] * 10)
    r = Runner(adapter(server, timeout=0.6), concurrency=2, timeout=1.5, backoff_initial=0.01, backoff_max=0.05)
    t = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"within timeout=1.5 s") as info:
        await r.run(batch(6))
    elapsed = time.monotonic() - t
    assert elapsed < 1.5 + 1.0, elapsed
    assert isinstance(info.value, TransportError) and "raise timeout" in str(info.value)
    assert server.stats()["requests"] <= 2 * 3  # two workers, at most three attempts each fit in 1.5 s


# ---- 4 (runner side): callers of one runner are charged what they paid; shared calls count once ------------
async def test_ledgers_count_a_shared_call_once(server):
    from providers.runner import Ledger

    prices = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6)}})
    server.state.control({"latency": 0.05})
    r = Runner(adapter(server), concurrency=8, prices=prices)
    a, b = Ledger(), Ledger()
    await asyncio.gather(r.run(batch(4), ledger=a), r.run(batch(4), ledger=b))  # the same four questions at once
    st = server.stats()
    assert st["paid_total"] == 4 and r.stats.spend == pytest.approx(12.0)
    assert a.paid + b.paid == pytest.approx(r.stats.spend) and a.sent + b.sent == 4 and a.shared + b.shared == 4
