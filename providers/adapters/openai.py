"""OpenAI Chat Completions and legacy Completions, for api.openai.com and OpenAI-compatible servers.

Chat requests ask for `logprobs`/`top_logprobs` (at most 20) and `n` samples in one call. `raw_completion`
requests go to the legacy `/completions` endpoint (text in, no chat template), which OpenAI-compatible
servers (llama-server, vLLM, Ollama) serve. vLLM's `prompt_logprobs` (teacher forcing of the prompt) is a
body field next to the standard ones (what the SDK's `extra_body` would add). The body goes through the SDK
client's `post` (its auth, headers, base_url, transport and status errors; documented for raw requests)
rather than `create`, which would re-validate every message on each call: the body is already canonical.
`OpenAIResponsesAdapter` speaks the Responses API (`/responses`) instead, for models or accounts that use
it; Chat Completions stays the default because it can stop after one token, while the Responses API bills at
least 16 output tokens per call and has no stop sequences or `n`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from providers.adapters.base import COUNT_CONCURRENCY, COUNT_TIMEOUT, Adapter, tiktoken_encoding
from providers.errors import ConfigurationError, UnexpectedAnswerError
from providers.types import Completion, Request, TokenLogprob, Usage

if TYPE_CHECKING:
    import openai


# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 except its chat variant): no logprobs, temperature 1 only,
# and hidden reasoning tokens come out of max_completion_tokens before any answer does.
_REASONING = re.compile(r"^(o\d|gpt-5)(?!-chat)")
REASONING_MIN_TOKENS = 1024
# Models the legacy /completions endpoint serves on api.openai.com.
_LEGACY_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
OPENAI_CACHE_MIN = 1024  # shortest prompt OpenAI's prompt caching applies to (tokens)


class OpenAIAdapter(Adapter):
    """OpenAI's own API (`provider="openai"`): Chat Completions with token logprobs, `n` samples per call.

    Reasoning models (o-series, gpt-5) return no logprobs and take only temperature 1, and their hidden
    reasoning spends max_tokens first: requests that cannot work with them are refused before any spend.
    """

    provider = "openai"
    max_top_logprobs: int | None = 20
    prompt_logprobs = False
    multi_sample = True
    max_tokens_param = "max_completion_tokens"

    def __init__(self, model: str, base_url: str | None, api_key: str | None, http_client: Any = None,
                 timeout: float = 60.0) -> None:
        super().__init__(model, base_url, api_key, http_client, timeout)
        self.reasoning = bool(_REASONING.match(model))
        if self.reasoning:
            self.max_top_logprobs = None

    def check(self, request: Request) -> None:
        if self.reasoning:
            if request.top_logprobs is not None or request.prompt_logprobs is not None:
                raise ConfigurationError(f"{self.model} is a reasoning model: it returns no logprobs; use a "
                                         "sampling scorer (frequency with temperature=1, similarity)")
            if request.temperature != 1.0:
                raise ConfigurationError(f"{self.model} is a reasoning model: it accepts only temperature 1, "
                                         f"got {request.temperature}")
            if request.max_tokens < REASONING_MIN_TOKENS:
                raise ConfigurationError(
                    f"{self.model} is a reasoning model: its hidden reasoning is taken from max_tokens before it "
                    f"answers, so max_tokens={request.max_tokens} would leave the answer empty (yet billed); use "
                    f"max_tokens >= {REASONING_MIN_TOKENS}")
        if request.raw_completion and self.provider == "openai" and not self.model.startswith(_LEGACY_COMPLETION_MODELS):
            raise ConfigurationError(f"{self.model} is not served by OpenAI's legacy /completions endpoint (only "
                                     f"{', '.join(_LEGACY_COMPLETION_MODELS)}); send chat messages instead")
        super().check(request)

    def _make_client(self, api_key: str | None) -> openai.AsyncOpenAI:
        # Imported on the first call sent (~0.8 s): checking, planning and answers served from the cache never
        # load the SDK, so a cached rerun or a Ray gateway starts without it.
        import openai

        return openai.AsyncOpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout,
                                  http_client=self._http_for_loop(), default_headers=self._auth_headers())

    def endpoint(self, request: Request) -> str:
        return "/completions" if request.raw_completion else "/chat/completions"

    def body(self, request: Request) -> dict[str, Any]:
        self.check(request)
        b: dict[str, Any] = {"model": self.model}
        if request.raw_completion:
            b["prompt"] = "".join(m.content for m in request.messages)
            b["max_tokens"] = request.max_tokens
            if request.top_logprobs is not None:
                b["logprobs"] = request.top_logprobs
        else:
            b["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            b[self.max_tokens_param] = request.max_tokens
            if request.top_logprobs is not None:
                b["logprobs"] = True
                b["top_logprobs"] = request.top_logprobs
        b["temperature"] = request.temperature
        if request.samples > 1:
            b["n"] = request.samples
        if request.seed is not None:
            b["seed"] = request.seed
        if request.stop:
            b["stop"] = list(request.stop)
        if request.prompt_logprobs is not None:
            b["prompt_logprobs"] = request.prompt_logprobs
        if self.prompt_cache_key and self.cached_prefix_tokens(request):
            b["prompt_cache_key"] = self._cache_routing_key(request)
        return b

    prompt_cache_key = True  # OpenAI's routing hint for prompts sharing a cached prefix (not on other servers)

    def cached_prefix_tokens(self, request: Request, prefix_tokens: int | None = None) -> int:
        """OpenAI caches prompts of >= 1024 tokens automatically, in 128-token steps of the repeated prefix: the
        fixed system message (rendered first) is that prefix."""
        if not self.cacheable_prefix(request):
            return 0
        n = self.count_tokens(request.messages[0].content) + 4 if prefix_tokens is None else prefix_tokens
        return 0 if n < OPENAI_CACHE_MIN else OPENAI_CACHE_MIN + (n - OPENAI_CACHE_MIN) // 128 * 128

    def cacheable_prefix(self, request: Request) -> str:
        """The leading system message (chat requests only; other servers may cache too, OpenAI's rule is used)."""
        if request.raw_completion or not request.messages or request.messages[0].role != "system":
            return ""
        return request.messages[0].content

    def _cache_routing_key(self, request: Request) -> str:
        """The same key for every prompt that starts with this system message (no user text in it)."""
        return hashlib.sha256(f"{self.model}\n{request.messages[0].content}".encode()).hexdigest()[:32]


    def parse(self, payload: Mapping[str, Any], request: Request) -> Completion:
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        if not choices:
            raise ValueError("answer has no choices")
        if request.raw_completion:
            texts = tuple(c.get("text") or "" for c in choices)
        else:
            texts = tuple((c.get("message") or {}).get("content") or "" for c in choices)
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = tuple(_token_logprobs(c.get("logprobs")) for c in choices)
        prompt_lps = None
        if request.prompt_logprobs is not None:
            rows = payload.get("prompt_logprobs", choices[0].get("prompt_logprobs"))
            if rows is None:
                raise UnexpectedAnswerError(f"{self.base_url} ignored prompt_logprobs (only some servers, e.g. "
                                            "vLLM, offer them)")
            prompt_lps = _prompt_logprobs(rows)
        u = payload.get("usage") or {}
        cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(cached))
        return Completion(texts=texts, logprobs=logprobs, prompt_logprobs=prompt_lps, usage=usage,
                          model=str(payload.get("model") or self.model),
                          finish_reasons=tuple(str(c.get("finish_reason") or "") for c in choices))

    def count_tokens(self, text: str) -> int:
        """Exact tiktoken count for the model's encoding when available offline, else ceil(chars / 4)."""
        enc = tiktoken_encoding(self.model)
        return super().count_tokens(text) if enc is None else len(enc.encode(text, disallowed_special=()))


