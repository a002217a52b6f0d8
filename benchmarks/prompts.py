"""Masked-prompt rendering speed and local-server throughput, each next to a peer measured in the same run.

    python benchmarks/prompts.py            # rendering: vectorised render_many vs a per-mask str.join loop
    python benchmarks/prompts.py --server   # + real llama-server label-margin queries/s, 1 vs 4 in flight

CPU time (time.process_time) for rendering; wall time for the server, whose work is in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, not benchmarks/providers.py

from providers.prompt import MaskedPrompt  # noqa: E402


def _best_cpu(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def render_benchmark(n: int = 100, n_masks: int = 1000, seed: int = 0) -> None:
    words = [f"w{i % 37}" for i in range(n)]
    prompt = MaskedPrompt.from_text(" ".join(words), template="Read: {content}\nTrue or False?", system="Judge.")
    masks = np.random.default_rng(seed).random((n_masks, n)) < 0.5

    def naive() -> list[str]:  # the obvious loop a caller would write: one join per mask
        return ["Read: " + " ".join(w if keep else "[UNK]" for w, keep in zip(words, m)) + "\nTrue or False?"
                for m in masks.tolist()]

    ours = _best_cpu(lambda: prompt.render_many(masks))
    peer = _best_cpu(naive)
    assert [r[1].content for r in prompt.render_many(masks)] == naive()  # same texts
    print(f"render n={n}, {n_masks} masks: render_many {ours * 1e3:.2f} ms CPU (Message tuples, all messages) | "
          f"per-mask join loop {peer * 1e3:.2f} ms CPU (user text only)")


async def server_benchmark(n_queries: int = 32) -> None:
    from providers.adapters import make_adapter
    from providers.local import LocalServer
    from providers.runner import Runner
    from providers.scorers import LabelMargin
    from providers.value_function import LLMValueFunction

    prompt = MaskedPrompt.from_text("Fire is hot and ice is cold today.", template="Answer True or False.\n{content}")
    rng = np.random.default_rng(1)
    with LocalServer(n_parallel=4) as server:
        for concurrency in (1, 4):
            adapter = make_adapter("llama-server", server.model, base_url=server.base_url)
            vf = LLMValueFunction(prompt, adapter, LabelMargin(), Runner(adapter, concurrency=concurrency), progress=False)
            await vf(rng.random((2, prompt.n_features)) < 0.7)  # warm-up
            masks = rng.random((n_queries, prompt.n_features)) < 0.7  # fresh draws each round, same distribution
            t, c = time.perf_counter(), time.process_time()
            scores = await vf(masks)
            wall = time.perf_counter() - t
            cpu = time.process_time() - c
            print(f"llama-server 4 slots, {len(scores)} label-margin queries, {concurrency} in flight: "
                  f"{len(scores) / wall:.2f} queries/s wall, client CPU {cpu / len(scores) * 1e3:.1f} ms/query")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", action="store_true", help="also measure the real local server (needs [local])")
    args = ap.parse_args()
    for n in (20, 100):
        render_benchmark(n=n)
    if args.server:
        asyncio.run(server_benchmark())


if __name__ == "__main__":
    main()
