"""Adapters through the official SDKs against a real local HTTP server: wire bodies, parsing, errors, keys."""

from __future__ import annotations

import hashlib
import pickle

import httpx2
import pytest
from fakeserver import FakeServer, body_hash

from providers.adapters import AnthropicAdapter, CompatibleAdapter, OpenAIAdapter, OpenAIResponsesAdapter, make_adapter
from providers.adapters.base import _OFFLINE_BPE, seed_tiktoken_offline, tiktoken_encoding
from providers.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    MalformedResponseError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    TransportError,
    UnexpectedAnswerError,
)
from providers.runner import Runner
from providers.scorers import LabelMargin
from providers.types import Message, Request, Usage

SECRET = "sk-test-adapters-SECRET-0123456789"
Q = (Message("system", "Answer True or False."), Message("user", "Is the sky green?"))


@pytest.fixture(scope="module")
def server():
    with FakeServer(timeout_hold=1.0) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server):
    server.state.control({"reset": True})


def openai_at(server, **kw) -> OpenAIAdapter:
    """The official-API adapter (key required, real prices) pointed at the fake server's URL."""
    a = make_adapter("openai", "gpt-4o-mini", api_key=SECRET, **kw)
    a.base_url = server.url + "/v1"
    return a


async def test_openai_chat_wire_format_and_parse(server):
    a = openai_at(server)
    req = Request(messages=Q, max_tokens=3, top_logprobs=5, samples=2, seed=7, stop=("\n",))
    c = await a.send(req)
    sent = server.state.bodies[-1]
    assert sent == a.body(req)  # what the SDK put on the wire is exactly the canonical body
    assert sent == {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": Q[0].content},
                                                          {"role": "user", "content": Q[1].content}],
                    "max_completion_tokens": 3, "temperature": 0.0, "logprobs": True, "top_logprobs": 5, "n": 2,
                    "seed": 7, "stop": ["\n"]}
    headers = server.state.headers_seen[-1]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-stainless-retry-count"] == "0"
    assert len(c.texts) == 2 and len(c.logprobs) == 2
    first = c.logprobs[0][0]
    assert first.token in ("True", "False") and len(first.top) == 5
    assert first.top[0][1] >= first.top[-1][1]
    assert c.usage.input_tokens > 0 and c.usage.output_tokens == 6
    assert c.finish_reasons == ("stop", "stop")
    assert server.stats()["paid"] == {body_hash(sent): 1}


async def test_openai_responses_wire_format_logprobs_and_16_token_floor(server, tmp_path):
    a = make_adapter("openai-responses", "gpt-4o-mini", api_key=SECRET)
    a.base_url = server.url + "/v1"
    assert isinstance(a, OpenAIResponsesAdapter) and a.provider == "openai" and not a.multi_sample
    req = Request(messages=Q, max_tokens=1, top_logprobs=5)
    assert a.endpoint(req) == "/responses"
    runner = Runner(a, cache=str(tmp_path))
    c = await runner.send(req)
    sent = server.state.bodies[-1]
    assert sent == a.body(req) == {
        "model": "gpt-4o-mini", "input": [{"role": "system", "content": Q[0].content},
                                          {"role": "user", "content": Q[1].content}],
        "max_output_tokens": 16, "temperature": 0.0, "store": False, "top_logprobs": 5,
        "include": ["message.output_text.logprobs"]}
    assert server.state.headers_seen[-1]["authorization"] == f"Bearer {SECRET}"
    first = c.logprobs[0][0]
    assert first.token in ("True", "False") and len(first.top) == 5 and first.top[0][1] >= first.top[-1][1]
    assert "".join(t.token for t in c.logprobs[0]) == c.text  # message text only: the reasoning item is skipped
    assert c.usage.output_tokens == 3 and c.usage.cached_input_tokens == 2 and c.finish_reasons == ("completed",)
    # the API bills up to 16 output tokens even when a scorer reads one: caps reserve for that
    assert a.output_token_bound(req) == 16
    assert runner.worst_case_cost(req) == pytest.approx(
        runner.price.cost(Usage(a.input_token_bound(req), 16)))
    assert LabelMargin().bind(a).score(c) == pytest.approx(dict(first.top)["True"] - dict(first.top)["False"])
    # cache keys keep the two APIs apart: the same request through Chat Completions is a different question
    chat = openai_at(server)
    assert chat.cache_material(req) != a.cache_material(req)
    with pytest.raises(ConfigurationError, match="stop sequences"):
        a.body(Request(messages=Q, stop=("\n",)))
    with pytest.raises(ConfigurationError, match="raw-completion"):
        a.body(Request(messages=Q, raw_completion=True))
    assert server.stats()["requests"] == 1