class CompatibleAdapter(OpenAIAdapter):
    """Any OpenAI-compatible server by base_url (llama-server, vLLM, Ollama): free unless priced.

    `max_tokens` is sent (not `max_completion_tokens`). Prompt logprobs (teacher forcing) are claimed only
    with `prompt_logprobs=True` (make_adapter sets it for provider "vllm"): llama-server and Ollama ignore
    them, so scorers that need them are refused by `validate` before any spend rather than failing on the
    first paid call. Samples are separate calls unless `multi_sample=True` says the server honours `n`.
    Token counts use the chars/4 approximation.
    """

    provider = "compatible"
    prompt_logprobs = False
    multi_sample = False
    prompt_cache_key = False
    max_tokens_param = "max_tokens"

    def __init__(self, model: str, base_url: str | None, api_key: str | None, http_client: Any = None,
                 timeout: float = 60.0, multi_sample: bool = False, max_top_logprobs: int | None = 20,
                 prompt_logprobs: bool = False) -> None:
        super().__init__(model, base_url, api_key, http_client, timeout)
        self.reasoning = False  # model names on other servers say nothing about OpenAI's model families
        self.prompt_logprobs = prompt_logprobs
        self.multi_sample = multi_sample
        self.max_top_logprobs = max_top_logprobs

    def count_tokens(self, text: str) -> int:
        return Adapter.count_tokens(self, text)

    async def _count_tokens(self, requests: Sequence[Request]) -> list[int] | None:
        """llama-server's free counters: `/tokenize` of the prompt as the server builds it (`/apply-template`
        renders chat messages with the model's chat template first), BOS included as the server adds it. A
        server without them (vLLM, Ollama) fails here, and the estimate falls back to chars/4."""
        if not self.base_url:
            return None
        client = self.client()
        root = self.base_url.rstrip("/").removesuffix("/v1")
        slots = asyncio.Semaphore(COUNT_CONCURRENCY)
        opts = {"timeout": COUNT_TIMEOUT}

        async def one(request: Request) -> int:
            async with slots:
                if request.raw_completion:
                    prompt = "".join(m.content for m in request.messages)  # as `body` sends it
                else:
                    applied = await client.post(root + "/apply-template", cast_to=object, options=opts,
                                                body={"messages": [{"role": m.role, "content": m.content}
                                                                   for m in request.messages]})
                    prompt = applied["prompt"]
                tokens = await client.post(root + "/tokenize", cast_to=object, options=opts,
                                           body={"content": prompt, "add_special": True})
            return len(tokens["tokens"])

        return list(await asyncio.gather(*(one(r) for r in requests)))


