"""Adapters: one class per wire format, built by `make_adapter(provider, model, ...)`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from providers.adapters.base import Adapter, env_key
from providers.adapters.openai import CompatibleAdapter, OpenAIAdapter, OpenAIResponsesAdapter
from providers.cost import PriceTable
from providers.errors import ConfigurationError

# Names accepted for an OpenAI-compatible server reached by base_url.
COMPATIBLE_ALIASES = frozenset({"compatible", "openai-compatible", "local", "llama-server", "llamacpp", "vllm",
                                "ollama"})
OFFICIAL_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
NO_KEY = "sk-no-key-required"  # local servers accept any key; never the user's real key


def make_adapter(provider: str, model: str, base_url: str | None = None, api_key: str | None = None,
                 http_client: Any = None, timeout: float = 60.0, prices: PriceTable | None = None,
                 **options: Any) -> Adapter:
    """Adapter for a provider and model; fails before any spend on an unknown provider/model or a missing key.

    provider: "openai" (api.openai.com Chat Completions, key from `api_key` or OPENAI_API_KEY),
    "openai-responses" (the same host and key through the Responses API), "anthropic" (key from
    `api_key` or ANTHROPIC_API_KEY), or an OpenAI-compatible server ("compatible", "vllm", "llama-server",
    "ollama", "local") reached at `base_url` (include the "/v1" suffix), which needs no key. With a `base_url`,
    "openai"/"anthropic" select the wire format for a non-official host (e.g. llama-server's /v1/messages) and
    a dummy key is used if none is given; such a host is priced only through `prices` (a runner refuses
    `max_cost` for an unpriced remote host). `http_client` (an `httpx2.AsyncClient`, or a factory returning one per event loop) is handed to the SDK.
    `prices` extends the known models. `options` go to the adapter class (CompatibleAdapter: multi_sample, max_top_logprobs, prompt_logprobs).
    """
    p = (provider or "").lower().strip()
    if not model:
        raise ConfigurationError("model is required (e.g. 'gpt-4o-mini', 'claude-3-5-haiku-latest')")
    if p in COMPATIBLE_ALIASES:
        if not base_url:
            raise ConfigurationError(f"provider {provider!r} needs base_url (e.g. 'http://127.0.0.1:8080/v1')")
        options.setdefault("prompt_logprobs", p == "vllm")  # only vLLM is known to teacher-force prompts
        return CompatibleAdapter(model, base_url, api_key or NO_KEY, http_client, timeout, **options)
    cls: type[Adapter]
    if p in ("openai", "openai-responses"):
        cls, env = (OpenAIAdapter if p == "openai" else OpenAIResponsesAdapter), "OPENAI_API_KEY"
        p = "openai"  # one price table and cache scope; the endpoint keeps the two APIs' answers apart
    elif p == "anthropic":
        from providers.adapters.anthropic import AnthropicAdapter  # the anthropic SDK takes ~1.4 s to import

        cls, env = AnthropicAdapter, "ANTHROPIC_API_KEY"
    else:
        raise ConfigurationError(f"unknown provider {provider!r}; use 'openai', 'openai-responses', 'anthropic' or "
                                 f"one of {sorted(COMPATIBLE_ALIASES)} with base_url")
    if options:
        raise ConfigurationError(f"unexpected options for {p}: {sorted(options)}")
    if base_url and urlsplit(base_url).hostname == OFFICIAL_HOSTS[p]:
        base_url = None  # the official API written out: its key, prices and cache scope apply
    if base_url:
        adapter = cls(model, base_url, api_key or NO_KEY, http_client, timeout)
        adapter.provider = f"{p}-compatible"  # a non-official host: not billed at official prices, own cache scope
        return adapter
    key = api_key or env_key(env)
    if not key:
        raise ConfigurationError(f"no API key for {p}: pass api_key=... or set {env} (checked before any spend)")
    if (prices or PriceTable()).lookup(p, model) is None:
        raise ConfigurationError(f"unknown {p} model {model!r}: not in the price table; add it with "
                                 "providers.cost.PriceTable overrides if it is new")
    return cls(model, None, key, http_client, timeout)


__all__ = ["Adapter", "AnthropicAdapter", "CompatibleAdapter", "OpenAIAdapter", "OpenAIResponsesAdapter", "make_adapter"]


def __getattr__(name: str) -> Any:
    if name == "AnthropicAdapter":
        from providers.adapters.anthropic import AnthropicAdapter

        return AnthropicAdapter
    raise AttributeError(f"module 'providers.adapters' has no attribute {name!r}")
