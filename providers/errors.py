"""Provider errors, split by what the runner may do about them: retry (transient) or surface at once (fatal).

Adapters translate each SDK's exceptions into these, so retry policy lives in one place (the runner) and
never depends on which SDK raised. Messages never contain credentials.
"""

from __future__ import annotations

from typing import Mapping


class ProviderError(Exception):
    """Base class for everything the providers layer raises."""


class ConfigurationError(ProviderError, ValueError):
    """Bad setup detected before any spend: unknown provider or model, missing key, unsupported request."""


class APICallError(ProviderError):
    """A call reached the provider (or tried to) and failed; carries the HTTP status and headers if any."""

    billed_unknown = False  # True: the provider may have done (and charged for) the work

    def __init__(self, message: str, status: int | None = None, headers: Mapping[str, str] | None = None,
                 billed_unknown: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        if billed_unknown is not None:
            self.billed_unknown = billed_unknown


class TransientError(APICallError):
    """Worth retrying with backoff: rate limit, overload, server error, timeout, dropped connection, bad JSON.

    `billed_unknown` is True when the provider may have done (and charged for) the work although we got
    nothing usable back (timeouts, dropped connections, a truncated 200); the runner then keeps that attempt's
    worst-case cost reserved instead of releasing it.
    """


class RateLimitError(TransientError):
    """429 (not a quota problem): wait as the provider says, then retry."""


class ServerError(TransientError):
    """5xx or Anthropic's 529 overload."""


class TransportError(TransientError):
    """Timeout or connection error: the request may or may not have been processed (not billed when the
    connection was never made)."""

    billed_unknown = True


class MalformedResponseError(TransientError):
    """The provider answered 200 with a body that is not JSON (cut off, an HTML page): worth asking again."""

    billed_unknown = True


class FatalAPIError(APICallError):
    """Retrying cannot help; surfaced to the caller as is."""


class AuthenticationError(FatalAPIError):
    """The API key was rejected (401)."""


class PermissionDeniedError(FatalAPIError):
    """The key may not use this model or endpoint (403)."""


class QuotaExceededError(FatalAPIError):
    """The account is out of credit or quota (OpenAI 429 insufficient_quota, 402)."""


class InvalidRequestError(FatalAPIError):
    """The provider rejected the request itself (400, 404, 413, 422): fix the request, do not retry."""


class UnexpectedAnswerError(FatalAPIError):
    """A 200 answer in well-formed JSON that lacks what was asked (e.g. logprobs a server ignores): asking
    again would pay for the same answer, so it is not retried; the attempt counts as possibly billed."""

    billed_unknown = True


class UnusableAnswerError(APICallError):
    """A 200 answer that parses but cannot be scored (NaN logprob, empty or missing logprobs, a score that is not
    finite). Never cached: the runner asks once more, then stops the run rather than pay for more of them.
    `cost` is what the answer was billed (its reported usage)."""

    def __init__(self, message: str, cost: float = 0.0) -> None:
        super().__init__(message)
        self.cost = cost


class RequestTimeoutError(TransportError):
    """No answer within the caller's `timeout` for one request, retries included (e.g. a hung server)."""


class CapExceededError(ProviderError, RuntimeError):
    """The runner refused to send a request because it would break `max_queries` or `max_cost` (nothing sent).

    Deliberately not importing the engine's BudgetExceededError: `providers` stays light to import (no
    sklearn); the composition layer (spex_api.sdk) catches both."""
