"""Offline replays of real llama-server (Gemma-3-270M) traffic through the official SDKs and our adapters.

The cassettes in ``cassettes/`` were recorded from the real server (never hand-written) and replay with
``record_mode="none"``: an unmatched request fails instead of reaching a network. Matching is on method,
URL and JSON body; the host is pinned to ``llama-server.invalid`` on record and replay, so the random
loopback port of the recording never matters. Credential headers are scrubbed from requests and responses.

Re-record (starts the local server; needs the [local] extra):
    SPEX_RECORD=1 python -m pytest tests/providers/test_cassettes.py
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import anthropic
import numpy as np
import openai
import pytest
from vcr.errors import CannotOverwriteExistingCassetteException

from providers.adapters import make_adapter
from providers.errors import InvalidRequestError
from providers.prompt import MaskedPrompt
from providers.runner import Runner
from providers.scorers import AnswerFrequency, AnswerSimilarity, LabelMargin
from providers.types import Message, Request

RECORDING = os.environ.get("SPEX_RECORD") == "1"

MODEL = "gemma-3-270m-q4_k_m"
QUESTION = "Answer with one word, True or False.\nStatement: {content}"


def _prompt() -> MaskedPrompt:
    return MaskedPrompt.from_text("Fire is hot.", template=QUESTION)


async def test_openai_chat_top_logprobs(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    with cassettes.vcr().use_cassette("openai_chat_logprobs.yaml"):
        client = openai.AsyncOpenAI(base_url=cassette_base_url + "/v1", api_key=cassettes.key, max_retries=0)
        r = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION.format(content="Fire is hot.")}],
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=20,
        )
    first = r.choices[0].logprobs.content[0]
    lps = [t.logprob for t in first.top_logprobs]
    assert len(lps) == 20 and lps == sorted(lps, reverse=True) and max(lps) <= 0
    assert first.token == first.top_logprobs[0].token  # greedy: the chosen token is the most likely
    assert sum(math.exp(x) for x in lps) <= 1 + 1e-6  # full-softmax probabilities, not renormalised top-k
    assert r.usage.completion_tokens == 1


async def test_openai_legacy_completions_logprobs(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    with cassettes.vcr().use_cassette("openai_completions_logprobs.yaml"):
        client = openai.AsyncOpenAI(base_url=cassette_base_url + "/v1", api_key=cassettes.key, max_retries=0)
        r = await client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=5
        )
    assert r.choices[0].text.strip()
    assert r.usage.completion_tokens == 3
    # through our adapter's parser: same answer, per-token alternatives kept
    adapter = make_adapter("llama-server", MODEL, base_url="http://unused/v1")

    req = Request((Message("user", "The capital of France is"),), max_tokens=3, top_logprobs=5, raw_completion=True)
    completion = adapter.parse(r.model_dump(), req)
    assert completion.text == r.choices[0].text
    assert len(completion.logprobs[0]) == 3 and all(len(t.top) == 5 for t in completion.logprobs[0])


async def test_anthropic_messages(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    with cassettes.vcr().use_cassette("anthropic_messages.yaml"):
        client = anthropic.AsyncAnthropic(base_url=cassette_base_url, api_key=cassettes.key, max_retries=0)
        m = await client.messages.create(
            model=MODEL,
            max_tokens=12,
            system="Answer in one word.",
            messages=[{"role": "user", "content": QUESTION.format(content="Fire is hot.")}],
            extra_body={"temperature": 0},  # this SDK's create() no longer takes temperature by name
        )
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.usage.input_tokens > 0 and m.usage.output_tokens <= 12


async def test_label_margin_end_to_end_through_adapter(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    """prompt → scorer → adapter → score: masking the word that decides the answer moves the margin."""
    prompt = _prompt()
    adapter = make_adapter("llama-server", MODEL, base_url=cassette_base_url + "/v1", api_key=cassettes.key)
    scorer = LabelMargin().bind(adapter)
    masks = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=bool)
    with cassettes.vcr().use_cassette("adapter_label_margin.yaml"):
        completions = [await adapter.send(scorer.request(m)) for m in prompt.render_many(masks)]
    scores = scorer.score_many(completions)
    assert np.isfinite(scores).all()
    assert len(set(np.round(scores, 6))) == 3  # every mask gives its own score
    assert all(len(c.logprobs[0][0].top) == 20 for c in completions)


async def test_anthropic_adapter_frequency_and_similarity(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    """The Anthropic protocol (no logprobs): sampled log-odds and similarity to the original answer."""
    adapter = make_adapter("anthropic", MODEL, base_url=cassette_base_url, api_key=cassettes.key)
    prompt = _prompt()
    freq = AnswerFrequency(samples=3, temperature=1.0, max_tokens=3, stop=("\n",))
    sim = AnswerSimilarity(max_tokens=24, stop=("\n",))
    with pytest.raises(Exception, match="top_logprobs"):
        LabelMargin().validate(adapter)  # refused before any spend
    freq = freq.bind(adapter)
    sim.validate(adapter)
    with cassettes.vcr().use_cassette("adapter_anthropic.yaml"):
        full = prompt.render(prompt.full_mask())
        reference = await adapter.send(sim.reference_request(full))
        sim = sim.bind(adapter, reference)
        masked = prompt.render([1, 1, 0])
        same = sim.score(await adapter.send(sim.request(full)))
        other = sim.score(await adapter.send(sim.request(masked)))
        sampled = await adapter.send(freq.request(full))
    assert same == pytest.approx(1.0)  # temperature 0: the original prompt reproduces its answer
    assert 0.0 <= other <= 1.0
    assert len(sampled.texts) == 3
    assert math.isfinite(freq.score(sampled))
    assert abs(freq.score(sampled)) <= math.log((3 + 0.5) / 0.5) + 1e-12


async def test_openai_responses_through_adapter(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    """The Responses protocol on the real server: answer and usage parse, with the API's 16-token floor on
    max_output_tokens; llama-server's /v1/responses refuses top_logprobs (HTTP 400), a clear error, not retried."""
    adapter = make_adapter("openai-responses", MODEL, base_url=cassette_base_url + "/v1", api_key=cassettes.key)
    prompt = _prompt()
    full = tuple(prompt.render(prompt.full_mask()))
    runner = Runner(adapter, max_attempts=3, backoff_initial=0.01)
    with cassettes.vcr().use_cassette("adapter_openai_responses.yaml"):
        answer = await runner.send(Request(full, max_tokens=4))
        with pytest.raises(InvalidRequestError, match="HTTP 400"):
            await runner.send(Request(full, max_tokens=1, top_logprobs=5))
    assert answer.text.strip() and 0 < answer.usage.output_tokens <= 16 and answer.usage.input_tokens > 0
    assert answer.logprobs is None and answer.finish_reasons[0] in ("completed", "length")
    assert runner.stats.api_calls == 2 and runner.stats.retries == 0


