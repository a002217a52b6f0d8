"""Providers runtime benchmark: rate-limit utilisation, client CPU per query, and a cached rerun.

The fake OpenAI-compatible server (tests/providers/fakeserver.py) runs in its own process with an injected
latency, so the CPU time measured here (os.times of this process: user and system) is the client's alone: the official
SDK, httpx2, the runner (limiters, retries, cache writes) and JSON parsing. Printed next to peers measured in
the same run: the rate limit itself, and the same requests sent with bare httpx2 (no SDK, no runner, no cache).

    python benchmarks/providers.py [--latency 0.2] [--rpm 600] [--n 300] [--concurrency 16]

Targets (issue 3): achieved rate >= 0.95 of the limit, SDK overhead <= 1 ms CPU per query, cached rerun
0 API calls. The overhead is what spex-api adds to the HTTP calls themselves: the client CPU per query of the
full stack at the limit minus that of the peer, the same calls made with the official SDK alone (its leanest
call, `client.post` + `json.loads`), paced at the same rate by a plain sleep loop, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    t = os.times()
    return t.user, t.system


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
        adapter = make_adapter("compatible", "fake-model", base_url=url + "/v1")
        cache_dir = tempfile.mkdtemp(prefix="spex-bench-cache-")
        print(f"fake server: {url} (own process), latency {args.latency * 1000:.0f} ms; limit {args.rpm:.0f} "
              f"requests/min; {args.n} requests, concurrency {args.concurrency}; cache {cache_dir}")

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
        pw, pu, ps = await paced_sdk_run(adapter, requests(args.n, "bench-peer"), args.rpm)
        ours, peer = user + system, pu + ps
        print(f"2) SDK overhead per query at the limit: {(ours - peer) * 1e3:.3f} ms CPU (target <= 1 ms) = "
              f"{ours * 1e3:.3f} ms client CPU with spex-api (official SDK on httpx2 + runner + rate limiter + disk "
              f"cache; user {user * 1e3:.3f} + system {system * 1e3:.3f}) - {peer * 1e3:.3f} ms for the peer, the same "
              f"calls through the official SDK alone at the same pace (user {pu * 1e3:.3f} + system {ps * 1e3:.3f}; "
              f"{args.n / pw / limit:.3f} of the limit)")
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
    ap.add_argument("--n-attr", type=int, default=200, help="queries per layer in the CPU attribution")
    asyncio.run(main(ap.parse_args()))
