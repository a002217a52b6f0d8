"""Cost benchmark: dollars and tokens of an explanation, interactive vs Batch API vs Batch API + prompt cache.

Everything runs for real except the provider: the batch protocols are served by the test double in
tests/providers/batchserver.py, which forwards every batched request to a real llama-server (Gemma-3-270M)
and reports usage as the provider would bill it (OpenAI: its public tokenizer and prefix-caching rule;
Anthropic: the server's token counts and the cache_control rule). Each scenario is ONE batch-mode run through
`spex_api.explain` / `explain_many`; its answers' reported usage is then priced three ways (list prices with no
caching credit, batch prices with no caching credit, batch prices with the cached-input and cache-write tokens
the usage reports), next to the estimate the plan showed before any query for the same three pricings. Prices
are the built-in table's (providers/cost.py: the providers' published list prices) for gpt-4o-mini and
claude-3-5-haiku; "no caching credit" is the same table with cached and cache-write tokens at the input price.

Scenarios: (1) one explanation of a 100-word prompt (the issue's target at 1,000 queries: at gpt-4o-mini prices
<= $0.025 estimated in batch mode, estimate within +-10% of the reported cost); (2) a batch of 20 short reviews
sharing a long fixed instruction prefix (system prompt, rendered first), long enough for both providers to
cache, explained by sentences (exhaustive: 2^n masks each), run by explain_many (each round of all 20 prompts
one batch; its estimate is `estimate_many`, which counts the requests and the cache write they share once).
Estimates count prompt tokens with the endpoint's free counter (Anthropic's messages.count_tokens, answered by
the real server behind the emulator) or tiktoken (OpenAI), never a paid query.

Run sizes: the local model answers 0.4-5 queries/s on this shared 2-core machine (0.4/s at load 10-13), so
the defaults finish in about 5 minutes at load 3-9 (a 200-query run did not finish in 17 min at load 12): 60 queries
per explanation, a batch of 3 prompts; the issue's sizes are `--budget 1000 --anthropic-budget 1000
--prompts 20`. The sizes are printed. Answers
persist in --cache-dir (outside the repository; each scenario its own directory, the emulator on a fixed port
so cache keys match), so a rerun resumes from the answers already paid for; --fresh starts over.

    nice python benchmarks/cost.py [--budget 60] [--anthropic-budget 60] [--prompts 3]
                                   [--providers openai,anthropic] [--scenarios one,many] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "providers")]

import diskcache  # noqa: E402

import providers.batch  # noqa: E402
from batchserver import BatchServer  # noqa: E402
from providers.cost import DEFAULT_PRICES, Price, PriceTable  # noqa: E402
from providers.local import LocalServer  # noqa: E402
from providers.scorers import AnswerFrequency  # noqa: E402
from providers.types import Completion, Usage  # noqa: E402
from spex_api import sdk  # noqa: E402

MODELS = {"openai": ("gpt-4o-mini", "openai-compatible"), "anthropic": ("claude-3-5-haiku", "anthropic-compatible")}

PROMPT_100 = (
    "I booked this hotel for a three night stay during a conference and expected the usual business hotel "
    "experience. The lobby was bright and the staff at the front desk were friendly, quick and helpful with "
    "directions. My room was clean, although the carpet looked worn and the window faced a noisy street. The bed "
    "was comfortable, the shower pressure was weak, and breakfast offered little variety after the first day. "
    "The wifi worked well for video calls. Overall the price was fair for the location, but I would probably try "
    "another place next time, closer to the conference centre."
)
TEMPLATE = "Is the following hotel review positive? Answer True or False.\nReview: {content}\nAnswer:"

REVIEWS = [
    "The room was spotless. The staff ignored our requests. Breakfast was cold. We left a day early.",
    "Great location near the station. The bed was comfortable. Check-in took two minutes. We would return.",
    "The pool was closed all week. Nobody told us in advance. The manager offered a small refund.",
    "Lovely view from the balcony. The minibar was overpriced. Housekeeping was friendly and quick.",
    "Our flight was late and the desk stayed open for us. The room smelled of smoke. Parking was free.",
    "Quiet rooms and thick curtains. The gym had broken machines. The coffee in the lobby was excellent.",
    "Staff upgraded us for our anniversary. Dinner at the restaurant was superb. The spa was booked out.",
    "The elevator was broken for two days. Our room was on the ninth floor. The staff apologised often.",
    "Clean, cheap and close to the beach. The walls were thin. The breakfast buffet had plenty of fruit.",
    "The shower flooded the bathroom. Maintenance came within ten minutes. The towels were soft and new.",
    "Check-out was chaotic. The bill had wrong charges. The room itself was modern and bright.",
    "Friendly dogs welcome. The garden was beautiful at night. The wifi dropped every hour.",
    "A very loud party next door kept us awake. Security did nothing. The location was convenient.",
    "Everything was exactly as pictured. The concierge booked us a great tour. We loved our stay.",
    "The heating did not work in winter. Extra blankets arrived late. The staff seemed overworked.",
    "The rooftop bar had live music. Drinks were reasonably priced. Our room was small but stylish.",
    "Dirty carpets and stained sheets. We asked to change rooms. The second room was no better.",
    "Kids loved the play area. The family suite was spacious. Dinner options were limited.",
    "The hotel was far from everything. Taxis were expensive. The staff were kind and the beds were soft.",
    "Fast check-in with the app. The room key stopped working twice. Breakfast was the highlight.",
]


def _instructions(min_chars: int) -> str:
    """A fixed system prompt (rules and worked examples) at least `min_chars` long: the cacheable prefix."""
    rules = ("You classify hotel reviews. Answer True if the review is positive overall and False if it is "
             "negative overall. Weigh service, cleanliness, comfort, value and location. Ignore minor complaints "
             "when the reviewer says they would return. Answer with one word.\n")
    examples, i = [], 0
    while len(rules) + sum(map(len, examples)) < min_chars:
        r = REVIEWS[i % len(REVIEWS)]
        examples.append(f"Example {i + 1}. Review: {r} Reasoning: the reviewer lists what worked and what did not, "
                        f"then gives an overall verdict. Answer: {'True' if i % 3 else 'False'}\n")
        i += 1
    return rules + "".join(examples)


def _no_cache_credit(p: Price) -> Price:
    """The same price with cached and cache-write tokens at the input price (no prompt-caching effect)."""
    return replace(p, cached_input=p.input, batch_cached_input=p.batch_input, cache_write=p.input,
                   batch_cache_write=p.batch_input)


def _tables(provider: str) -> tuple[PriceTable, PriceTable, Price, Price]:
    model, host = MODELS[provider]
    price = DEFAULT_PRICES[provider][model]
    flat = _no_cache_credit(price)
    return PriceTable({host: {model: price}}), PriceTable({host: {model: flat}}), price, flat


def _answers(cache_dir: str) -> list[Completion]:
    """Every answer the run paid for (one fresh cache directory per scenario)."""
    with diskcache.Cache(cache_dir) as c:
        return [Completion.from_dict(json.loads(c[k])) for k in c]


def _row(label: str, est: float, rep: float) -> str:
    return (f"    {label:<24} est ${est:9.5f}   reported ${rep:9.5f}   est/reported {est / rep:6.3f}"
            f"   {'within' if abs(est / rep - 1) <= 0.10 else 'OUTSIDE'} +-10%")


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def scenario(server: LocalServer, provider: str, name: str, prompts: list[str], kw: dict[str, Any], cache: str,
             port: int) -> dict[str, Any]:
    """One batch-mode run of `prompts` (resumed from `cache`); its usage priced three ways next to the three
    estimates made before any query."""
    model, _ = MODELS[provider]
    table, flat_table, price, flat = _tables(provider)
    os.makedirs(cache, exist_ok=True)
    with BatchServer(server, port=port) as emu:
        base = emu.base_url if provider == "openai" else emu.root_url
        common = dict(provider=provider, model=model, base_url=base, api_key="sk-benchmark-not-a-key", cache_dir=cache,
                      **kw)
        t0 = time.monotonic()
        # the plan the batch run spends (interactive mode would add a repeat-noise pilot to it)
        flat_i = [sdk.preview(p, prices=flat_table, noise_pairs=0, **common) for p in prompts]
        flat_b = [sdk.preview(p, mode="batch", prices=flat_table, **common) for p in prompts]
        pres = [sdk.preview(p, mode="batch", prices=table, **common) for p in prompts]
        est = {"interactive": sdk.estimate_many(flat_i), "batch": sdk.estimate_many(flat_b),
               "batch+cache": sdk.estimate_many(pres)}
        counted, t_est = emu.counted, time.monotonic() - t0
        assert emu.created == 0 and not emu.forwarded, "an estimate sent a query"
        t0 = time.monotonic()
        if len(prompts) == 1:
            expls = [sdk.run(pres[0], confirm=False, progress=False)]
        else:
            expls = sdk.explain_many(prompts, mode="batch", prices=table, confirm=False, progress=False, **common)
        wall = time.monotonic() - t0
        answers = _answers(cache)
        batches, sent = emu.created, sum(emu.forwarded.values())
    u = sum((a.usage for a in answers), Usage())
    rep = {"interactive": sum(flat.cost(a.usage) for a in answers),
           "batch": sum(flat.cost(a.usage, batch=True) for a in answers),
           "batch+cache": sum(price.cost(a.usage, batch=True) for a in answers)}
    paid = sum(e.cost for e in expls)
    print(f"\n[{provider} / {model} prices] {name}: {len(prompts)} prompt(s), {len(answers)} answers in the cache "
          f"({sent} paid in this run, the rest resumed), {batches} batches this run ({pres[0].rounds} rounds), "
          f"{wall:.0f} s wall; estimates took {counted} free token-count calls, {t_est:.1f} s")
    print(f"    load: {_load()}")
    print(f"    tokens reported: input {u.input_tokens} (cached {u.cached_input_tokens}, cache writes "
          f"{u.cache_write_tokens}), output {u.output_tokens}")
    for k in ("interactive", "batch", "batch+cache"):
        print(_row(k, est[k], rep[k]))
    print(f"    batch saves {1 - rep['batch'] / rep['interactive']:.1%} of interactive; batch + prompt cache saves "
          f"{1 - rep['batch+cache'] / rep['interactive']:.1%}; the explanations' own reported cost this run "
          f"${paid:.5f}")
    return {"est": est, "rep": rep, "paid": paid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=60, help="queries of the one-explanation scenario (OpenAI)")
    ap.add_argument("--anthropic-budget", type=int, default=60,
                    help="queries of the one-explanation scenario at Anthropic (smaller: the local server is slow)")
    ap.add_argument("--prompts", type=int, default=3, help="prompts in the batch scenario")
    ap.add_argument("--providers", default="openai,anthropic")
    ap.add_argument("--scenarios", default="one,many", help="one (one explanation), many (the batch of prompts)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/spex-api-bench/cost"),
                    help="answers persist here, so a rerun resumes")
    ap.add_argument("--port", type=int, default=18730, help="first of the emulator's fixed ports (one per scenario)")
    ap.add_argument("--fresh", action="store_true", help="drop the cached answers first")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.cache_dir, ignore_errors=True)
    providers.batch.POLL_INITIAL, providers.batch.POLL_MAX = 0.5, 2.0  # emulated batches end in minutes
    words = len(PROMPT_100.split())
    results = {}
    print(f"load at start: {_load()}")
    print(f"run sizes: one explanation = {args.budget} queries at OpenAI prices, {args.anthropic_budget} at Anthropic "
          f"prices; batch = {args.prompts} prompts by sentence (exhaustive)")
    with LocalServer(ctx_size=4096) as server:
        print(f"model server: {server.model} at {server.base_url}; batch protocols emulated in front of it")
        for k, provider in enumerate(args.providers.split(",")):
            scorer: Any = "label-margin" if provider == "openai" else AnswerFrequency(samples=1, temperature=0.0,
                                                                                       max_tokens=2)
            budget = args.budget if provider == "openai" else args.anthropic_budget
            one = many = None
            if "one" in args.scenarios:
                one = scenario(server, provider, f"one explanation, {words}-word prompt, budget {budget}",
                               [PROMPT_100], dict(template=TEMPLATE, labels=["True", "False"], scorer=scorer,
                                                  budget=budget),
                               os.path.join(args.cache_dir, f"{provider}-one-{budget}"), args.port + 2 * k)
            # Anthropic caches claude-3-5-haiku prefixes from 2048 tokens, OpenAI from 1024
            system = _instructions(12_000 if provider == "anthropic" else 6_000)
            if "many" in args.scenarios:
                many = scenario(server, provider, f"batch of {args.prompts} reviews by sentence, "
                                f"{len(system)}-character fixed system prompt", REVIEWS[: args.prompts],
                                dict(system=system, template="Review: {content}\nAnswer:", features="sentences",
                                     labels=["True", "False"], scorer=scorer, budget=64),
                                os.path.join(args.cache_dir, f"{provider}-many-{args.prompts}"), args.port + 2 * k + 1)
            results[provider] = (one, many)
    if results.get("openai", (None,))[0] is not None:
        one = results["openai"][0]
        e, r = one["est"]["batch+cache"], one["rep"]["batch+cache"]  # the plan's own estimate, the run's own cost
        print(f"\nTARGET ({words}-word prompt, {args.budget} queries, gpt-4o-mini prices, batch mode): estimated "
              f"${e:.5f} (target <= $0.025; interactive list price ${one['est']['interactive']:.5f}); reported "
              f"${r:.5f}; estimate {e / r - 1:+.1%} of reported (target within +-10%)")
    print(f"load at end: {_load()}")


if __name__ == "__main__":
    main()
