"""Everything that talks to a model: masked prompts, adapters, scoring, rate limits, retries, cache, cost."""

import logging

from providers.types import Completion, Message, Request, TokenLogprob, Usage

__all__ = ["Completion", "Message", "Request", "TokenLogprob", "Usage"]

# Retries, pauses, cache events and cap refusals are logged under "providers" (keys redacted); silent unless
# the application configures logging (the CLI does).
logging.getLogger("providers").addHandler(logging.NullHandler())

# Runtime names load on first use, so importing providers.types never pulls in the SDKs (providers-runtime).
_LAZY = {"make_adapter": "providers.adapters", "Runner": "providers.runner", "ResponseCache": "providers.cache", "PriceTable": "providers.cost", "Price": "providers.cost", "LLMValueFunction": "providers.value_function"}  # noqa: E501
_LAZY.update({n: "providers.prompt" for n in ("MaskedPrompt", "Maskable", "PromptError")} | {n: "providers.scorers" for n in ("LabelMargin", "AnswerLogprob", "AnswerFrequency", "AnswerSimilarity", "ScorerError", "ScoringError")} | {"LocalServer": "providers.local"})  # noqa: E501 (providers-prompt)
__all__ += list(_LAZY)


def __getattr__(name: str):  # PEP 562 lazy exports
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'providers' has no attribute {name!r}")
