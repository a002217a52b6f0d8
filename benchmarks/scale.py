"""Scale-out benchmark (issue 12): explain_many on one process vs on Ray with one gateway actor.

1) Rate limit: `--prompts` prompts against the fake OpenAI-compatible server (tests/providers/fakeserver.py,
   its own process, `--latency` per answer) at a fixed `--rpm`: wall time, and the limit's utilisation
   counted at the server (requests per second over the span from first to last request, and over the
   whole job's wall time), for the single-process path and for Ray with `--workers` concurrent tasks; the
   duplicate paid requests (bodies the server answered twice) of each.
2) Engine-bound: `--engine-prompts` prompts of `--engine-n` words at `--engine-budget` queries, every
   answer already in the cache, so what is left is the engine (planning, ProxySPEX's tree fits, the
   faithfulness checks): wall time of one process (one prompt at a time, and `--threads` at once) against
   Ray with 1 and 2 workers (a fresh `ray.init(num_cpus=k)` each, started and warmed before the clock).
3) A paper model of `--model-prompts` prompts on a cluster of `--nodes` x `--cores`: queries, provider
   time at several RPMs, CPU-hours (from the engine CPU per prompt measured in 2), and what one gateway
   can carry (its CPU per call, measured in 1).

    python benchmarks/scale.py [--prompts 50] [--rpm 1200] [--latency 0.05] [--workers 4] [--quick]

Targets: utilisation >= 0.95 cluster-wide with >= 4 workers; engine-bound speed-up >= 1.7x on 2 cores;
zero duplicate paid requests. The machine's load average is printed with each measurement: on a shared
machine other processes take cores from both sides.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spex_api import sdk  # noqa: E402

WORDS = ("good bad food staff room view price slow quick clean dirty noisy quiet warm cold fresh stale rude kind "
         "late early cheap dear loud calm tidy bright dark small large friendly tired helpful lazy smart").split()
TEMPLATE = "Decide whether the review is positive. Answer True or False.\n\nReview: {content}\nPositive:"
RAY_LOCAL = {"include_dashboard": False, "object_store_memory": 80 * 1024**2, "log_to_driver": False}


def prompts(k: int, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"r{seed}x{i} " + " ".join(rng.choice(WORDS, n - 1)) for i in range(k)]


def server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/providers/fakeserver.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def stats(url: str) -> dict[str, Any]:
    return httpx2.get(url + "/_stats", timeout=30).json()


def reset(url: str) -> None:
    httpx2.post(url + "/_control", json={"reset": True}, timeout=30)


def load() -> str:
    return "load avg %.1f %.1f %.1f" % os.getloadavg()


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def kw(url: str, cache: str, budget: int) -> dict[str, Any]:
    return dict(base_url=url + "/v1", model="fake", template=TEMPLATE, labels=["True", "False"], budget=budget,
                cache_dir=cache, progress=False)


def ray_session(num_cpus: int, url: str, per_task: float) -> Any:
    """A fresh local Ray of num_cpus, its workers started and their imports done by a warm-up job."""
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=num_cpus, **RAY_LOCAL)
    warm = prompts(max(2, int(num_cpus / per_task)), 14, seed=999)
    sdk.explain_many(warm, backend="ray", ray_options={"num_cpus": per_task},
                     **kw(url, tempfile.mkdtemp(prefix="spex-warm-"), 60))
    print(f"   (ray.init(num_cpus={num_cpus}) and a warm-up job: {time.perf_counter() - t:.1f} s, not timed)")
    return ray


def rate_limit(args: argparse.Namespace, url: str) -> dict[str, float]:
    ps = prompts(args.prompts, args.n, seed=1)
    limit = args.rpm / 60
    print(f"\n1) rate limit: {len(ps)} prompts of {args.n} words, budget {args.budget}, {args.rpm:.0f} requests/min "
          f"({limit:.1f}/s), fake server latency {args.latency * 1000:.0f} ms")
    rows, out = [], {}
    for backend in ("threads", "ray"):
        extra: dict[str, Any] = {}
        if backend == "ray":
            ray = ray_session(2, url, 2 / args.workers)
            extra = {"backend": "ray", "ray_options": {"num_cpus": 2 / args.workers}}
        else:
            extra = {"concurrency": args.workers}
        reset(url)
        t = time.perf_counter()
        res = sdk.explain_many(ps, rpm=args.rpm, **extra, **kw(url, tempfile.mkdtemp(prefix="spex-rate-"), args.budget))
        wall = time.perf_counter() - t
        st = stats(url)
        arr = np.array(st["arrivals"])
        span = (len(arr) - 1) / (arr[-1] - arr[0]) / limit
        job = len(arr) / wall / limit
        dup = st["paid_total"] - len(st["paid"])
        name = "one process" if backend == "threads" else f"Ray, {args.workers} workers"
        rows.append((name, wall, len(arr), span, job, dup, load()))
        if backend == "ray":
            out["gateway_cpu_per_call"] = res.stats["gateway_cpu_seconds"] / max(1, res.stats["api_calls"])
            ray.shutdown()
    print(f"   {'':22s} {'wall s':>7s} {'requests':>9s} {'util first->last':>17s} {'util whole job':>15s} "
          f"{'dup paid':>9s}")
    for name, wall, n, span, job, dup, ld in rows:
        print(f"   {name:22s} {wall:7.1f} {n:9d} {span:17.3f} {job:15.3f} {dup:9d}   ({ld})")
    print(f"   target: utilisation >= 0.95 with >= 4 workers -> Ray {rows[1][3]:.3f} first->last "
          f"({'met' if rows[1][3] >= 0.95 else 'NOT met'}); duplicates {rows[1][5]} (target 0)")
    print(f"   gateway CPU per API call: {out['gateway_cpu_per_call'] * 1000:.2f} ms")
    return out


def engine_bound(args: argparse.Namespace, url: str) -> dict[str, float]:
    ps = prompts(args.engine_prompts, args.engine_n, seed=2)
    cache = tempfile.mkdtemp(prefix="spex-engine-")
    k = kw(url, cache, args.engine_budget)
    print(f"\n2) engine-bound: {len(ps)} prompts of {args.engine_n} words, budget {args.engine_budget}, every "
          "answer cached beforehand")
    httpx2.post(url + "/_control", json={"latency": 0.0}, timeout=30)
    t = time.perf_counter()
    sdk.explain_many(ps, concurrency=2, **k)
    print(f"   (filling the cache: {time.perf_counter() - t:.1f} s, not timed)")
    rows = []
    for name, conc in (("one process, 1 at a time", 1), (f"one process, {args.threads} threads", args.threads)):
        c, t = cpu_self(), time.perf_counter()
        res = sdk.explain_many(ps, concurrency=conc, **k)
        rows.append((name, time.perf_counter() - t, cpu_self() - c, load()))
        assert res.stats["api_calls"] == 0
    for workers in (1, 2):
        ray = ray_session(workers, url, 1.0)
        t = time.perf_counter()
        res = sdk.explain_many(ps, backend="ray", **k)
        rows.append((f"Ray, {workers} worker{'s' * (workers > 1)}", time.perf_counter() - t, float("nan"), load()))
        assert res.stats["api_calls"] == 0
        ray.shutdown()
    base = min(rows[0][1], rows[1][1])
    print(f"   {'':26s} {'wall s':>7s} {'CPU s':>7s} {'speed-up':>9s}")
    for name, wall, cpu, ld in rows:
        print(f"   {name:26s} {wall:7.1f} {cpu:7.1f} {base / wall:8.2f}x   ({ld})")
    speed = base / rows[3][1]
    print(f"   target: >= 1.7x on 2 cores vs the faster one-process row -> {speed:.2f}x "
          f"({'met' if speed >= 1.7 else 'NOT met'})")
    return {"cpu_per_prompt": rows[0][2] / len(ps), "speedup": speed}


def paper_model(args: argparse.Namespace, measured: dict[str, float]) -> None:
    from spex_api.engine.planner import plan

    n, budget, prompts_ = args.model_n, args.model_budget, args.model_prompts
    p = plan(n, budget - 1)
    queries = prompts_ * (p.total + 1)
    # engine CPU scales roughly with the answers a fit trains on; measured at engine_budget
    cpu_s = measured["cpu_per_prompt"] * budget / args.engine_budget
    cpu_h = prompts_ * cpu_s / 3600
    cores = args.nodes * args.cores
    per_call = measured.get("gateway_cpu_per_call", float("nan"))
    print(f"\n3) paper model: {prompts_:,} prompts of {n} features at budget {budget} ({p.method}), on "
          f"{args.nodes} nodes x {args.cores} cores")
    print(f"   queries: {queries:,}; engine: {cpu_s:.1f} CPU s per prompt (measured {measured['cpu_per_prompt']:.2f} s at "
          f"budget {args.engine_budget}, scaled by budget) -> {cpu_h:.1f} CPU-hours, {cpu_h / cores * 60:.1f} min "
          f"on {cores} cores")
    print(f"   one gateway: {per_call * 1000:.2f} ms CPU per call -> at most {1 / per_call * 60:,.0f} requests/min on "
          "its core")
    print(f"   {'RPM':>8s} {'provider h':>11s} {'engine h':>9s} {'job h (overlapped)':>19s} {'gateway core busy':>18s}")
    for rpm in args.model_rpm:
        provider_h = queries / rpm / 60
        engine_h = cpu_h / cores
        print(f"   {rpm:8,.0f} {provider_h:11.1f} {engine_h:9.2f} {max(provider_h, engine_h):19.1f} "
              f"{rpm / 60 * per_call:17.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--n", type=int, default=10, help="words per prompt in part 1")
    ap.add_argument("--budget", type=int, default=53, help="queries per prompt in part 1 (the least ProxySPEX plan at n=10)")
    ap.add_argument("--rpm", type=float, default=1200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=4, help="concurrent Ray tasks (and threads) in part 1")
    ap.add_argument("--engine-prompts", type=int, default=8)
    ap.add_argument("--engine-n", type=int, default=128)
    ap.add_argument("--engine-budget", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-prompts", type=int, default=10_000)
    ap.add_argument("--model-n", type=int, default=64)
    ap.add_argument("--model-budget", type=int, default=1000)
    ap.add_argument("--model-rpm", type=float, nargs="+", default=[500, 5000, 30000])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="20 prompts in 1), 4 smaller prompts in 2)")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.engine_prompts, args.engine_n, args.engine_budget = 20, 4, 64, 800
    proc, url = server(args.latency)
    try:
        print(f"fake server {url} (own process); {os.cpu_count()} cores; {load()}")
        measured = rate_limit(args, url)
        measured.update(engine_bound(args, url))
        paper_model(args, measured)
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()


if __name__ == "__main__":
    main()
