"""Anthropic Messages through the official async SDK: no logprobs, one sample per call.

System messages become the `system` field; `stop` becomes `stop_sequences`. There is no `seed`, so
several samples of one request are identical bodies sent as separate calls (the runner keys them apart).
Prompt caching: a system prompt long enough for Anthropic to cache (`cache_min_tokens` of the model, by the
chars/4 estimate) goes as one text block with `cache_control` (ephemeral), so every masked prompt of a run
reads it from the cache at a tenth of the input price after the first writes it (1.25x).
Token counts for estimates come from Anthropic's free `messages.count_tokens` endpoint (the exact count of
what a request would bill, never a paid call); without it, the chars/4 approximation.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Mapping, Sequence

import anthropic

from providers.adapters.base import COUNT_CONCURRENCY, COUNT_TIMEOUT, Adapter
from providers.errors import ConfigurationError
from providers.types import Completion, Request, Usage

# Shortest prefix Anthropic caches, by model family (its prompt-caching docs); other models: 1024 tokens.
CACHE_MIN_TOKENS = {"claude-3-haiku": 2048, "claude-3-5-haiku": 2048, "claude-haiku-4-5": 4096,
                    "claude-opus-4-5": 4096}


def cache_min_tokens(model: str) -> int:
    """Fewest prefix tokens Anthropic will cache for this model."""
    return next((n for k, n in sorted(CACHE_MIN_TOKENS.items(), key=lambda kv: -len(kv[0])) if model.startswith(k)),
                1024)


class AnthropicAdapter(Adapter):
    """Claude models via `/v1/messages`; token counts use the documented chars/4 approximation."""

    provider = "anthropic"
    max_top_logprobs = None
    prompt_logprobs = False
    multi_sample = False

    def _make_client(self, api_key: str | None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(api_key=api_key, base_url=self.base_url, max_retries=0,
                                        timeout=self.timeout, http_client=self._http_for_loop(),
                                        default_headers=self._auth_headers())

    def endpoint(self, request: Request) -> str:
        return "/v1/messages"

    def body(self, request: Request) -> dict[str, Any]:
        self.check(request)
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        b: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
            "temperature": request.temperature,
        }
        if system and self.count_tokens(system) >= cache_min_tokens(self.model):
            b["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        elif system:
            b["system"] = system
        if request.stop:
            b["stop_sequences"] = list(request.stop)
        return b

    def check(self, request: Request) -> None:
        super().check(request)
        if request.raw_completion:
            raise ConfigurationError("anthropic has no raw-completion endpoint; use chat messages")
        if not any(m.role != "system" for m in request.messages):
            raise ConfigurationError("anthropic needs at least one user message besides the system prompt")
        if any(m.role != "system" and not m.content.strip() for m in request.messages):
            raise ConfigurationError("anthropic rejects empty messages, and with features masked a message is "
                                     "empty: keep fixed text around the content (a template) or mask with a "
                                     "placeholder (mask_style='placeholder')")


    def cached_prefix_tokens(self, request: Request, prefix_tokens: int | None = None) -> int:
        """The system prompt's tokens when it is sent with cache_control (read from the cache on repeats);
        with its exact count (`prefix_tokens`), 0 when that is below the model's minimum (Anthropic then caches
        nothing, though the block is marked)."""
        if not self.cacheable_prefix(request):
            return 0
        n = self.count_tokens(self.cacheable_prefix(request)) if prefix_tokens is None else prefix_tokens
        return n if n >= cache_min_tokens(self.model) else 0

    def cacheable_prefix(self, request: Request) -> str:
        """The system prompt, when `body` sends it with cache_control."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        return system if system and self.count_tokens(system) >= cache_min_tokens(self.model) else ""

    def without_prefix(self, request: Request) -> Request | None:
        if not self.cacheable_prefix(request):
            return None
        return replace(request, messages=tuple(m for m in request.messages if m.role != "system"))

    async def _count_tokens(self, requests: Sequence[Request]) -> list[int] | None:
        """Anthropic's free `messages.count_tokens` (llama-server serves it too): the prompt tokens as billed."""
        client = self.client()
        slots = asyncio.Semaphore(COUNT_CONCURRENCY)

        async def one(request: Request) -> int:
            b = self.body(request)
            extra = {"system": b["system"]} if "system" in b else {}
            async with slots:
                counted = await client.messages.count_tokens(model=b["model"], messages=b["messages"],
                                                             timeout=COUNT_TIMEOUT, **extra)
            return int(counted.input_tokens)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def parse(self, payload: Mapping[str, Any], request: Request) -> Completion:
        if payload.get("type") == "error" or "content" not in payload:
            raise ValueError(f"not a message: {str(payload)[:200]}")
        text = "".join(b.get("text", "") for b in payload["content"] if b.get("type") == "text")
        u = payload.get("usage") or {}
        cached = int(u.get("cache_read_input_tokens") or 0)
        written = int(u.get("cache_creation_input_tokens") or 0)
        total_in = int(u.get("input_tokens") or 0) + cached + written
        return Completion(texts=(text,), logprobs=None,
                          usage=Usage(total_in, int(u.get("output_tokens") or 0), cached, written),
                          model=str(payload.get("model") or self.model),
                          finish_reasons=(str(payload.get("stop_reason") or ""),))
