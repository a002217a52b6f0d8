"""Issue 9 at the SDK level (explain / explain_many / CLI) against the loopback fake server, which counts every
request and dollar: batches admit what the cap covers, shared answers are counted once, the first failure stops
the batch, Ctrl-C keeps what was delivered, runner knobs reach the runner, out paths are checked before spend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from providers.cost import Price, PriceTable
from providers.errors import InvalidRequestError, RequestTimeoutError
from spex_api import sdk
from spex_api.cli import app

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "Review: {content}\nPositive? Answer True or False.\nAnswer:"
PROMPTS = ["pasta great but slow", "room tiny yet clean", "staff rude food cold", "view lovely beds hard"]
PER_QUERY = 1.0  # dollars: $1 per output token, input free; LabelMargin reads one token
PRICES = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6 * PER_QUERY)}})


@pytest.fixture
def server(fake_server):
    """The shared fake provider (tests/conftest.py), its counters and faults reset for each test."""
    return fake_server


def kw(server, tmp_path, **extra):
    """Four words, budget 20: the exhaustive plan, 17 queries (16 masks + the original answer, which is the
    unmasked mask's query: 16 distinct), at most $17 each."""
    return dict(provider="openai", model="gpt-4o-mini", base_url=server.url + "/v1", api_key="sk-test-0123456789",
                template=TEMPLATE, labels=["True", "False"], budget=20, prices=PRICES, cache_dir=str(tmp_path),
                progress=False, **extra)


# ---- 3: a cap that covers k whole prompts completes k; the rest are skipped before any spend ----------------
def test_a_batch_cap_finishes_the_prompts_it_covers_and_skips_the_rest_before_spend(server, tmp_path):
    cap = 2 * 17 * PER_QUERY + 5  # two whole prompts and a bit
    out = sdk.explain_many(PROMPTS, max_cost=cap, return_exceptions=True, **kw(server, tmp_path))
    done = [e for e in out if not isinstance(e, BaseException)]
    assert len(done) == 2 and [e.metadata["feature_texts"][0] for e in done] == ["pasta", "room"]
    assert all(isinstance(out[i], sdk.PromptSkipped) for i in (2, 3)) and out.skipped == [2, 3]
    billed = server.stats()["paid_total"] * PER_QUERY  # 16 + 16 - 1: the all-masked prompt is the same for both
    assert billed == 31 and out.cost == pytest.approx(billed) and done[0].cost + done[1].cost == pytest.approx(billed)


def test_without_return_exceptions_a_prompt_that_cannot_fit_is_refused_before_any_request(server, tmp_path):
    with pytest.raises(sdk.PromptSkipped, match="nothing was sent"):
        sdk.explain_many(PROMPTS, max_cost=3 * 17 * PER_QUERY, **kw(server, tmp_path))
    assert server.stats()["requests"] == 0


# ---- 4: batch accounting counts a shared answer once -------------------------------------------------------
def test_the_same_prompt_twice_is_paid_and_reported_once(server, tmp_path):
    out = sdk.explain_many([PROMPTS[0], PROMPTS[0]], concurrency=2, **kw(server, tmp_path))
    billed = server.stats()["paid_total"] * PER_QUERY
    assert billed == 16.0  # the original answer is the unmasked query: asked once
    assert out[0].cost + out[1].cost == pytest.approx(billed) and out.cost == pytest.approx(billed)


# ---- 5: return_exceptions=False stops spending on the other prompts ----------------------------------------
def test_the_first_failure_stops_the_batch(server, tmp_path):
    server.script(["400"])  # the batch's very first request is rejected
    with pytest.raises(InvalidRequestError):
        sdk.explain_many(PROMPTS, concurrency=1, **kw(server, tmp_path))
    assert server.stats()["requests"] <= 2  # the failing call (and at most one already in flight), not 3 more prompts


# ---- issue 13: preview builds the run's runner and value function once ---------------------------------------
def test_run_spends_through_the_runner_and_value_function_preview_built(server, tmp_path, monkeypatch):
    from providers import runner as runner_module
    from providers import value_function as vf_module

    built = {"runner": 0, "value function": 0}
    for name, cls in (("runner", runner_module.Runner), ("value function", vf_module.LLMValueFunction)):
        def counting(self, *args, _real=cls.__init__, _name=name, **kwargs):
            built[_name] += 1
            _real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", counting)
    settings = {k: v for k, v in kw(server, tmp_path).items() if k != "progress"}
    pre = sdk.preview(PROMPTS[0], max_cost=100.0, **settings)  # a cap and a cache directory: the warm probe runs too
    assert built == {"runner": 1, "value function": 1} and server.stats()["requests"] == 0
    expl = sdk.run(pre, progress=False)
    assert built == {"runner": 1, "value function": 1}  # the run spent through what the preview priced with
    assert expl.cost == pytest.approx(server.stats()["paid_total"] * PER_QUERY) == 16.0
    again = sdk.run(pre, progress=False)  # a second run of the same preview has its own accounts
    assert built == {"runner": 2, "value function": 2} and again.cost == 0.0 and again.metadata.stats.cache_hits > 0


# ---- 15: knobs reach the runner; a hung server stops within the user's timeout -----------------------------
def test_runner_knobs_are_validated_and_used(server, tmp_path):
    pre = sdk.preview(PROMPTS[0], **{k: v for k, v in kw(server, tmp_path).items() if k != "progress"},
                      timeout=7.0, max_attempts=2, concurrency=3, rpm=600, tpm=50_000)
    runner = sdk._make_runner(pre, sdk._live_adapter(pre, None, None), None)
    assert (runner.timeout, runner.max_attempts, runner.concurrency, runner.rpm, runner.tpm) == (7.0, 2, 3, 600, 50_000)
    assert runner.adapter.timeout == 7.0
    for bad in (dict(timeout=0), dict(max_attempts=0), dict(concurrency=1.5), dict(rpm=-1)):
        with pytest.raises(ValueError):
            sdk.preview(PROMPTS[0], **{k: v for k, v in kw(server, tmp_path).items() if k != "progress"}, **bad)
    assert server.stats()["requests"] == 0


def test_a_hung_server_stops_within_the_timeout(server, tmp_path):
    server.fail_first([{"kind": "timeout", "hold": 30}] * 20)
    t = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="within timeout=1.5 s"):
        sdk.explain(PROMPTS[0], **kw(server, tmp_path), timeout=1.5)
    assert time.monotonic() - t < 1.5 + 3.0


