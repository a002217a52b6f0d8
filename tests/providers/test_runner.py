"""Runner against the real local fake server: cache first, de-duplication, limits, pauses, loops, stats."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from fakeserver import FakeServer

from providers.adapters import make_adapter
from providers.errors import ConfigurationError
from providers.runner import Runner, pause_from_headers
from providers.types import Message, Request

SECRET = "sk-test-runner-SECRET-0123456789"


@pytest.fixture(scope="module")
def server():
    with FakeServer() as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server):
    server.state.control({"reset": True, "latency": 0.0, "ratelimit_headers": {}})


def compat(server, **kw):
    return make_adapter("compatible", "m", base_url=server.url + "/v1", **kw)


def reqs(n, prefix="q", **kw):
    return [Request(messages=(Message("user", f"{prefix} {i}"),), top_logprobs=5, max_tokens=2, **kw)
            for i in range(n)]


async def test_cache_first_then_no_calls(server, tmp_path):
    r = Runner(compat(server), cache=str(tmp_path), concurrency=4)
    first = await r.run(reqs(12))
    assert r.stats.api_calls == 12 and r.stats.cache_hits == 0
    r2 = Runner(compat(server), cache=str(tmp_path))  # a new runner (new process in practice) on the same dir
    again = await r2.run(reqs(12))
    assert again == first
    assert r2.stats.api_calls == 0 and r2.stats.cache_hits == 12
    assert server.stats()["requests"] == 12


async def test_answers_from_the_cache_never_load_the_sdk(server, tmp_path):
    # a cached rerun (or a Ray gateway serving cached answers) starts without the openai SDK's ~0.8 s import
    await Runner(compat(server), cache=str(tmp_path)).run(reqs(3))
    code = (
        "import asyncio, sys\n"
        "from providers.adapters import make_adapter\n"
        "from providers.runner import Runner\n"
        "from providers.types import Message, Request\n"
        f"r = Runner(make_adapter('compatible', 'm', base_url={server.url + '/v1'!r}), cache={str(tmp_path)!r})\n"
        "qs = [Request(messages=(Message('user', f'q {i}'),), top_logprobs=5, max_tokens=2) for i in range(3)]\n"
        "asyncio.run(r.run(qs))\n"
        "assert r.stats.cache_hits == 3 and r.stats.api_calls == 0, r.stats\n"
        "assert 'openai' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert server.stats()["requests"] == 3


async def test_identical_requests_in_one_batch_are_sent_once(server):
    r = Runner(compat(server), concurrency=8)
    out = await r.run(reqs(3) * 4)
    assert server.stats()["requests"] == 3 and r.stats.api_calls == 3
    assert out[:3] == out[3:6] == out[9:12]


async def test_a_large_batch_runs_on_a_few_tasks(server, tmp_path):
    # one task per request would park thousands of tasks on the slots (and in the oldest GC generation)
    server.state.control({"latency": 0.02})
    r = Runner(compat(server), cache=str(tmp_path), concurrency=4)
    tasks: list[int] = []

    def runner_tasks(stats) -> None:  # the runner's own tasks only: other tests' SDK clients may close meanwhile
        tasks.append(sum(t.get_coro().__qualname__.startswith("Runner.") for t in asyncio.all_tasks()))

    r.on_progress = runner_tasks
    await r.run(reqs(80))
    assert len(tasks) == 80 and max(tasks) <= 4  # the workers
    tasks.clear()
    await r.run(reqs(80) + reqs(5, "new"))  # answers in the cache come back in one pass, before any task starts
    assert tasks[:80] == [0] * 80 and r.stats.cache_hits == 80


async def test_concurrency_limit_is_respected(server):
    server.state.control({"latency": 0.2})
    r = Runner(compat(server), concurrency=3)
    await r.run(reqs(15))
    assert server.stats()["max_concurrent"] == 3


async def test_requests_per_minute_limit(server):
    r = Runner(compat(server), concurrency=16, rpm=1200)  # 20 per second, evenly spaced
    t = time.monotonic()
    await r.run(reqs(21))
    elapsed = time.monotonic() - t
    assert elapsed >= 20 / 20 * 0.95
    assert r.stats.api_calls / elapsed <= 1200 / 60 * 1.1


async def test_a_slow_first_client_build_does_not_bunch_calls(server, monkeypatch):
    # the SDK client (and the SDK's import, ~0.8 s) is built before a rate-limit slot is taken: a stall between
    # slot and send would let the next call through at once, two calls closer than the limit allows
    adapter = compat(server)
    build = adapter._make_client

    def slow(api_key):
        time.sleep(0.5)  # blocks the loop as an import does
        return build(api_key)

    monkeypatch.setattr(adapter, "_make_client", slow)
    r = Runner(adapter, concurrency=8, rpm=600)  # one call per 0.1 s
    await r.run(reqs(6))
    arrivals = sorted(server.state.arrivals)
    assert len(arrivals) == 6
    assert min(b - a for a, b in zip(arrivals, arrivals[1:])) >= 0.1 * 0.8


async def test_tokens_per_minute_limit(server):
    r = Runner(compat(server), concurrency=16, tpm=6000)  # bucket of 1000 tokens, refills 100/s
    one = r.adapter.estimate_input_tokens(reqs(1)[0]) + 2
    n = 1000 // one + 10  # ten requests more than the bucket holds
    t = time.monotonic()
    await r.run(reqs(n))
    assert time.monotonic() - t >= 10 * one / 100 * 0.8


async def test_exhausted_ratelimit_headers_pause_the_runner(server):
    server.state.control({"ratelimit_headers": {"x-ratelimit-remaining-requests": "0",
                                                "x-ratelimit-reset-requests": "300ms"}})
    r = Runner(compat(server), concurrency=1)
    t = time.monotonic()
    await r.run(reqs(3))
    assert time.monotonic() - t >= 0.6 * 0.95  # waited after the first and second answers


def test_pause_from_headers_formats():
    assert pause_from_headers({"retry-after-ms": "250"}) == 0.25
    assert pause_from_headers({"Retry-After": "2"}) == 2.0
    assert pause_from_headers({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0.5s"}) == 360.5
    assert pause_from_headers({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "6m"}) == 0.0
    assert pause_from_headers({"anthropic-ratelimit-requests-remaining": "0",
                               "anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z"}) == 0.0
    from datetime import datetime, timedelta, timezone

    soon = (datetime.now(timezone.utc) + timedelta(seconds=30)).isoformat()
    w = pause_from_headers({"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": soon})
    assert 28 < w <= 30
    assert pause_from_headers({}) == 0.0


def test_runner_survives_several_event_loops(server, tmp_path):
    """The engine's Oracle calls async value functions through asyncio.run, a new loop per batch."""
    r = Runner(compat(server), cache=str(tmp_path), concurrency=2, rpm=6000)
    a = asyncio.run(r.run(reqs(4)))
    b = asyncio.run(r.run(reqs(4, prefix="other")))
    c = asyncio.run(r.run(reqs(4)))
    assert a == c and a != b
    assert r.stats.api_calls == 8 and r.stats.cache_hits == 4


