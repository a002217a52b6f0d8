"""Providers runtime benchmark: rate-limit utilisation, client CPU per query, and a cached rerun.

The fake OpenAI-compatible server (tests/providers/fakeserver.py) runs in its own process with an injected
latency, so the CPU time measured here (getrusage of this process: user and system, microsecond resolution) is
the client's alone: the official SDK, httpx2, the runner (limiters, retries, cache writes) and JSON parsing. With
two or more cores the client and the server are pinned to different cores, so neither steals the other's.
Printed next to peers measured in the same run: the rate limit itself, and the same requests sent with the
official SDK alone and with bare httpx2 (no SDK, no runner, no cache).

    python benchmarks/providers.py [--latency 0.2] [--rpm 600] [--n 300] [--concurrency 16]

Targets (issue 3): achieved rate >= 0.95 of the limit, SDK overhead <= 1 ms CPU per query, cached rerun
0 API calls. The overhead is what spex-api adds to the HTTP calls themselves: the client CPU per query of the
full stack at the limit minus that of the peer, the same calls made with the official SDK alone (its leanest
call, `client.post` + `json.loads`), paced at the same rate by a plain sleep loop, in the same run. CPU per query
of a mostly idle process varies by a few tenths of a millisecond from run to run, so the two are measured in
--rounds alternating pairs on fresh prompts and the median difference is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from providers.adapters import make_adapter  # noqa: E402
from providers.adapters.base import encode_body  # noqa: E402
from providers.cache import ResponseCache  # noqa: E402
from providers.runner import Runner  # noqa: E402
from providers.types import Message, Request  # noqa: E402


def requests(n: int, tag: str) -> list[Request]:
    return [Request(messages=(Message("system", "Answer True or False."),
                              Message("user", f"[{tag}] Statement {i}: the review above is positive.")),
                    max_tokens=1, top_logprobs=5) for i in range(n)]


def server_stats(url: str) -> dict:
    return httpx2.get(url + "/_stats").json()


def reset(url: str) -> None:
    httpx2.post(url + "/_control", json={"reset": True})


def cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far (system includes loopback TCP work)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def pin(server_pid: int) -> bool:
    """Server on one core, this client on another (when there are two or more), so neither steals the other's."""
    if not hasattr(os, "sched_setaffinity") or len(cores := sorted(os.sched_getaffinity(0))) < 2:
        return False
    os.sched_setaffinity(server_pid, {cores[1]})
    os.sched_setaffinity(0, {cores[0]})
    return True


async def timed_run(runner: Runner, reqs: list[Request]) -> tuple[float, float, float]:
    """(wall seconds, user CPU s/query, system CPU s/query) of runner.run(reqs)."""
    w0, (u0, s0) = time.perf_counter(), cpu()
    await runner.run(reqs)
    (u1, s1) = cpu()
    return time.perf_counter() - w0, (u1 - u0) / len(reqs), (s1 - s0) / len(reqs)


async def paced_sdk_run(adapter, reqs: list[Request], rpm: float) -> tuple[float, float, float]:
    """Peer: the same calls through the official SDK alone, started one every 60/rpm s by a sleep loop."""
    client, loop = adapter.client(), asyncio.get_running_loop()

    async def one(r: Request) -> dict:
        raw = await client.post(adapter.endpoint(r), cast_to=httpx2.Response, content=encode_body(adapter.body(r)))
        return json.loads(raw.content)

    w0, (u0, s0) = time.perf_counter(), cpu()
    t0, tasks = loop.time(), []
    for i, r in enumerate(reqs):
        if (delay := t0 + i * 60.0 / rpm - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(r)))
    await asyncio.gather(*tasks)
    (u1, s1) = cpu()
    return time.perf_counter() - w0, (u1 - u0) / len(reqs), (s1 - s0) / len(reqs)


async def per_query_cpu(n: int, run) -> tuple[float, float]:
    u0, s0 = cpu()
    await run()
    u1, s1 = cpu()
    return (u1 - u0) / n, (s1 - s0) / n


