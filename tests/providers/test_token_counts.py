"""Estimates count prompt tokens with the endpoint's free counter (Anthropic's messages.count_tokens, served
by the real llama-server behind the batch emulator; llama-server's /tokenize for OpenAI-compatible servers)
on a few masked prompts, so the estimate made before any paid query matches the usage the run reports."""

from __future__ import annotations

import pytest

from providers.cost import Price, PriceTable
from providers.local import MODEL_NAME
from providers.scorers import AnswerFrequency
from providers.value_function import COUNTED_PROMPTS
from spex_api import sdk
from batchserver import BatchServer

pytestmark = pytest.mark.live

# $1 per 1M prompt tokens, output free: an estimate in dollars x 1e6 is the estimated prompt tokens
PER_TOKEN = Price(1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0)
PROMPT = ("The lobby was bright and the staff were friendly, although the carpet looked worn and the window "
          "faced a noisy street; breakfast offered little variety, but the wifi worked well for calls.")
TEMPLATE = "Is the following hotel review positive? Answer True or False.\nReview: {content}\nAnswer:"


def test_anthropic_estimate_counts_tokens_with_the_free_counter(local_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("providers.batch.POLL_INITIAL", 0.05)
    monkeypatch.setattr("providers.batch.POLL_MAX", 0.2)
    with BatchServer(local_server) as emu:
        kw = dict(provider="anthropic", model="claude-3-5-haiku", base_url=emu.root_url, api_key="sk-ant-test",
                  template=TEMPLATE, labels=["True", "False"], budget=60, method="proxyspex", mode="batch",
                  scorer=AnswerFrequency(samples=1, temperature=0.0, max_tokens=2), cache_dir=str(tmp_path),
                  prices=PriceTable({"anthropic-compatible": {"claude-3-5-haiku": PER_TOKEN}}))
        pre = sdk.preview(PROMPT, **kw)
        calls = emu.counted
        assert 0 < calls <= COUNTED_PROMPTS  # a handful of free calls for the whole estimate, none paid
        assert emu.created == 0 and not emu.forwarded
        sdk.preview(PROMPT, **kw)
        assert emu.counted == calls  # counts are remembered per endpoint and model
        expl = sdk.run(pre, confirm=False, progress=False)
    reported = expl.cost * 1e6  # prompt tokens the emulated usage reports (the server's own counts)
    estimated = pre.estimated_cost * 1e6
    assert estimated == pytest.approx(reported, rel=0.03)  # chars/4 estimated ~20% low here


def test_compatible_server_estimate_counts_tokens_with_tokenize(local_server, tmp_path) -> None:
    prices = PriceTable({"compatible": {MODEL_NAME: PER_TOKEN}})
    kw = dict(provider="openai-compatible", model=MODEL_NAME, base_url=local_server.base_url, template=TEMPLATE,
              labels=["True", "False"], budget=60, method="proxyspex", cache_dir=str(tmp_path), prices=prices,
              noise_pairs=0)
    pre = sdk.preview(PROMPT, **kw)
    expl = sdk.run(pre, confirm=False, progress=False)
    assert pre.estimated_cost * 1e6 == pytest.approx(expl.cost * 1e6, rel=0.03)