async def test_samples_without_multi_sample_are_separate_cached_calls(server, tmp_path):
    a = make_adapter("anthropic", "claude-3-5-haiku-latest", base_url=server.url)
    r = Runner(a, cache=str(tmp_path))
    req = Request(messages=(Message("user", "pick"),), temperature=1.0, samples=4)
    c = await r.run([req])
    assert len(c[0].texts) == 4 and r.stats.api_calls == 4
    assert len(r.cache) == 4  # one cache entry per sample, although the bodies are identical
    c2 = await Runner(a, cache=str(tmp_path)).run([req])
    assert c2 == c and server.stats()["requests"] == 4


async def test_stats_track_tokens_spend_and_rate(server):
    a = make_adapter("openai", "gpt-4o-mini", api_key=SECRET)
    a.base_url = server.url + "/v1"
    r = Runner(a)
    out = await r.run(reqs(5))
    s = r.stats.as_dict()
    assert s["api_calls"] == 5 and s["retries"] == 0
    assert s["input_tokens"] == sum(c.usage.input_tokens for c in out)
    assert s["tokens"] == s["input_tokens"] + s["output_tokens"]
    assert s["spend"] == pytest.approx(sum(r.price.cost(c.usage) for c in out))
    assert s["rate"] > 0


def test_bad_settings_rejected():
    a = make_adapter("compatible", "m", base_url="http://127.0.0.1:9/v1")
    for kw in ({"concurrency": 0}, {"rpm": 0}, {"tpm": -5}, {"max_cost": -1}, {"max_queries": -1}, {"max_attempts": 0}):
        with pytest.raises(ConfigurationError):
            Runner(a, **kw)
    with pytest.raises(ConfigurationError, match="no price"):
        Runner(make_adapter("openai", "gpt-4o-mini", api_key=SECRET), prices=__import__("providers.cost").cost.PriceTable(builtin=False))


def test_two_runners_of_one_process_sharing_a_cache_pay_once(server, tmp_path):
    """Runners on two threads (two event loops) of the same process claim calls from each other too."""
    import threading

    server.state.control({"latency": 0.1})
    batch = reqs(12, "twins")
    results = {}

    def work(name: str) -> None:
        r = Runner(compat(server), cache=str(tmp_path), concurrency=4)
        results[name] = (asyncio.run(r.run(batch)), r.stats)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(server.stats()["paid"].values()) == {1} and len(server.stats()["paid"]) == 12
    assert results["a"][1].api_calls + results["b"][1].api_calls == 12
    assert [c.text for c in results["a"][0]] == [c.text for c in results["b"][0]]