async def attribution(url: str, adapter, n: int, concurrency: int) -> list[tuple[str, float, float]]:
    """Client CPU per query without the rate limit, layer by layer, on fresh prompts each time."""
    sem = asyncio.Semaphore(concurrency)
    rows = []
    async with httpx2.AsyncClient(timeout=60) as client:
        async def bare(r: Request) -> dict:
            async with sem:
                return json.loads((await client.post(url + "/v1/chat/completions", json=adapter.body(r))).content)

        await asyncio.gather(*(bare(r) for r in requests(20, "bare-warm")))
        rows.append(("peer: bare httpx2 POST + json.loads",
                     *await per_query_cpu(n, lambda: asyncio.gather(*(bare(r) for r in requests(n, "bare"))))))

    async def sdk(r: Request):
        async with sem:
            return await adapter.exchange(r)

    rows.append(("official SDK (adapter.exchange)",
                 *await per_query_cpu(n, lambda: asyncio.gather(*(sdk(r) for r in requests(n, "sdk"))))))
    rows.append(("SDK + runner, no cache", *await per_query_cpu(
        n, lambda: Runner(adapter, concurrency=concurrency).run(requests(n, "runner")))))
    cache = ResponseCache(tempfile.mkdtemp(prefix="spex-bench-cache-"))
    rows.append(("SDK + runner + disk cache", *await per_query_cpu(
        n, lambda: Runner(adapter, cache=cache, concurrency=concurrency).run(requests(n, "cached")))))
    try:  # the SDK's documented alternative transport, injected through http_client
        import aiohttp  # noqa: F401
        import openai
    except ImportError:
        rows.append(("same, aiohttp transport: aiohttp not installed", float("nan"), float("nan")))
        return rows
    http = openai.DefaultAioHttpClient()
    fast = make_adapter("compatible", adapter.model, base_url=adapter.base_url, http_client=http)
    await Runner(fast, concurrency=concurrency).run(requests(20, "aio-warm"))
    rows.append(("same, aiohttp transport (injected client)", *await per_query_cpu(
        n, lambda: Runner(fast, cache=cache, concurrency=concurrency).run(requests(n, "aio")))))
    await http.aclose()
    return rows