def test_cli_exposes_the_knobs_and_checks_out_paths_before_spend(server, tmp_path):
    from typer.testing import CliRunner

    base = ["explain", "--base-url", server.url + "/v1", "--model", "m", "--labels", "True,False", "--template",
            TEMPLATE, "--budget", "20", "--cache-dir", str(tmp_path)]
    ok = CliRunner().invoke(app, base + ["--dry-run", "--timeout", "5", "--max-attempts", "2", "--concurrency", "2",
                                         "--rpm", "600", "--tpm", "100000", PROMPTS[0]])
    assert ok.exit_code == 0, ok.output
    for out in ("/proc/spex-out.json", str(tmp_path)):  # not writable (a /proc folder), a folder
        res = CliRunner().invoke(app, base + ["--yes", "--out", out if out.endswith(".json") else out + "/",
                                              PROMPTS[0]])
        assert res.exit_code == 2, res.output
    assert server.stats()["requests"] == 0


# ---- 6: Ctrl-C keeps the answers that were delivered -------------------------------------------------------
CHILD = """
import sys
from spex_api import sdk
from providers.cost import Price, PriceTable
url, cache = sys.argv[1:3]
prices = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6)}})
sdk.explain("the pasta was great but the waiter was slow and rude", provider="openai", model="gpt-4o-mini",
            base_url=url + "/v1", api_key="sk-test-0123456789", template=%r, labels=["True", "False"], budget=120,
            prices=prices, cache_dir=cache, progress=False, concurrency=4)
""" % TEMPLATE


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_keeps_every_delivered_answer_in_the_cache(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    srv = subprocess.Popen([sys.executable, str(ROOT / "tests/providers/fakeserver.py"), "--latency", "0.4"],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(srv.stdout.readline())
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        child = subprocess.Popen([sys.executable, str(script), f"http://127.0.0.1:{port}", str(tmp_path / "cache")],
                                 env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _stats(port)["paid_total"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.15)  # mid-flight: four calls are being answered
        child.send_signal(signal.SIGINT)
        assert child.wait(60) != 0
        time.sleep(0.6)
        st = _stats(port)
    finally:
        srv.terminate()
        srv.wait(10)
    from providers.cache import ResponseCache

    cache = ResponseCache(tmp_path / "cache")
    cached = len(cache)
    cache.close()
    # every answer the server delivered is cached; none was left for a rerun to pay again
    assert st["abandoned"] == 0 and st["paid_total"] == cached, (st, cached)


# ---- 8: everything that can fail is checked before the first query ---------------------------------------
def test_max_cost_zero_runs_on_a_fully_warm_cache(server, tmp_path):
    first = sdk.explain(PROMPTS[0], **kw(server, tmp_path))
    paid = server.stats()["requests"]
    assert first.cost > 0 and paid == 16
    again = sdk.explain(PROMPTS[0], **kw(server, tmp_path), max_cost=0)  # every answer is cached: costs nothing
    assert server.stats()["requests"] == paid and again.cost == 0.0
    assert again.fourier.values.tolist() == first.fourier.values.tolist()
    with pytest.raises(ValueError, match="exceeds max_cost"):  # a cold prompt is still refused before spend
        sdk.explain(PROMPTS[1], **kw(server, tmp_path), max_cost=0)
    assert server.stats()["requests"] == paid


def test_a_plan_larger_than_memory_is_capped_and_says_so(server, tmp_path):
    text = " ".join(f"w{i}" for i in range(30))
    args = {k: v for k, v in kw(server, tmp_path).items() if k not in ("progress", "prices")}
    pre = sdk.preview(text, **{**args, "budget": 10**12})
    assert sdk._plan_bytes(pre.plan) <= sdk.MEMORY_SHARE * sdk._memory_available()
    assert "budget capped from 1000000000000" in pre.plan.reason and pre.n_queries < 10**12
    assert server.stats()["requests"] == 0


def test_too_many_features_are_refused_with_the_reason_before_any_query(server, tmp_path):
    text = " ".join(f"w{i}" for i in range(sdk.MAX_FEATURES + 1))
    with pytest.raises(ValueError, match="features='sentences'"):
        sdk.explain(text, **{**kw(server, tmp_path), "budget": 60})
    assert server.stats()["requests"] == 0
