"""Live tests against the real llama-server + Gemma-3-270M (session fixture `local_server`; run in CI).

They check real behaviour, not wiring: finite label margins from real top_logprobs, the Anthropic protocol
through the official SDK, masks that move scores, and an end-to-end value function whose rerun on a disk
cache makes zero API calls. Each test sends only a handful of short queries.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request

import anthropic
import numpy as np
import openai
import pytest

from providers.adapters import make_adapter
from providers.cache import cache_key
from providers.local import MODEL_NAME, LocalServer, LocalServerError, default_model_path, model_alias
from providers.prompt import MaskedPrompt
from providers.runner import Runner
from providers.scorers import AnswerFrequency, AnswerSimilarity, LabelMargin, ScorerError
from providers.types import Message, Request
from providers.value_function import LLMValueFunction

pytestmark = pytest.mark.live

QUESTION = "Answer with one word, True or False.\nStatement: {content}"


def _adapter(server: LocalServer):
    return make_adapter("llama-server", server.model, base_url=server.base_url)


def test_tokenizer_checks_single_token_labels(local_server: LocalServer) -> None:
    assert len(local_server.tokenize("True")) == 1 and len(local_server.tokenize("False")) == 1
    adapter = _adapter(local_server)
    LabelMargin(tokenizer=local_server.tokenize).validate(adapter)
    with pytest.raises(ScorerError, match="tokens"):
        LabelMargin(labels=("True", "Not at all"), tokenizer=local_server.tokenize).validate(adapter)
    # no tokenizer passed: the running LocalServer is found by the adapter's base_url (OpenAI or Anthropic)
    anthropic_adapter = make_adapter("anthropic", local_server.model, base_url=local_server.root_url)
    with pytest.raises(ScorerError, match="'Not at all' is 3 tokens"):
        LabelMargin(labels=("True", "Not at all")).validate(adapter)
    with pytest.raises(ScorerError, match="too small for label 'Not at all'"):
        AnswerFrequency(labels=("True", "Not at all"), max_tokens=2).validate(anthropic_adapter)


async def test_chat_top_logprobs_give_finite_label_margin(local_server: LocalServer) -> None:
    client = openai.AsyncOpenAI(base_url=local_server.base_url, api_key="local", max_retries=0)
    r = await client.chat.completions.create(
        model=local_server.model,
        messages=[{"role": "user", "content": QUESTION.format(content="Fire is hot.")}],
        max_tokens=1, temperature=0, logprobs=True, top_logprobs=20,
    )
    top = r.choices[0].logprobs.content[0].top_logprobs
    assert len(top) == 20
    assert sum(math.exp(t.logprob) for t in top) <= 1 + 1e-6
    # and through our adapter + scorer
    adapter = _adapter(local_server)
    scorer = LabelMargin(tokenizer=local_server.tokenize).bind(adapter)
    prompt = MaskedPrompt.from_text("Fire is hot.", template=QUESTION)
    completion = await adapter.send(scorer.request(prompt.render(prompt.full_mask())))
    a, b, _ = scorer.label_logprobs(completion)
    assert math.isfinite(a - b) and a <= 0 and b <= 0


async def test_raw_completion_few_shot_lists_both_labels(local_server: LocalServer) -> None:
    """Few-shot text on the legacy completions endpoint: the next token is a label, so no bound is needed."""
    shots = "Statement: The sun is hot.\nAnswer: True\nStatement: Snow is black.\nAnswer: False\n"
    prompt = MaskedPrompt.from_text("Fire is hot.", template=shots + "Statement: {content}\nAnswer:")
    adapter, scorer = _adapter(local_server), LabelMargin(raw_completion=True, tokenizer=local_server.tokenize)
    vf = LLMValueFunction(prompt, adapter, scorer, Runner(adapter, concurrency=1), progress=False)
    scores = await vf(np.array([[1, 1, 1], [1, 1, 0]], dtype=bool))
    assert np.isfinite(scores).all() and vf.scorer.bound_hits == 0
    assert abs(scores[0]) < 5  # both labels carry real probability mass


async def test_anthropic_messages_through_sdk(local_server: LocalServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=local_server.root_url, api_key="local", max_retries=0)
    m = await client.messages.create(
        model=local_server.model, max_tokens=8, system="Answer in one word.",
        messages=[{"role": "user", "content": "Is fire hot?"}], extra_body={"temperature": 0},
    )
    assert m.type == "message" and m.content[0].text
    assert m.stop_reason in ("max_tokens", "end_turn", "stop_sequence")
    assert 0 < m.usage.output_tokens <= 8


async def test_masking_changes_scores(local_server: LocalServer) -> None:
    prompt = MaskedPrompt.from_text("Fire is hot and ice is cold.", template=QUESTION)
    adapter = _adapter(local_server)
    scorer = LabelMargin().bind(adapter)
    masks = np.ones((3, prompt.n_features), dtype=bool)
    masks[1, [0, 1, 2, 3]] = False  # hide "Fire is hot and"
    masks[2, :] = False
    requests = [scorer.request(m) for m in prompt.render_many(masks)]
    completions = [await adapter.send(r) for r in requests]
    scores = scorer.score_many(completions)
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 1e-3, scores


async def test_value_function_rerun_on_disk_cache_is_free(local_server: LocalServer, tmp_path) -> None:
    prompt = MaskedPrompt.from_text("Fire is hot.", template=QUESTION)
    masks = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=bool)

    async def run() -> tuple[np.ndarray, dict]:
        adapter = _adapter(local_server)
        runner = Runner(adapter, cache=str(tmp_path / "cache"), concurrency=4, max_queries=10)
        vf = LLMValueFunction(prompt, adapter, LabelMargin(tokenizer=local_server.tokenize), runner, progress=False)
        return await vf(masks), vf.stats

    first, stats1 = await run()
    second, stats2 = await run()
    assert stats1["api_calls"] == 4 and stats1["cache_hits"] == 0
    assert stats2["api_calls"] == 0 and stats2["cache_hits"] == 4
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()


async def test_similarity_to_reference_answer(local_server: LocalServer, tmp_path) -> None:
    prompt = MaskedPrompt.from_text("The capital of France is Paris.", template="Repeat this sentence: {content}")
    adapter = _adapter(local_server)
    # one query at a time: llama-server's batching is not numerically invariant, and greedy decoding of the
    # unmasked prompt must reproduce the reference exactly
    runner = Runner(adapter, concurrency=1)
    vf = LLMValueFunction(prompt, adapter, AnswerSimilarity(max_tokens=24, stop=("\n",)), runner, progress=False)
    ref = await vf.reference()
    assert ref.text.strip()
    scores = await vf(np.array([[1] * prompt.n_features, [0] * prompt.n_features], dtype=bool))
    assert scores[0] == pytest.approx(1.0)  # temperature 0 reproduces the reference
    assert 0.0 <= scores[1] < 1.0


async def test_anthropic_protocol_answer_frequency(local_server: LocalServer) -> None:
    """No logprobs on the Anthropic protocol: k sampled answers per mask, each a separate call."""
    adapter = make_adapter("anthropic", local_server.model, base_url=local_server.root_url)
    prompt = MaskedPrompt.from_text("Fire is hot.", template=QUESTION)
    scorer = AnswerFrequency(samples=3, max_tokens=3, stop=("\n",), tokenizer=local_server.tokenize)
    vf = LLMValueFunction(prompt, adapter, scorer, Runner(adapter, concurrency=4), progress=False)
    scores = await vf(np.array([[1, 1, 1], [0, 0, 0]], dtype=bool))
    assert vf.stats["api_calls"] == 6  # 2 masks x 3 samples
    bound = math.log(3.5 / 0.5)
    assert np.all(np.abs(scores) <= bound + 1e-12)


def test_each_model_file_gets_its_own_name_and_cache_keys(tmp_path) -> None:
    """No server needed: the alias (sent as the model, hence in every cache key) identifies the file's content."""
    base = bytes(range(256)) * (12 * 4096)  # 12 MiB
    files = {
        "a": base,
        "last_byte": base[:-1] + b"x",
        "first_byte": b"x" + base[1:],
        "longer": base + b"\0",
    }
    for name, data in files.items():
        (tmp_path / f"{name}.gguf").write_bytes(data)
    aliases = {name: model_alias(tmp_path / f"{name}.gguf") for name in files}
    assert len(set(aliases.values())) == len(files), aliases
    assert aliases["a"].startswith("a-") and len(aliases["a"]) == len("a-") + 8
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.gguf").write_bytes(base)
    assert model_alias(tmp_path / "copy" / "a.gguf") == aliases["a"]  # same content, same name (and cache)
    assert LocalServer(model_path=tmp_path / "last_byte.gguf").model == aliases["last_byte"]
    assert LocalServer().model == model_alias(None) == MODEL_NAME
    request = Request((Message("user", "Is fire hot?"),), max_tokens=1)
    keys = {cache_key(make_adapter("llama-server", alias, base_url="http://127.0.0.1:9/v1").cache_material(request))
            for alias in aliases.values()}
    assert len(keys) == len(files)  # two local models never serve each other's cached answers
    with pytest.raises(LocalServerError, match="cannot be read"):
        LocalServer(model_path=tmp_path / "missing.gguf").model


def test_bundled_gemma_keeps_its_name(local_server: LocalServer) -> None:
    assert local_server.model == MODEL_NAME
    assert model_alias(default_model_path()) == MODEL_NAME  # the demo, cassettes and SDK defaults rely on it
    with urllib.request.urlopen(local_server.base_url + "/models", timeout=5) as r:
        assert MODEL_NAME in r.read().decode()


@pytest.mark.slow
def test_server_lifecycle_and_startup_errors(tmp_path) -> None:
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(LocalServerError, match="exited with code") as info:
        LocalServer(model_path=bad, n_parallel=1, startup_timeout=60).start()
    assert "gguf" in str(info.value).lower()  # the server's own last log lines explain why
    server = LocalServer(n_parallel=1, ctx_size=256)
    with server:
        assert server.running
        health = server.root_url + "/health"
        with urllib.request.urlopen(health, timeout=5) as r:
            assert r.status == 200
        proc = server._proc
    assert not server.running and proc is not None and proc.poll() is not None
    with pytest.raises(urllib.error.URLError):  # stopped: the port no longer answers
        urllib.request.urlopen(health, timeout=5)
    with pytest.raises(LocalServerError, match="not been started"):
        _ = server.base_url