async def main(args: argparse.Namespace) -> None:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/providers/fakeserver.py"), "--latency",
                             str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        pinned = pin(proc.pid)
        adapter = make_adapter("compatible", "fake-model", base_url=url + "/v1")
        cache_dir = tempfile.mkdtemp(prefix="spex-bench-cache-")
        print(f"fake server: {url} (own process), latency {args.latency * 1000:.0f} ms; limit {args.rpm:.0f} "
              f"requests/min; {args.n} requests, concurrency {args.concurrency}; cache {cache_dir}; cores "
              f"{'pinned apart' if pinned else 'not pinned'}")

        # warm-up on other prompts: SDK client, connection pool, imports
        await Runner(adapter, concurrency=args.concurrency).run(requests(20, "warm"))
        reset(url)

        reqs = requests(args.n, "bench")
        runner = Runner(adapter, cache=cache_dir, concurrency=args.concurrency, rpm=args.rpm)
        wall, user, system = await timed_run(runner, reqs)
        st = server_stats(url)
        limit = args.rpm / 60
        rate = runner.stats.api_calls / wall
        print(f"\n1) rate limit utilisation: {runner.stats.api_calls} calls in {wall:.2f} s = {rate:.3f} req/s; "
              f"limit {limit:.3f} req/s -> {rate / limit:.3f} of the limit (target >= 0.95); "
              f"server saw {st['requests']} requests, max {st['max_concurrent']} at once")
        per = max(1, args.n // args.rounds)
        print(f"2) SDK overhead per query at the limit, {args.rounds} rounds of {per} fresh queries each, spex-api "
              "(official SDK on httpx2 + runner + rate limiter + disk cache) against the peer (the same calls through "
              "the official SDK alone, paced at the same rate), alternating which goes first (client CPU ms/query, "
              "user + system):")
        diffs = []
        for k in range(args.rounds):
            async def ours() -> tuple[float, float, float]:
                r = Runner(adapter, cache=tempfile.mkdtemp(prefix="spex-bench-cache-"), concurrency=args.concurrency,
                           rpm=args.rpm)
                return await timed_run(r, requests(per, f"ours-{k}"))

            async def peer() -> tuple[float, float, float]:
                return await paced_sdk_run(adapter, requests(per, f"peer-{k}"), args.rpm)

            first, second = (ours, peer) if k % 2 == 0 else (peer, ours)
            a, b = await first(), await second()
            (ow, ou, osys), (pw, pu, psys) = (a, b) if k % 2 == 0 else (b, a)
            diffs.append((ou + osys) - (pu + psys))
            print(f"   round {k + 1}: spex-api {(ou + osys) * 1e3:.3f} (user {ou * 1e3:.3f} + system {osys * 1e3:.3f}; "
                  f"{per / ow / limit:.3f} of the limit) - peer {(pu + psys) * 1e3:.3f} (user {pu * 1e3:.3f} + system "
                  f"{psys * 1e3:.3f}; {per / pw / limit:.3f} of the limit) = {diffs[-1] * 1e3:+.3f}")
        print(f"   overhead: median {statistics.median(diffs) * 1e3:.3f} ms CPU per query (target <= 1 ms; rounds "
              f"range {min(diffs) * 1e3:+.3f} to {max(diffs) * 1e3:+.3f}); the full run of 1) took "
              f"{(user + system) * 1e3:.3f} ms per query (user {user * 1e3:.3f} + system {system * 1e3:.3f})")
        try:
            import aiohttp  # noqa: F401
            import openai

            http = openai.DefaultAioHttpClient()
            fast = make_adapter("compatible", adapter.model, base_url=adapter.base_url, http_client=http)
            await Runner(fast, concurrency=args.concurrency).run(requests(20, "aio-main-warm"))
            r2 = Runner(fast, cache=tempfile.mkdtemp(prefix="spex-bench-cache-"), concurrency=args.concurrency,
                        rpm=args.rpm)
            w2, u2, s2 = await timed_run(r2, requests(args.n, "bench-aio"))
            await http.aclose()
            print(f"   same run with the SDK's aiohttp transport injected as http_client: "
                  f"{(u2 + s2) * 1e3:.3f} ms = user {u2 * 1e3:.3f} + system {s2 * 1e3:.3f}; "
                  f"rate {r2.stats.api_calls / w2 / limit:.3f} of the limit")
        except ImportError:
            print("   (aiohttp not installed: the aiohttp-transport run is skipped)")
        print(f"   by layer, same server, no rate limit, {args.n_attr} fresh queries each (user + system ms/query):")
        for name, u, sy in await attribution(url, adapter, args.n_attr, args.concurrency):
            print(f"     {name:40s} {(u + sy) * 1e3:7.3f}  (user {u * 1e3:.3f}, system {sy * 1e3:.3f})")

        reset(url)
        rerun = Runner(adapter, cache=cache_dir, concurrency=args.concurrency, rpm=args.rpm)
        w0, c0 = time.perf_counter(), time.process_time()
        again = await rerun.run(reqs)
        rwall, rcpu = time.perf_counter() - w0, time.process_time() - c0
        assert len(again) == args.n
        print(f"3) cached rerun: {rerun.stats.api_calls} API calls (target 0), server saw "
              f"{server_stats(url)['requests']} requests, {rerun.stats.cache_hits} cache hits, wall {rwall:.3f} s "
              f"(CPU {rcpu / args.n * 1e3:.3f} ms/query) vs first run {wall:.2f} s")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rpm", type=float, default=600.0)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="alternating spex-api/peer pairs for the overhead")
    ap.add_argument("--n-attr", type=int, default=200, help="queries per layer in the CPU attribution")
    asyncio.run(main(ap.parse_args()))
