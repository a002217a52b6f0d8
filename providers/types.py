"""Provider-neutral request and completion records shared by prompts, scorers, adapters and the runner."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Request:
    """One model call, independent of the provider's wire format.

    `top_logprobs` asks for that many alternatives per generated token (None = no logprobs);
    `prompt_logprobs` asks the server to score the prompt tokens (vLLM-style teacher forcing);
    `samples` asks for several independent completions of the same prompt.
    `repeat` > 0 marks a genuine re-ask of the same request (to measure the model's repeat noise): it is part
    of the cache key only, never sent, so the k-th repeat is answered by the provider once and then cached
    like any other answer, but never served with the original (repeat 0) answer.
    """

    messages: tuple[Message, ...]
    max_tokens: int = 16
    temperature: float = 0.0
    top_logprobs: int | None = None
    prompt_logprobs: int | None = None
    samples: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    raw_completion: bool = False  # True: send the rendered text to a completions endpoint, no chat template
    repeat: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-ready form (used for cache keys; holds no credentials)."""
        return asdict(self)


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # alternatives, most likely first


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0  # input tokens written to the provider's prompt cache (Anthropic bills them extra)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


@dataclass(frozen=True)
class Completion:
    """What a provider answered: one text per sample, per-token logprobs when the API returns them."""

    texts: tuple[str, ...]
    logprobs: tuple[tuple[TokenLogprob, ...], ...] | None = None  # per sample, per generated token
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reasons: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (written by hand: dataclasses.asdict deep-copies every leaf, once per query)."""
        def tl(t: TokenLogprob) -> dict[str, Any]:
            return {"token": t.token, "logprob": t.logprob, "top": [list(a) for a in t.top]}

        u = self.usage
        return {"texts": list(self.texts),
                "logprobs": None if self.logprobs is None else [[tl(t) for t in s] for s in self.logprobs],
                "prompt_logprobs": None if self.prompt_logprobs is None else [tl(t) for t in self.prompt_logprobs],
                "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                          "cached_input_tokens": u.cached_input_tokens, "cache_write_tokens": u.cache_write_tokens},
                "model": self.model, "finish_reasons": list(self.finish_reasons)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Completion":
        def tl(x: Any) -> TokenLogprob:
            return TokenLogprob(x["token"], float(x["logprob"]), tuple((t, float(lp)) for t, lp in x["top"]))

        if not isinstance(d["texts"], list) or not all(isinstance(t, str) for t in d["texts"]):
            raise TypeError("texts must be a list of strings")
        return cls(
            texts=tuple(d["texts"]),
            logprobs=None if d.get("logprobs") is None else tuple(tuple(tl(t) for t in s) for s in d["logprobs"]),
            prompt_logprobs=None if d.get("prompt_logprobs") is None else tuple(tl(t) for t in d["prompt_logprobs"]),
            usage=Usage(**d.get("usage", {})),
            model=d.get("model", ""),
            finish_reasons=tuple(d.get("finish_reasons", ())),
        )