async def test_answer_without_requested_logprobs_is_fatal_not_retried(server):
    """A server that ignores `logprobs` answers the same way every time: one paid call, then a clear error."""
    a = make_adapter("compatible", "m", base_url=server.url + "/v1")
    req = Request(messages=Q, max_tokens=1, top_logprobs=5)
    runner = Runner(a, max_attempts=4, backoff_initial=0.01)
    server.state.control({"drop_logprobs": True})
    with pytest.raises(UnexpectedAnswerError, match="without them"):
        await runner.send(req)
    assert server.stats()["requests"] == 1 and runner.stats.retries == 0


async def test_legacy_completions_and_prompt_logprobs_on_compatible_server(server):
    a = make_adapter("vllm", "my-model", base_url=server.url + "/v1")
    assert isinstance(a, CompatibleAdapter) and a.prompt_logprobs and not a.multi_sample
    req = Request(messages=(Message("user", "The sky is blue today"),), raw_completion=True, top_logprobs=3,
                  prompt_logprobs=1, max_tokens=2)
    assert a.endpoint(req) == "/completions"
    c = await a.send(req)
    assert server.state.bodies[-1] == {"model": "my-model", "prompt": "The sky is blue today", "max_tokens": 2,
                                       "logprobs": 3, "temperature": 0.0, "prompt_logprobs": 1}
    assert server.state.headers_seen[-1]["authorization"] == "Bearer sk-no-key-required"
    assert "".join(t.token for t in c.logprobs[0]) == c.text and len(c.logprobs[0]) == 2
    assert [t.token for t in c.prompt_logprobs] == [" sky", " is", " blue", " today"]  # first prompt token has none
    assert all(t.logprob < 0 for t in c.prompt_logprobs)
    # chat endpoint sends max_tokens (not max_completion_tokens) to compatible servers, prompt_logprobs in body
    chat = Request(messages=(Message("user", "The sky is blue"),), prompt_logprobs=1)
    c2 = await a.send(chat)
    assert server.state.bodies[-1]["max_tokens"] == 16 and server.state.bodies[-1]["prompt_logprobs"] == 1
    assert len(c2.prompt_logprobs) == 3


async def test_anthropic_wire_format_and_samples_as_separate_calls(server):
    a = make_adapter("anthropic", "claude-3-5-haiku-latest", base_url=server.url, api_key=SECRET)
    assert isinstance(a, AnthropicAdapter) and a.max_top_logprobs is None and not a.multi_sample
    req = Request(messages=Q, max_tokens=4, temperature=0.7, stop=("STOP",), samples=3)
    c = await a.send(req)
    sent = server.state.bodies[-1]
    assert sent == {"model": "claude-3-5-haiku-latest", "max_tokens": 4, "system": Q[0].content,
                    "messages": [{"role": "user", "content": Q[1].content}], "temperature": 0.7,
                    "stop_sequences": ["STOP"]}
    h = server.state.headers_seen[-1]
    assert SECRET in (h.get("x-api-key"), h.get("authorization", "").removeprefix("Bearer "))
    assert h["x-stainless-retry-count"] == "0" and "anthropic-version" in h
    assert server.stats()["requests"] == 3 and len(c.texts) == 3 and c.logprobs is None
    assert c.finish_reasons == ("end_turn",) * 3 and c.usage.output_tokens == 9


async def test_injected_http_client_is_used(server):
    seen = []

    async def hook(request):
        seen.append(str(request.url))

    client = httpx2.AsyncClient(event_hooks={"request": [hook]})
    a = make_adapter("compatible", "m", base_url=server.url + "/v1", http_client=client)
    await a.send(Request(messages=(Message("user", "hi"),)))
    assert seen == [server.url + "/v1/chat/completions"]
    await client.aclose()


