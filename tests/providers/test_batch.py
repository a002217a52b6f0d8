"""Batch mode against the batch-protocol emulator (tests/providers/batchserver.py), which forwards every batched
request to the real llama-server: official SDK clients, real answers, and the faults a batch can meet
(expired, cancelled, partial errors, a process killed between submit and collect, a lost create)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from providers.adapters import make_adapter
from providers.batch import BatchCancelledError, BatchRunner, Journal
from providers.cache import ResponseCache, cache_key
from providers.cost import DEFAULT_PRICES, PriceTable
from providers.errors import CapExceededError, ConfigurationError
from providers.types import Message, Request
from batchserver import BatchServer

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
PRICES = PriceTable({"openai-compatible": {"gpt-4o-mini": DEFAULT_PRICES["openai"]["gpt-4o-mini"]},
                     "anthropic-compatible": {"claude-3-5-haiku": DEFAULT_PRICES["anthropic"]["claude-3-5-haiku"]}})
THINGS = ("fire", "ice", "the sun", "snow", "lava", "a freezer", "boiling water", "a glacier", "an oven", "frost")
FAST = {"poll_initial": 0.02, "poll_max": 0.1, "backoff_initial": 0.01}


def _requests(k: int = 8, logprobs: bool = True) -> list[Request]:
    return [Request((Message("user", f"Is {t} hot? Answer True or False.\nAnswer:"),), max_tokens=1,
                    top_logprobs=5 if logprobs else None) for t in THINGS[:k]]


@pytest.fixture
def emulator(local_server):
    with BatchServer(local_server) as s:
        yield s


def _openai(emulator: BatchServer):
    return make_adapter("openai", "gpt-4o-mini", base_url=emulator.base_url, api_key="sk-test-batch")


def _anthropic(emulator: BatchServer):
    return make_adapter("anthropic", "claude-3-5-haiku", base_url=emulator.root_url, api_key="sk-ant-test")


def _runner(adapter, cache, **kw) -> BatchRunner:
    return BatchRunner(adapter, cache=str(cache), prices=PRICES, **{**FAST, **kw})


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_batch_answers_come_from_the_model_and_a_rerun_is_free(emulator, tmp_path, kind) -> None:
    adapter = _openai(emulator) if kind == "openai" else _anthropic(emulator)
    reqs = _requests(logprobs=kind == "openai")
    runner = _runner(adapter, tmp_path)
    out = asyncio.run(runner.run(reqs + reqs[:2]))  # duplicates are asked once
    assert len(out) == 10 and all(c.texts and c.usage.input_tokens > 0 for c in out)
    if kind == "openai":
        assert all(c.logprobs and c.logprobs[0][0].top for c in out)  # real top_logprobs from llama-server
    assert emulator.created == 1 and sorted(emulator.forwarded.values()) == [1] * 8
    assert runner.batches_submitted == 1 and runner.stats.api_calls == 8
    # spend is the batch price of the reported usage: half the list price
    listed = sum(runner.list_price.cost(c.usage) for c in out[:8])
    assert runner.spend == pytest.approx(listed / 2) and runner.spend > 0
    cache = ResponseCache(str(tmp_path))
    assert all(cache_key(adapter.cache_material(r)) in cache for r in reqs)
    assert Journal(str(tmp_path)).records() == []  # collected batches leave no journal behind
    again = _runner(adapter, tmp_path)
    assert [c.texts for c in asyncio.run(again.run(reqs))] == [c.texts for c in out[:8]]
    assert emulator.created == 1 and again.spend == 0 and again.stats.cache_hits == 8


def test_rounds_above_the_batch_limit_are_split(emulator, tmp_path) -> None:
    runner = _runner(_openai(emulator), tmp_path, max_batch_requests=3)
    asyncio.run(runner.run(_requests(8)))
    assert emulator.created == 3 and runner.batches_submitted == 3
    assert sorted(b["_public"]["request_counts"]["total"] for b in emulator.batches.values()) == [2, 3, 3]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_expired_batch_sends_the_rest_in_a_follow_up_batch(emulator, tmp_path, kind) -> None:
    emulator.expire_after = 3
    adapter = _openai(emulator) if kind == "openai" else _anthropic(emulator)
    runner = _runner(adapter, tmp_path)
    first = asyncio.run(runner.run(_requests(8, logprobs=kind == "openai")[:1]))  # a one-request round: fits
    assert first and emulator.created == 1
    emulator.expire_after = 3
    out = asyncio.run(runner.run(_requests(8, logprobs=kind == "openai")))
    # 1 cached; of 7, 3 answered before expiry, the other 4 went into the next batch (which expired after 3
    # too), and the last one into a third
    assert len(out) == 8 and emulator.created == 1 + 3
    assert sorted(emulator.forwarded.values()) == [1] * 8  # nothing asked (or paid) twice
    assert runner.stats.failures == 4 + 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_partial_errors_are_retried_in_a_follow_up_batch(emulator, tmp_path, kind) -> None:
    emulator.fail_first = 2  # the first two requests forwarded fail with a 500 / api_error (not billed)
    adapter = _openai(emulator) if kind == "openai" else _anthropic(emulator)
    runner = _runner(adapter, tmp_path)
    out = asyncio.run(runner.run(_requests(6, logprobs=kind == "openai")))
    assert len(out) == 6 and emulator.created == 2
    assert sorted(emulator.forwarded.values()) == [1, 1, 1, 1, 2, 2]
    assert runner.stats.failures == 2


def test_persistent_failures_stop_after_max_rounds(emulator, tmp_path) -> None:
    emulator.fail_first = 10**6
    runner = _runner(_openai(emulator), tmp_path, max_rounds=2)
    with pytest.raises(Exception, match="still failed after 2 batches"):
        asyncio.run(runner.run(_requests(2)))
    assert emulator.created == 2


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_cancelled_batch_keeps_its_answers_and_stops(emulator, tmp_path, kind) -> None:
    emulator.cancel_after = 2
    adapter = _openai(emulator) if kind == "openai" else _anthropic(emulator)
    reqs = _requests(6, logprobs=kind == "openai")
    with pytest.raises(BatchCancelledError, match="2 answers are cached, 4 requests"):
        asyncio.run(_runner(adapter, tmp_path).run(reqs))
    assert Journal(str(tmp_path)).records() == []
    emulator.cancel_after = None
    rerun = _runner(adapter, tmp_path)
    assert len(asyncio.run(rerun.run(reqs))) == 6
    assert rerun.stats.cache_hits == 2 and rerun.stats.api_calls == 4
    assert sorted(emulator.forwarded.values()) == [1] * 6


_CLIENT = textwrap.dedent("""
    import asyncio, sys
    sys.path[:0] = [{root!r}, {here!r}]
    from providers.adapters import make_adapter
    from providers.batch import BatchRunner
    from test_batch import PRICES, FAST, _requests
    adapter = make_adapter({provider!r}, {model!r}, base_url={url!r}, api_key="sk-test-batch")
    asyncio.run(BatchRunner(adapter, cache={cache!r}, prices=PRICES, **FAST).run(_requests(6, {logprobs!r})))
