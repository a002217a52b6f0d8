"""Everything that talks to a model: masked prompts, adapters, scoring, rate limits, retries, cache, cost."""

from providers.types import Completion, Message, Request, TokenLogprob, Usage

__all__ = ["Completion", "Message", "Request", "TokenLogprob", "Usage"]
