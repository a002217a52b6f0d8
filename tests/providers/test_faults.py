"""Fault injection against a real misbehaving local server: every run completes with the same answers, no
query is paid twice, fatal errors are not retried, caps hold under concurrency and retries, and a process
killed with SIGKILL mid-run resumes paying only for what is missing. Counts are taken at the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeserver import FakeServer, body_hash

from providers.adapters import make_adapter
from providers.cache import ResponseCache, cache_key
from providers.cost import Price, PriceTable
from providers.errors import (
    AuthenticationError,
    CapExceededError,
    InvalidRequestError,
    PermissionDeniedError,
    QuotaExceededError,
)
from providers.runner import Runner
from providers.types import Message, Request

SECRET = "sk-test-faults-SECRET-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    with FakeServer(timeout_hold=1.2) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server):
    server.state.control({"reset": True, "latency": 0.0})


def adapter(server, provider="openai", **kw):
    url = server.url if provider == "anthropic" else server.url + "/v1"
    return make_adapter(provider, "claude-3-5-haiku-latest" if provider == "anthropic" else "gpt-4o-mini",
                        base_url=url, api_key=SECRET, timeout=1.0, **kw)


def batch(n, provider="openai", max_tokens=3):
    lp = None if provider == "anthropic" else 5
    return [Request(messages=(Message("user", f"Question number {i}: true or false?"),), top_logprobs=lp,
                    max_tokens=max_tokens) for i in range(n)]


def key_in_files(directory: Path, secret: str) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


async def clean_answers(provider="openai", n=12):
    with FakeServer() as other:
        return await Runner(adapter(other, provider)).run(batch(n, provider))


@pytest.mark.parametrize("provider,fault", [
    ("openai", {"kind": "429", "retry_after": 0.05}), ("openai", {"kind": "429ms", "ms": 50}), ("openai", "500"),
    ("openai", "503"), ("openai", "malformed"), ("openai", "reset"), ("openai", {"kind": "timeout", "hold": 1.2}),
    ("anthropic", "529"), ("anthropic", "500"), ("anthropic", {"kind": "429", "retry_after": 0.05}),
])
async def test_transient_faults_are_retried_to_the_same_answers(server, tmp_path, provider, fault):
    server.fail_first([fault, fault])  # every distinct request fails twice before it is answered
    r = Runner(adapter(server, provider), cache=str(tmp_path), concurrency=4, backoff_initial=0.01, backoff_max=0.05)
    out = await r.run(batch(12, provider))
    assert out == await clean_answers(provider)
    st = server.stats()
    assert len(st["paid"]) == 12 and set(st["paid"].values()) == {1}  # each distinct request paid once
    assert r.stats.retries == 24 and r.stats.api_calls == 36 == st["requests"]
    assert key_in_files(tmp_path, SECRET) == []


async def test_retry_after_is_honoured(server):
    server.script([{"kind": "429", "retry_after": 0.5}])
    r = Runner(adapter(server), concurrency=1, backoff_initial=0.001, backoff_max=0.001)
    t = time.monotonic()
    await r.run(batch(2))
    assert time.monotonic() - t >= 0.5
    assert r.stats.retries == 1


@pytest.mark.parametrize("kind,error", [("401", AuthenticationError), ("403", PermissionDeniedError),
                                        ("400", InvalidRequestError), ("quota", QuotaExceededError)])
async def test_fatal_errors_are_not_retried_and_stop_the_run(server, kind, error):
    server.state.control({"latency": 0.05})
    server.script([kind])
    r = Runner(adapter(server), concurrency=2, backoff_initial=0.01)
    with pytest.raises(error):
        await r.run(batch(20))
    assert r.stats.retries == 0 and set(server.state.seen.values()) == {1}  # nothing was sent twice
    # besides the failing call only calls started before its error arrived were sent: none after it
    assert server.stats()["requests"] <= 2 * 2


async def test_retries_exhausted_surface_the_error(server):
    server.fail_first(["500"] * 10)
    r = Runner(adapter(server), concurrency=1, max_attempts=3, backoff_initial=0.001, backoff_max=0.001)
    with pytest.raises(Exception, match="500"):
        await r.run(batch(5))
    # no request got more than three attempts, and the run stopped once the first one ran out
    assert max(server.state.seen.values()) == 3 and server.stats()["requests"] < 5 * 3


async def test_max_queries_never_exceeded_with_concurrency_and_retries(server):
    server.state.control({"latency": 0.02})
    server.fail_first(["500"])
    r = Runner(adapter(server), concurrency=8, max_queries=15, backoff_initial=0.001, backoff_max=0.01)
    with pytest.raises(CapExceededError):
        await r.run(batch(20))
    assert server.stats()["requests"] <= 15 and r.stats.api_calls <= 15


async def test_max_cost_never_exceeded_with_concurrency_and_retries(server, tmp_path):
    # $1 per output token, input free: every answer costs exactly $3 (3 tokens), the worst case is $5
    prices = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6)}})
    server.state.control({"latency": 0.02})
    server.script([{"kind": "timeout", "hold": 1.2}] * 3)  # a timeout may have been billed: charged worst case
    server.fail_first(["500"])
    r = Runner(adapter(server), cache=str(tmp_path), concurrency=8, max_cost=40.0, prices=prices,
               backoff_initial=0.001, backoff_max=0.01)
    with pytest.raises(CapExceededError, match="max_cost"):
        await r.run(batch(20, max_tokens=5))
    st = server.stats()
    server_side = 3 * st["paid_total"] + 5 * st["faults_served"].get("timeout", 0)
    assert server_side <= 40.0 and r.stats.spend <= 40.0
    assert r.stats.spend == pytest.approx(server_side)
    assert st["faults_served"]["timeout"] == 3 and st["paid_total"] >= 4 and len(r.cache) == st["paid_total"]  # every paid answer reached the cache
    # raising the cap resumes from the cache: nothing already paid is paid again
    r2 = Runner(adapter(server), cache=str(tmp_path), concurrency=8, max_cost=1000.0, prices=prices)
    await r2.run(batch(20, max_tokens=5))
    assert set(server.stats()["paid"].values()) == {1} and len(server.stats()["paid"]) == 20


async def test_max_cost_at_real_prices_refuses_and_never_hangs(server):
    """Fractional dollar amounts (gpt-4o-mini's real prices) must not leave a phantom reservation that keeps a
    task waiting for room forever: every run ends, completed or refused, within the cap."""
    import random

    server.state.control({"latency": 0.005})
    for seed in range(12):
        rnd = random.Random(seed)
        a = make_adapter("openai", "gpt-4o-mini", api_key=SECRET)
        a.base_url = server.url + "/v1"  # real OpenAI prices, served by the fake server
        reqs = [Request((Message("user", f"s{seed} q{i} " + "word " * rnd.randint(1, 400)),),
                        max_tokens=rnd.randint(1, 64), top_logprobs=5) for i in range(40)]
        r = Runner(a, concurrency=8, max_cost=rnd.uniform(2e-4, 2e-3))
        try:
            await asyncio.wait_for(r.run(reqs), 20)
        except CapExceededError:
            pass
        assert r.stats.spend <= r.max_cost and r._open_reservations == 0


async def test_calls_never_sent_do_not_use_up_max_queries(server):
    """After a fatal error stops a batch, the calls it never sent are not counted: the cap counts calls sent."""
    server.state.control({"latency": 0.05})
    server.script(["400"])
    r = Runner(adapter(server), concurrency=2, max_queries=10)
    with pytest.raises(InvalidRequestError):
        await r.run(batch(8))
    sent = server.stats()["requests"]
    assert r.stats.api_calls == sent and r.queries_left == 10 - sent
    await r.run(batch(10 - sent, max_tokens=4))  # exactly what is left fits
    assert server.stats()["requests"] == 10 and r.queries_left == 0


WORKER = """
import asyncio, json, sys
from providers.adapters import make_adapter
from providers.runner import Runner
from providers.types import Message, Request
url, cache, out, key = sys.argv[1:5]
if len(sys.argv) > 5:  # start barrier: say "ready", wait for "go"
    import os, pathlib, time
    pathlib.Path(sys.argv[5], f"ready{os.getpid()}").touch()
    while not pathlib.Path(sys.argv[5], "go").exists():
        time.sleep(0.01)
a = make_adapter("openai", "gpt-4o-mini", base_url=url + "/v1", api_key=key)
r = Runner(a, cache=cache, concurrency=4, backoff_initial=0.01, backoff_max=0.05)
reqs = [Request(messages=(Message("user", f"Question number {i}: true or false?"),), top_logprobs=5, max_tokens=3)
        for i in range(60)]
done = asyncio.run(r.run(reqs))
lp = [dict(c.logprobs[0][0].top) for c in done]
with open(out, "w") as f:
    json.dump({"scores": [d["True"] - d["False"] for d in lp], "api_calls": r.stats.api_calls,
               "cache_hits": r.stats.cache_hits}, f)
"""


@pytest.mark.slow
def test_killed_mid_run_resumes_paying_only_for_what_is_missing(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def worker(url: str, cache: Path, out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), url, str(cache), str(out), SECRET], env=env, cwd=ROOT)

    with FakeServer() as ref_server:  # an uninterrupted run for the reference scores
        p = worker(ref_server.url, tmp_path / "ref-cache", tmp_path / "ref.json")
        assert p.wait(120) == 0
    reference = json.loads((tmp_path / "ref.json").read_text())["scores"]

    with FakeServer(latency=0.1) as s:
        s.fail_first(["500"])  # retries in flight too
        cache = tmp_path / "cache"
        p = worker(s.url, cache, tmp_path / "killed.json")
        deadline = time.monotonic() + 120
        while s.stats()["paid_total"] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        assert not (tmp_path / "killed.json").exists()
        time.sleep(0.3)  # let the server finish requests that were in flight at the kill
        paid_at_kill = set(s.stats()["paid"])
        assert 20 <= len(paid_at_kill) < 60

        # which answers reached the cache before the kill (keys computed the runner's way)
        a = make_adapter("openai", "gpt-4o-mini", base_url=s.url + "/v1", api_key=SECRET)
        reqs = [Request(messages=(Message("user", f"Question number {i}: true or false?"),), top_logprobs=5,
                        max_tokens=3) for i in range(60)]
        on_disk = ResponseCache(cache)
        cached = {body_hash(a.body(q)) for q in reqs if cache_key(a.cache_material(q)) in on_disk}
        on_disk.close()
        assert cached <= paid_at_kill
        lost_in_flight = paid_at_kill - cached  # answered by the server, process killed before caching

        p = worker(s.url, cache, tmp_path / "rerun.json")
        assert p.wait(120) == 0
        rerun = json.loads((tmp_path / "rerun.json").read_text())
        st = s.stats()

    assert rerun["scores"] == reference
    assert len(st["paid"]) == 60
    paid_twice = {h for h, n in st["paid"].items() if n > 1}
    assert max(st["paid"].values()) <= 2
    # every answer that reached the cache was never paid again; only calls caught in flight by the kill
    # (at most the concurrency, 4) were paid a second time
    assert paid_twice == lost_in_flight and len(lost_in_flight) <= 4
    assert st["abandoned"] <= 4
    assert rerun["cache_hits"] == len(cached) and rerun["api_calls"] >= 60 - len(cached)
    assert key_in_files(cache, SECRET) == []


@pytest.mark.slow
def test_two_processes_sharing_a_cache_pay_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with FakeServer(latency=0.05) as s:
        procs = [subprocess.Popen([sys.executable, str(script), s.url, str(tmp_path / "cache"),
                                   str(tmp_path / f"out{i}.json"), SECRET, str(barrier)], env=env, cwd=ROOT)
                 for i in range(2)]
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("ready*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        (barrier / "go").touch()  # both processes start sending the same 60 questions at the same moment
        assert [p.wait(120) for p in procs] == [0, 0]
        st = s.stats()
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert outs[0]["scores"] == outs[1]["scores"]
    assert len(st["paid"]) == 60 and set(st["paid"].values()) == {1}  # each question paid once in total
    assert outs[0]["api_calls"] + outs[1]["api_calls"] == 60
    assert outs[0]["cache_hits"] + outs[1]["cache_hits"] == 60