class OpenAIResponsesAdapter(OpenAIAdapter):
    """OpenAI's Responses API (`provider="openai-responses"`): token logprobs through `top_logprobs` and
    `include=["message.output_text.logprobs"]`, one sample per call, answers not stored (`store: false`).

    The API rejects `max_output_tokens` below 16, so every call may generate (and bill) 16 tokens even when a
    scorer reads one; cost bounds use that. It has no stop sequences, seed or raw completions: scorers that
    need them are refused before any spend.
    """

    multi_sample = False
    min_output_tokens = 16

    def endpoint(self, request: Request) -> str:
        return "/responses"

    def output_token_bound(self, request: Request) -> int:
        return max(request.max_tokens, self.min_output_tokens)

    def check(self, request: Request) -> None:
        if request.raw_completion:
            raise ConfigurationError("the Responses API has no raw-completion endpoint; use chat messages")
        super().check(request)
        if request.stop:
            raise ConfigurationError("the Responses API has no stop sequences; use provider 'openai' "
                                     "(Chat Completions) for this scorer")

    def body(self, request: Request) -> dict[str, Any]:
        self.check(request)
        b: dict[str, Any] = {"model": self.model,
                             "input": [{"role": m.role, "content": m.content} for m in request.messages],
                             "max_output_tokens": self.output_token_bound(request),
                             "temperature": request.temperature, "store": False}
        if request.top_logprobs is not None:
            b["top_logprobs"] = request.top_logprobs
            b["include"] = ["message.output_text.logprobs"]
        return b

    def parse(self, payload: Mapping[str, Any], request: Request) -> Completion:
        if payload.get("status") == "failed" or payload.get("error"):
            raise ValueError(f"response failed: {str(payload.get('error'))[:200]}")
        parts = [c for item in payload["output"] if item.get("type") == "message"
                 for c in (item.get("content") or ()) if c.get("type") == "output_text"]
        text = "".join(c.get("text") or "" for c in parts)
        logprobs = None
        if request.top_logprobs is not None:
            tokens = [t for c in parts for t in (c.get("logprobs") or ())]
            if text and not tokens:
                raise _ignored_logprobs()
            logprobs = (tuple(TokenLogprob(t["token"], float(t["logprob"]),
                                           tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ()))
                              for t in tokens),)
        u = payload.get("usage") or {}
        cached = (u.get("input_tokens_details") or {}).get("cached_tokens") or 0
        incomplete = (payload.get("incomplete_details") or {}).get("reason")
        finish = "length" if incomplete == "max_output_tokens" else str(incomplete or payload.get("status") or "")
        return Completion(texts=(text,), logprobs=logprobs,
                          usage=Usage(int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0), int(cached)),
                          model=str(payload.get("model") or self.model), finish_reasons=(finish,))


def _token_logprobs(lp: Mapping[str, Any] | None) -> tuple[TokenLogprob, ...]:
    """Per-token logprobs from chat format ({"content": [...]}) or legacy completions format."""
    if lp is None:
        raise _ignored_logprobs()
    if "content" in lp:
        return tuple(
            TokenLogprob(t["token"], float(t["logprob"]),
                         tuple((a["token"], float(a["logprob"])) for a in (t.get("top_logprobs") or ())))
            for t in (lp["content"] or ())
        )
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return tuple(
        TokenLogprob(tok, float(v), tuple(sorted(((a, float(b)) for a, b in (top or {}).items()), key=lambda x: -x[1])))
        for tok, v, top in zip(lp["tokens"], lp["token_logprobs"], tops)
    )


def _ignored_logprobs() -> UnexpectedAnswerError:
    """A well-formed answer without the logprobs asked for: asking again gets the same, so it is not retried."""
    return UnexpectedAnswerError("logprobs were requested but the server answered without them; use a sampling "
                               "scorer (frequency, similarity) for this server")


def _prompt_logprobs(rows: list[Any]) -> tuple[TokenLogprob, ...]:
    """vLLM prompt logprobs: per prompt position a {token_id: {logprob, rank, decoded_token}} dict whose first
    entry is the prompt token itself; the first position has none (None) and is skipped."""
    out = []
    for row in rows:
        if not row:
            continue
        entries = list(row.values())
        own = entries[0]
        top = sorted(((e.get("decoded_token", ""), float(e["logprob"])) for e in entries), key=lambda x: -x[1])
        out.append(TokenLogprob(own.get("decoded_token", ""), float(own["logprob"]), tuple(top)))
    return tuple(out)