def test_injected_client_on_a_second_event_loop(server):
    """A client instance belongs to one loop: a second loop gets a clear error and nothing is charged; a
    factory gives each loop its own client."""
    import asyncio

    one = make_adapter("compatible", "m", base_url=server.url + "/v1", http_client=httpx2.AsyncClient())
    r = Runner(one)
    asyncio.run(r.run([Request(messages=(Message("user", "first loop"),))]))
    with pytest.raises(ConfigurationError, match="factory"):
        asyncio.run(r.run([Request(messages=(Message("user", "second loop"),))]))
    assert r.stats.api_calls == 1 and r.stats.unknown_outcome_spend == 0 and r.queries_left is None
    made = []
    many = make_adapter("compatible", "m", base_url=server.url + "/v1",
                        http_client=lambda: made.append(httpx2.AsyncClient()) or made[-1])
    r2 = Runner(many, max_queries=5)
    for i in range(2):
        asyncio.run(r2.run([Request(messages=(Message("user", f"loop {i}"),))]))
    assert len(made) == 2 and r2.stats.api_calls == 2 and r2.queries_left == 3


def test_capability_checks_fail_before_any_call(server):
    oa = openai_at(server)
    an = make_adapter("anthropic", "claude-3-5-haiku-latest", base_url=server.url)
    with pytest.raises(ConfigurationError, match="no logprobs"):
        an.body(Request(messages=Q, top_logprobs=1))
    with pytest.raises(ConfigurationError, match=r"\[0, 20\]"):
        oa.body(Request(messages=Q, top_logprobs=21))
    with pytest.raises(ConfigurationError, match="prompt_logprobs"):
        oa.body(Request(messages=Q, prompt_logprobs=1))
    with pytest.raises(ConfigurationError, match="raw-completion"):
        an.body(Request(messages=Q, raw_completion=True))
    with pytest.raises(ConfigurationError):
        oa.body(Request(messages=(), max_tokens=3))
    assert server.stats()["requests"] == 0


def test_reasoning_models_and_legacy_completions_refused_before_any_call(server):
    """o-series and gpt-5 return no logprobs, take only temperature 1 and spend max_tokens on hidden reasoning;
    api.openai.com's /completions serves only the instruct models: all refused before a request is sent."""
    for model in ("o3-mini", "gpt-5-mini", "o1"):
        r = make_adapter("openai", model, api_key=SECRET)
        assert r.reasoning and r.max_top_logprobs is None
        with pytest.raises(ConfigurationError, match="no logprobs"):
            r.body(Request(messages=Q, top_logprobs=5))
        with pytest.raises(ConfigurationError, match="temperature 1"):
            r.body(Request(messages=Q, max_tokens=2000))
        with pytest.raises(ConfigurationError, match="max_tokens >= 1024"):
            r.body(Request(messages=Q, max_tokens=4, temperature=1.0))
        assert r.body(Request(messages=Q, max_tokens=2000, temperature=1.0))["max_completion_tokens"] == 2000
    chat = make_adapter("openai", "gpt-5-chat-latest", api_key=SECRET)
    assert not chat.reasoning and chat.max_top_logprobs == 20
    with pytest.raises(ConfigurationError, match="legacy /completions"):
        openai_at(server).body(Request(messages=Q, raw_completion=True))
    instruct = make_adapter("openai", "gpt-3.5-turbo-instruct", api_key=SECRET)
    assert instruct.body(Request(messages=Q, raw_completion=True))["prompt"] == Q[0].content + Q[1].content
    # an OpenAI-compatible server's model names say nothing about OpenAI's families
    assert make_adapter("vllm", "o3-mini", base_url=server.url + "/v1").max_top_logprobs == 20
    assert server.stats()["requests"] == 0