""")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_process_killed_between_submit_and_collect_is_resumed_without_resubmitting(emulator, tmp_path, kind):
    emulator.hold.clear()  # the batch is accepted but not processed until released
    provider, model, url = (("openai", "gpt-4o-mini", emulator.base_url) if kind == "openai"
                            else ("anthropic", "claude-3-5-haiku", emulator.root_url))
    code = _CLIENT.format(root=str(ROOT), here=str(Path(__file__).parent), provider=provider, model=model, url=url, cache=str(tmp_path),
                          logprobs=kind == "openai")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (emulator.created and Journal(str(tmp_path)).records()
                   and Journal(str(tmp_path)).records()[0]["batch_id"]):
            assert time.monotonic() < deadline and proc.poll() is None, "the client did not submit"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    emulator.hold.set()
    adapter = _openai(emulator) if kind == "openai" else _anthropic(emulator)
    rerun = _runner(adapter, tmp_path)
    out = asyncio.run(rerun.run(_requests(6, logprobs=kind == "openai")))
    assert len(out) == 6 and emulator.created == 1 and rerun.batches_resumed == 1 and rerun.batches_submitted == 0
    assert sorted(emulator.forwarded.values()) == [1] * 6 and rerun.spend > 0
    assert Journal(str(tmp_path)).records() == []


def test_a_create_whose_journal_update_was_lost_is_found_by_its_tag(emulator, tmp_path) -> None:
    runner = _runner(_openai(emulator), tmp_path)
    writes = []
    real = runner.journal.write

    def dies_after_create(rec):  # the second write (batch id known) never happens: the process "died"
        writes.append(rec["batch_id"])
        if rec["batch_id"]:
            raise KeyboardInterrupt
        real(rec)

    runner.journal.write = dies_after_create
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(runner.run(_requests(4)))
    [rec] = Journal(str(tmp_path)).records()
    assert rec["batch_id"] is None and emulator.created == 1
    rerun = _runner(_openai(emulator), tmp_path)
    assert len(asyncio.run(rerun.run(_requests(4)))) == 4
    assert emulator.created == 1 and rerun.batches_resumed == 1
    assert sorted(emulator.forwarded.values()) == [1] * 4


def test_max_cost_holds_by_submitting_what_fits(emulator, tmp_path) -> None:
    adapter = _openai(emulator)
    probe = _runner(adapter, tmp_path / "probe")
    one = probe.worst_case_cost(_requests(1)[0])
    with pytest.raises(CapExceededError, match="nothing more is submitted"):
        asyncio.run(_runner(adapter, tmp_path / "a", max_cost=one * 0.9).run(_requests(4)))
    assert emulator.created == 0  # refused before anything was submitted
    # room for two requests' worst case: batches go out one after the other as answers settle (not retries,
    # though max_rounds=1), until the next worst case no longer fits what is left
    runner = _runner(adapter, tmp_path / "b", max_cost=one * 2.5, max_rounds=1)
    try:
        out = asyncio.run(runner.run(_requests(6)))
        assert len(out) == 6
    except CapExceededError as exc:
        assert "nothing more is submitted" in str(exc)
    assert emulator.created >= 2 and runner.spend <= one * 2.5
    assert runner.stats.api_calls == sum(b["_public"]["request_counts"]["total"] for b in emulator.batches.values())


def test_batch_mode_refuses_servers_without_a_batch_api_and_needs_a_cache(emulator, tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="no batch API"):
        BatchRunner(make_adapter("llama-server", "m", base_url=emulator.base_url), cache=str(tmp_path))
    with pytest.raises(ConfigurationError, match="needs a cache directory"):
        BatchRunner(_openai(emulator), cache=None)


def test_official_sdk_batch_shapes(emulator) -> None:
    """The official clients parse the emulator's objects into their own types unchanged."""
    import anthropic
    import openai

    async def go():
        oc = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-x", max_retries=0)
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "max_completion_tokens": 2,
                         "messages": [{"role": "user", "content": "Say hi"}]}}
        f = await oc.files.create(file=("in.jsonl", json.dumps(line).encode(), "application/jsonl"), purpose="batch")
        b = await oc.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.05)
            b = await oc.batches.retrieve(b.id)
        assert isinstance(b, openai.types.Batch) and b.request_counts.completed == 1 and b.usage.input_tokens > 0
        row = json.loads((await oc.files.content(b.output_file_id)).content)
        assert row["custom_id"] == "a" and row["response"]["body"]["choices"][0]["message"]["content"]
        ac = anthropic.AsyncAnthropic(base_url=emulator.root_url, api_key="sk-ant-x", max_retries=0)
        mb = await ac.messages.batches.create(requests=[{"custom_id": "q1", "params": {
            "model": "claude-3-5-haiku", "max_tokens": 2, "messages": [{"role": "user", "content": "Say hi"}]}}])
        while mb.processing_status != "ended":
            await asyncio.sleep(0.05)
            mb = await ac.messages.batches.retrieve(mb.id)
        [item] = [r async for r in await ac.messages.batches.results(mb.id)]
        assert item.custom_id == "q1" and item.result.type == "succeeded" and item.result.message.content

    asyncio.run(go())