@pytest.mark.skipif(RECORDING, reason="checks replay behaviour")
async def test_replay_matches_on_body(cassettes: SimpleNamespace) -> None:
    """A request whose body differs from the recording is refused, never sent anywhere."""
    with cassettes.vcr().use_cassette("openai_chat_logprobs.yaml"):
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key=cassettes.key, max_retries=0)
        with pytest.raises((CannotOverwriteExistingCassetteException, openai.APIConnectionError)) as info:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": QUESTION.format(content="Ice is hot.")}],
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=20,
            )
    err = info.value
    if isinstance(err, openai.APIConnectionError):  # older SDKs wrap transport errors
        err = err.__cause__ or err.__context__
    assert isinstance(err, CannotOverwriteExistingCassetteException)


def test_cassettes_hold_no_credentials(cassettes: SimpleNamespace) -> None:
    files = sorted(cassettes.dir.glob("*.yaml"))
    assert len(files) >= 5, "cassettes are missing: re-record with SPEX_RECORD=1"
    for path in files:
        text = path.read_text()
        assert cassettes.key not in text, f"{path.name} contains the recording key"
        for pattern in cassettes.patterns:
            assert not pattern.search(text), f"{path.name} matches {pattern.pattern}"
        assert "127.0.0.1" not in text and "llama-server.invalid" in text  # host pinned, port dropped


def test_scrubbers_remove_auth_headers(cassettes: SimpleNamespace) -> None:
    """The scrub filters themselves (recording a fresh cassette must not depend on luck)."""
    from vcr.request import Request as VcrRequest

    req = VcrRequest(
        "POST",
        "http://127.0.0.1:41234/v1/chat/completions",
        b"{}",
        {"Authorization": f"Bearer {cassettes.key}", "x-api-key": cassettes.key, "OpenAI-Organization": "org",
         "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    out = cassettes.scrub_request(req)
    assert dict(out.headers) == {"content-type": "application/json"}
    assert out.uri == "http://llama-server.invalid/v1/chat/completions"
    resp = cassettes.scrub_response({"headers": {"Set-Cookie": ["a"], "openai-organization": ["o"], "Content-Type": ["x"]}})
    assert resp["headers"] == {"Content-Type": ["x"]}


async def test_value_function_end_to_end(cassette_base_url: str, cassettes: SimpleNamespace) -> None:
    """masks → MaskedPrompt → scorer → Runner (concurrent) → adapter → scores, replayed by body matching."""
    from providers.runner import Runner
    from providers.scorers import AnswerLogprob
    from providers.value_function import LLMValueFunction

    prompt = MaskedPrompt.from_text("Fire is hot and ice is cold.", template=QUESTION)
    masks = np.ones((4, prompt.n_features), dtype=bool)
    masks[1, 2] = masks[2, 6] = False
    masks[3, :4] = False
    adapter = make_adapter("llama-server", MODEL, base_url=cassette_base_url + "/v1", api_key=cassettes.key)
    # built (and validated: labels tokenized by the live server while recording) outside the cassette
    margin = LLMValueFunction(prompt, adapter, LabelMargin(), Runner(adapter, concurrency=4), progress=False)
    first = LLMValueFunction(prompt, adapter, AnswerLogprob(), Runner(adapter, concurrency=4), progress=False)
    with cassettes.vcr().use_cassette("value_function.yaml"):
        margins = await margin(masks)
        logprobs = await first(masks)
    assert margin.stats["api_calls"] == 4 and first.stats["api_calls"] == 5  # + the reference answer
    assert np.isfinite(margins).all() and np.ptp(margins) > 0
    # the unmasked prompt scores its own first token; llama-server is not batch-invariant (continuous
    # batching changes the arithmetic), so a concurrent query differs from the lone reference call by
    # up to ~0.3 nats (measured 0.09-0.27); n_parallel=1 makes it exact
    assert logprobs[0] == pytest.approx(first.scorer.reference.logprobs[0][0].logprob, abs=0.5)
    assert (logprobs <= 0).all()