def test_make_adapter_errors_and_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="unknown provider"):
        make_adapter("bard", "x")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        make_adapter("openai", "gpt-4o-mini")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        make_adapter("anthropic", "claude-3-5-haiku-latest")
    with pytest.raises(ConfigurationError, match="unknown openai model"):
        make_adapter("openai", "gpt-nonexistent", api_key=SECRET)
    with pytest.raises(ConfigurationError, match="base_url"):
        make_adapter("vllm", "m")
    with pytest.raises(ConfigurationError, match="model"):
        make_adapter("openai", "", api_key=SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = make_adapter("openai", "gpt-4o-mini-2024-07-18")
    # the key is nowhere in the object's state, repr or cache material, and the adapter refuses to pickle
    assert SECRET not in repr(a) and SECRET not in repr(vars(a))
    assert SECRET not in str(a.cache_material(Request(messages=Q)))
    with pytest.raises(TypeError):
        pickle.dumps(a)


def test_bpe_files_rebuilt_offline_are_byte_identical_to_openais(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert seed_tiktoken_offline("cl100k_base")
    (path,) = tmp_path.iterdir()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _OFFLINE_BPE["cl100k_base"][1]  # tiktoken's own hash
    assert not seed_tiktoken_offline("p50k_base")  # not shipped: callers fall back to chars/4


def test_count_tokens():
    oa = make_adapter("openai", "gpt-4o-mini", api_key=SECRET)
    assert tiktoken_encoding("gpt-4o-mini").name == "o200k_base"  # exact, offline
    assert tiktoken_encoding("gpt-4o-mini").encode("hello world") == [24912, 2375]
    assert oa.count_tokens("hello world") == 2
    an = make_adapter("anthropic", "claude-3-5-haiku-latest", api_key=SECRET)
    assert an.count_tokens("x" * 40) == 10  # documented approximation: ceil(chars / 4)
    req = Request(messages=Q)
    assert oa.input_token_bound(req) >= oa.estimate_input_tokens(req)


@pytest.mark.parametrize("kind,error", [
    ("401", AuthenticationError), ("403", PermissionDeniedError), ("400", InvalidRequestError),
    ("quota", QuotaExceededError), ("429", RateLimitError), ("500", ServerError), ("529", ServerError),
    ("malformed", MalformedResponseError), ("reset", TransportError), ("wrongshape", UnexpectedAnswerError),
])
async def test_errors_translated_by_status_and_code(server, kind, error):
    a = openai_at(server)
    server.script([kind])
    with pytest.raises(error) as info:
        await a.send(Request(messages=Q))
    import traceback

    shown = "".join(traceback.format_exception(info.value))
    assert SECRET not in shown and SECRET[:12] not in shown  # not even the part a provider echoes back
    chained, seen = [info.value.__cause__, info.value.__context__], set()
    while chained:  # nothing reachable from the error (e.g. the SDK's exception quoting the key) holds it
        e = chained.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            assert SECRET[:12] not in repr(e) and SECRET[:12] not in str(getattr(e, "body", ""))
            chained += [e.__cause__, e.__context__]
    assert server.stats()["requests"] == 1  # the SDK itself never retried
    assert info.value.billed_unknown == (kind in ("malformed", "reset", "wrongshape"))


async def test_refused_connection_is_not_charged(server):
    """Nothing reached a provider that refused the connection: no dollars are held against max_cost."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there
    a = make_adapter("openai", "gpt-4o", api_key=SECRET)
    a.base_url = f"http://127.0.0.1:{port}/v1"
    r = Runner(a, max_cost=0.05, max_attempts=3, backoff_initial=0.001, backoff_max=0.002)
    with pytest.raises(TransportError) as info:
        await r.send(Request((Message("user", "x" * 2000),), max_tokens=500))
    assert not info.value.billed_unknown and r.stats.spend == 0 and r.stats.unknown_outcome_spend == 0
    assert r.stats.retries == 2  # a refused connection is still worth retrying


async def test_timeout_is_transport_error(server):
    a = make_adapter("compatible", "m", base_url=server.url + "/v1", timeout=0.2)
    server.script([{"kind": "timeout", "hold": 0.6}])
    with pytest.raises(TransportError):
        await a.send(Request(messages=Q))
    assert server.stats()["requests"] == 1


async def test_anthropic_overloaded_529(server):
    a = make_adapter("anthropic", "claude-3-5-haiku-latest", base_url=server.url)
    server.script(["529"])
    with pytest.raises(ServerError) as info:
        await a.send(Request(messages=Q))
    assert info.value.status == 529