def test_adaptive_design_in_batch_mode_sends_one_batch_per_round_and_says_so(emulator, tmp_path, monkeypatch):
    from rich.console import Console

    from spex_api import sdk

    monkeypatch.setattr("providers.batch.POLL_INITIAL", 0.02)
    monkeypatch.setattr("providers.batch.POLL_MAX", 0.1)
    kw = dict(provider="openai", model="gpt-4o-mini", base_url=emulator.base_url, api_key="sk-test-batch",
              template="Is this review positive? Answer True or False.\nReview: {content}\nAnswer:",
              labels=["True", "False"], budget=90, cache_dir=str(tmp_path), prices=PRICES, method="adaptive")
    pre = sdk.preview("the food was cold but the staff were lovely and quick", mode="batch", **kw)
    assert pre.plan.adaptive and pre.rounds == 1 + len(pre.plan.rounds)  # original answer, then each round
    console = Console(record=True, width=200)
    console.print(pre.renderable())
    shown = console.export_text()
    assert f"{pre.rounds} batches, one per round" in shown and "2 adaptive design rounds" in shown
    expl = sdk.run(pre, confirm=False, progress=False)
    assert emulator.created == pre.rounds
    assert sorted(set(emulator.forwarded.values())) == [1]  # every request paid once
    assert expl.queries_used <= pre.n_queries


def test_explain_in_batch_mode_plans_at_batch_prices_sends_one_batch_per_round_and_reruns_free(emulator, tmp_path,
                                                                                                monkeypatch):
    from rich.console import Console

    from spex_api import sdk

    monkeypatch.setattr("providers.batch.POLL_INITIAL", 0.02)
    monkeypatch.setattr("providers.batch.POLL_MAX", 0.1)
    kw = dict(provider="openai", model="gpt-4o-mini", base_url=emulator.base_url, api_key="sk-test-batch",
              template="Is this review positive? Answer True or False.\nReview: {content}\nAnswer:",
              labels=["True", "False"], budget=60, cache_dir=str(tmp_path), prices=PRICES)
    text = "the food was cold but the staff were lovely and quick"
    pre = sdk.preview(text, mode="batch", **kw)
    assert pre.estimated_cost == pytest.approx(pre.interactive_cost / 2) and pre.estimated_cost > 0
    console = Console(record=True, width=200)
    console.print(pre.renderable())
    shown = console.export_text()
    assert "saves 50%" in shown and f"{pre.rounds} batches, one per round" in shown and "24 h" in shown
    expl = sdk.run(pre, confirm=False, progress=False)
    assert emulator.created == pre.rounds and expl.metadata["mode"] == "batch"
    assert sorted(set(emulator.forwarded.values())) == [1]  # every request paid once
    assert 0 < expl.cost <= pre.estimated_cost * 1.5
    again = sdk.explain(text, mode="batch", confirm=False, progress=False, **kw)
    assert emulator.created == pre.rounds and again.cost == 0
    with pytest.raises(ValueError, match="no batch API"):
        sdk.preview(text, mode="batch", **{**kw, "provider": "openai-compatible"})
    with pytest.raises(ValueError, match="needs a cache_dir"):
        sdk.preview(text, mode="batch", **{**kw, "cache_dir": None})


REVIEWS = ["The room was clean. The staff were rude.", "The view was lovely. The food was cold.",
           "The bed was soft. The bar was loud."]


def _many_kw(emulator: BatchServer, cache) -> dict:
    return dict(provider="openai", model="gpt-4o-mini", base_url=emulator.base_url, api_key="sk-test-batch",
                template="Is this hotel review positive? Answer True or False.\nReview: {content}\nAnswer:",
                features="sentences", labels=["True", "False"], scorer="label-margin", budget=64, mode="batch",
                cache_dir=str(cache), prices=PRICES, progress=False)


def test_explain_many_sends_each_round_of_all_prompts_as_one_batch(emulator, tmp_path, monkeypatch) -> None:
    from spex_api import sdk

    monkeypatch.setattr("providers.batch.POLL_INITIAL", 0.05)
    monkeypatch.setattr("providers.batch.POLL_MAX", 0.2)
    kw = _many_kw(emulator, tmp_path)
    pres = [sdk.preview(r, **{k: v for k, v in kw.items() if k != "progress"}) for r in REVIEWS]
    result = sdk.explain_many(REVIEWS, confirm=False, **kw)
    # the original answers of all three prompts went out as one batch, then their designs as another (one per
    # prompt per round before)
    assert emulator.created == pres[0].rounds == 2
    # every feature masked renders the same prompt for all three: it is asked (and paid) once
    assert set(emulator.forwarded.values()) == {1} and sum(emulator.forwarded.values()) == 3 * 4 - 2
    assert result.cost == pytest.approx(sum(e.cost for e in result))  # each answer charged to one prompt
    assert sum(e.metadata.stats.cache_hits for e in result) >= 2  # the shared answer, for the other prompts
    # the estimate, made before any query, prices the shared query once
    assert result.estimated_cost == pytest.approx(sdk.estimate_many(pres))
    shared = pres[0].estimated_cost / 4  # about one query of one prompt
    assert sum(p.estimated_cost for p in pres) - result.estimated_cost == pytest.approx(2 * shared, rel=0.3)
    assert result.estimated_cost == pytest.approx(result.cost, rel=0.05)
