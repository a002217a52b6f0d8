"""The async engine between value function and adapter: cache first, then rate limits, caps, retries.

For each request the runner looks in the disk cache; a miss reserves one query and the worst-case cost of
the call against the hard caps (refusing before sending when they do not fit), waits for a concurrency slot
and the requests/tokens-per-minute limiters, honours any pause the provider asked for (Retry-After, exhausted
x-ratelimit-* / anthropic-ratelimit-* budgets), sends, writes the answer to the cache, and only then settles
the reservation with the reported usage and hands the answer back. Transient failures (429, 5xx, 529,
timeouts, dropped connections, answers that are not JSON) are retried by tenacity with jittered exponential
backoff; authentication, permission, quota and invalid-request errors, and well-formed answers lacking what
was asked (asking again would pay for the same), stop the run at once.

Interrupted runs: every answer is in the cache before it is used, so a rerun after any interruption
(including kill -9) pays only for what is missing — except calls that were in flight at the moment of the
kill (at most `concurrency`): the provider may have answered them, but the process died before caching.
Several processes may share one cache directory: each uncached call is claimed in the cache right before
it is sent, so two processes asking the same question at the same moment pay for it once.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import ipaddress
import logging
import math
import os
import re
import time
import weakref
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from providers.adapters.base import Adapter, endpoint_identity, merge_completions, split_samples
from providers.cache import ResponseCache, cache_key
from providers.cost import Price, PriceTable, worst_case_cost
from providers.errors import (
    CapExceededError,
    ConfigurationError,
    FatalAPIError,
    RequestTimeoutError,
    TransientError,
    UnusableAnswerError,
)
from providers.types import Completion, Request, Usage

log = logging.getLogger(__name__)
Validator = Callable[[Request, Completion], None]


@dataclass
class RunnerStats:
    """Counters of one runner (all runs). `api_calls` and `cache_hits` count distinct calls: identical requests
    in one batch are asked once. `spend` is dollars from reported usage plus the worst case of attempts whose
    outcome is unknown (timeouts, dropped connections), which are counted as paid."""

    api_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    spend: float = 0.0
    unknown_outcome_spend: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    busy_seconds: float = 0.0
    _started: float | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def rate(self) -> float:
        """API calls per second over the time the runner was running."""
        t = self.busy_seconds + (time.monotonic() - self._started if self._started is not None else 0.0)
        return self.api_calls / t if t > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d.update(tokens=self.tokens, rate=self.rate)
        return d


@dataclass
class Ledger:
    """What one caller of a shared runner paid: `paid` dollars and `sent` calls it sent itself, `cached` calls
    answered from the disk cache (or by another process), `shared` calls another caller of this runner was
    already sending (paid once, by that caller). Across the callers of one runner the `paid` add up to its spend."""

    paid: float = 0.0
    sent: int = 0
    cached: int = 0
    shared: int = 0


_LEDGER: "contextvars.ContextVar[Ledger | None]" = contextvars.ContextVar("providers_runner_ledger", default=None)


def _count(field_name: str, amount: float = 1) -> None:
    ledger = _LEDGER.get()
    if ledger is not None:
        setattr(ledger, field_name, getattr(ledger, field_name) + amount)


def _seconds(value: str) -> float | None:
    """Seconds from '1.5', '20ms', '6m0s', '1h2m3.5s' or an HTTP/RFC 3339 date; None if unreadable."""
    v = value.strip()
    try:
        seconds = float(v)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", v)
    if parts and "".join(a + b for a, b in parts) == v:
        scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(a) * scale[b] for a, b in parts)
    try:  # an RFC 3339 timestamp ("2026-12-02T01:23:23Z") or an HTTP date (RFC 9110: "Wed, 02 Dec 2026 01:23:23 GMT")
        iso = _ISO_DATE.match(v) is not None
        when = datetime.fromisoformat(v.replace("Z", "+00:00")) if iso else email.utils.parsedate_to_datetime(v)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


_BUDGET_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)


def pause_from_headers(headers: Mapping[str, str]) -> float:
    """How long the provider asks us to wait: retry-after-ms, retry-after, or the reset time of an exhausted
    x-ratelimit-* / anthropic-ratelimit-* budget. 0 if nothing asks for a pause."""
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            ms = float(h["retry-after-ms"])
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(0.0, ms / 1000)
    if "retry-after" in h:
        s = _seconds(h["retry-after"])
        if s is not None:
            return s
    wait = 0.0
    for remaining, reset in _BUDGET_HEADERS:
        try:
            exhausted = remaining in h and float(h[remaining]) <= 0
        except ValueError:
            exhausted = False
        if exhausted and reset in h:
            wait = max(wait, _seconds(h[reset]) or 0.0)
    return wait


def own_host(base_url: str | None) -> bool:
    """True for this machine or a private network (a server the user runs: free unless priced); False for
    any other host, which may bill."""
    if base_url is None:
        return False
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


class _Clock:
    """One request's deadline across its attempts: `timeout` seconds after its first send (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at: float | None = None

    def start(self) -> None:
        if self.timeout is not None and self.at is None:
            self.at = time.monotonic() + self.timeout

    def left(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self, wait: float = 0.0) -> bool:
        """True if an attempt after `wait` more seconds would start at or past the deadline."""
        left = self.left()
        return left is not None and left - wait <= _MIN_ATTEMPT

    def cap(self, wait: float) -> float:
        left = self.left()
        return wait if left is None else max(0.0, min(wait, left))


_MIN_ATTEMPT = 0.05  # seconds: an attempt with less time than this left is not sent


class _Aborted(Exception):
    """Internal: the run is stopping (fatal error or cap); this call was not sent."""


@dataclass
class _LoopState:
    """asyncio primitives are bound to one event loop; a runner reused across asyncio.run calls gets fresh ones."""

    slots: asyncio.Semaphore
    rpm: AsyncLimiter | None
    tpm: AsyncLimiter | None
    budget_changed: asyncio.Event
    inflight: dict[str, asyncio.Future[Completion]] = field(default_factory=dict)


class Runner:
    """Runs requests for one adapter with caching, limits, retries and hard caps.

    Parameters: `cache` a directory or ResponseCache (None = no disk cache); `concurrency` parallel calls;
    `rpm` / `tpm` requests / estimated tokens per minute (None = unlimited); `max_queries` hard cap on HTTP
    calls sent (every attempt counts, retries included); `max_cost` hard cap in dollars (worst case reserved
    before each call); `prices` a PriceTable; `max_attempts` per request; `backoff_initial`/`backoff_max`
    seconds of the jittered exponential backoff; `max_pause` longest wait honoured from a provider's
    Retry-After/reset headers; `timeout` longest wait in seconds for one request's answer from its first send,
    retries and pauses included (each attempt gets what is left; None = only the adapter's per-attempt timeout):
    past it the run stops with RequestTimeoutError; `on_progress(stats)` is called after every request resolves.
    """

    def __init__(
        self,
        adapter: Adapter,
        cache: str | os.PathLike[str] | ResponseCache | None = None,
        concurrency: int = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        max_queries: int | None = None,
        max_cost: float | None = None,
        prices: PriceTable | None = None,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_pause: float = 120.0,
        timeout: float | None = None,
        on_progress: Callable[[RunnerStats], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and v <= 0:
                raise ConfigurationError(f"{name} must be positive (or None for no limit)")
        if max_cost is not None and not 0 <= max_cost < float("inf"):
            raise ConfigurationError(f"max_cost must be a finite number of dollars >= 0 (0: only free or cached "
                                     f"answers), got {max_cost!r}")
        if max_queries is not None and max_queries < 0:
            raise ConfigurationError("max_queries must be >= 0")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout must be a positive number of seconds (or None), got {timeout}")
        self.adapter = adapter
        self.cache: ResponseCache | None = cache if cache is None or isinstance(cache, ResponseCache) else ResponseCache(cache)
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.max_queries = max_queries
        self.max_cost = max_cost
        table = prices or PriceTable()
        self.price: Price = table.price(adapter.provider, adapter.model)
        if max_cost is not None and not table.priced(adapter.provider, adapter.model) and not own_host(adapter.base_url):
            raise ConfigurationError(
                f"max_cost cannot be enforced: no price is known for {adapter.model!r} at {adapter.base_url}, a "
                f"remote server that may bill. Pass prices=PriceTable({{'{adapter.provider}': {{'{adapter.model}': "
                "Price(input=..., cached_input=..., output=...)}}) (dollars per 1M tokens; all 0 if it is free)")
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_pause = max_pause
        self.timeout = timeout
        self.on_progress = on_progress
        self.stats = RunnerStats()
        self._queries_reserved = 0  # calls sent or about to be sent (never released once sent)
        self._cost_reserved = 0.0  # worst-case dollars of calls not yet settled
        self._open_reservations = 0  # how many of those: a float sum can drift above 0 with none left
        self._pause_until = 0.0
        self._states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = weakref.WeakKeyDictionary()
        self._abort: BaseException | None = None
        self._halted: BaseException | None = None  # set by stop(): later runs refuse too, until resume()
        self._active_runs = 0

    # ---- public -------------------------------------------------------------------------------------
    @property
    def spend(self) -> float:
        return self.stats.spend

    @property
    def queries_left(self) -> int | None:
        """API calls max_queries still allows (None without a cap); calls in flight are already taken."""
        return None if self.max_queries is None else self.max_queries - self._queries_reserved

    def worst_case_cost(self, request: Request, price: Price | None = None) -> float:
        """Upper bound on what one request can cost (all samples, max_tokens each, prompt bound), at the runner's
        price or `price` (e.g. a batch runner's interactive list price)."""
        calls = 1 if self.adapter.multi_sample else request.samples
        per_call = worst_case_cost(self.price if price is None else price, self.adapter.input_token_bound(request),
                                   self.adapter.output_token_bound(request),
                                   request.samples if self.adapter.multi_sample else 1)
        return per_call * calls

    def estimate_cost(self, request: Request, output_tokens: int | None = None, price: Price | None = None,
                      input_tokens: float | None = None, cached_tokens: float | None = None) -> float:
        """Typical cost of one request at the runner's price or `price`: prompt tokens per call (`input_tokens`,
        default the adapter's estimate) of which `cached_tokens` (default the adapter's cached prefix) are read
        from the provider's prompt cache, and `output_tokens` (default max_tokens) per sample."""
        calls = 1 if self.adapter.multi_sample else request.samples
        out = (self.adapter.output_token_bound(request) if output_tokens is None else output_tokens) * request.samples
        inp = round(self.adapter.estimate_input_tokens(request) if input_tokens is None else input_tokens)
        cached = round(self.adapter.cached_prefix_tokens(request) if cached_tokens is None else cached_tokens)
        # a fixed prefix the provider caches is read at the cached-input price on every call after the first
        return (self.price if price is None else price).cost(Usage(inp * calls, out, min(cached, inp) * calls))

    def is_cached(self, request: Request) -> bool:
        """True if every call of this request is in the cache (it would cost nothing)."""
        return self.cache is not None and all(k in self.cache for _, k in self._calls(request))

    async def run(self, requests: Sequence[Request], validate: Validator | None = None,
                  ledger: Ledger | None = None) -> list[Completion]:
        """Completions for the requests, in order. Raises the first fatal error (or cap refusal) after letting
        calls already in flight finish and reach the cache; requests not yet sent are not sent.

        `validate(request, completion)` raises when an answer is unusable to the caller (e.g. its scorer cannot
        score it; default: the adapter's `check_answer`): such an answer is never cached, a cached one is asked
        again, and a fresh one is asked once more before the run stops (UnusableAnswerError). `ledger` adds up
        what this call paid and sent."""
        for r in requests:
            self.adapter.check(r)
        if validate is None:  # at least what the adapter promises for the request (finite logprobs, one text per sample)
            validate = self.adapter.check_answer
        if self._halted is not None:
            raise self._halted
        state = self._state()
        token = _LEDGER.set(ledger) if ledger is not None else None
        if self._active_runs == 0:  # a stop from an earlier run does not block this one
            self._abort = None
            self.stats._started = time.monotonic()
        self._active_runs += 1
        # A few workers send the misses, in order, rather than one task per request: thousands of tasks parked on
        # the concurrency slots survive into the oldest GC generation, and every full collection walks them all
        # (CPU per query grew with the batch: 100 µs at 300 requests, 230 µs at 10,000).
        unique = list(dict.fromkeys(requests))  # identical requests in one batch are asked once
        results: list[Any] = [None] * len(unique)
        try:
            misses = self._look_up(unique, results, validate)
            log.debug("%s: %d requests, %d answered from the cache, %d to send", self.adapter, len(unique),
                      len(unique) - len(misses), len(misses))
            todo = iter(misses)

            async def worker() -> None:
                for i, calls in todo:
                    try:
                        results[i] = await self._request(calls, state, validate)
                    except Exception as exc:  # kept in place; the first fatal one is raised below
                        results[i] = exc

            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(misses)))))
        finally:
            if token is not None:
                _LEDGER.reset(token)
            self._active_runs -= 1
            if self._active_runs == 0 and self.stats._started is not None:
                self.stats.busy_seconds += time.monotonic() - self.stats._started
                self.stats._started = None
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise self._abort if self._abort is not None else errors[0]
        if len(unique) == len(requests):
            return results
        answer = dict(zip(unique, results))
        return [answer[r] for r in requests]

    async def send(self, request: Request, validate: Validator | None = None, ledger: Ledger | None = None
                   ) -> Completion:
        return (await self.run([request], validate, ledger))[0]

    def stop(self, reason: BaseException) -> None:
        """Stop sending (call it on the runner's event loop): runs in progress and later runs raise `reason`,
        calls already in flight finish and reach the cache. `resume()` lets runs send again."""
        self._halted = reason
        self._stop(reason)
        for st in list(self._states.values()):
            st.budget_changed.set()  # wake callers waiting for room under max_cost: they stop now

    def resume(self) -> None:
        """Undo `stop` for later runs."""
        self._halted = None

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until no call of this loop is in flight (at most `timeout` seconds): after `stop`, the answers
        already on their way are then in the cache."""
        pending = list(self._state().inflight.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    # ---- internals ----------------------------------------------------------------------------------
    def _look_up(self, requests: list[Request], results: list[Any], validate: Validator | None = None
                 ) -> list[tuple[int, list[tuple[Request, str, Completion | None]]]]:
        """Look every call up in the cache in one pass: fully cached requests get their answer in `results`; the
        others come back with their calls and any partial hits. Reads back to back cost 7-15 µs of CPU each; one
        alone, between network waits in an otherwise idle process, cost ~180 µs (measured here)."""
        misses = []
        for i, r in enumerate(requests):
            calls = [(sub, key, None if self.cache is None else self._cached(self.cache, sub, key, validate))
                     for sub, key in self._calls(r)]
            if all(hit is not None for _, _, hit in calls):
                self.stats.cache_hits += len(calls)
                _count("cached", len(calls))
                results[i] = self._done([hit for _, _, hit in calls])  # type: ignore[misc]
            else:
                misses.append((i, calls))
        return misses

    @staticmethod
    def _cached(cache: ResponseCache, request: Request, key: str, validate: Validator | None) -> Completion | None:
        """A cache hit the caller can use; an unusable one (cached before answers were checked) is a miss."""
        hit = cache.get(key)
        if hit is not None and validate is not None:
            try:
                validate(request, hit)
            except Exception as exc:  # noqa: BLE001 - whatever the caller's check raises means "unusable"
                log.warning("cached answer %s in %s is unusable (%s); asking again", key, cache.directory, exc)
                return None
        return hit

    def _usable(self, request: Request, completion: Completion, validate: Validator | None) -> None:
        """Raise UnusableAnswerError (carrying what the answer cost) when the caller cannot use it."""
        if validate is None:
            return
        try:
            validate(request, completion)
        except Exception as exc:  # noqa: BLE001 - whatever the caller's check raises means "unusable"
            why = exc if isinstance(exc, UnusableAnswerError) else f"{type(exc).__name__}: {exc}"
            raise UnusableAnswerError(f"{why}", cost=self.price.cost(completion.usage)) from None

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        st = self._states.get(loop)
        if st is None:
            st = _LoopState(
                slots=asyncio.Semaphore(self.concurrency),
                # capacity 1 per 60/rpm s: evenly spaced calls, never a burst above the limit
                rpm=AsyncLimiter(1, 60.0 / self.rpm) if self.rpm else None,
                # tokens: a 10-second bucket (a sixth of the minute's tokens) smooths bursts
                tpm=AsyncLimiter(self.tpm / 6.0, 10.0) if self.tpm else None,
                budget_changed=asyncio.Event(),
            )
            self._states[loop] = st
        return st

    def _calls(self, request: Request) -> list[tuple[Request, str]]:
        """The HTTP calls a request needs and their cache keys (one per sample without multi_sample)."""
        if request.samples == 1 or self.adapter.multi_sample:
            return [(request, cache_key(self.adapter.cache_material(request)))]
        return [(sub, cache_key({**self.adapter.cache_material(sub), "sample": i}))
                for i, sub in enumerate(split_samples(request))]

    def _done(self, parts: list[Completion]) -> Completion:
        """One request's answer from its calls' answers; reported to on_progress."""
        if self.on_progress is not None:
            self.on_progress(self.stats)
        return parts[0] if len(parts) == 1 else merge_completions(parts)

    async def _request(self, calls: list[tuple[Request, str, Completion | None]], state: _LoopState,
                       validate: Validator | None = None) -> Completion:
        if len(calls) == 1:  # a one-call request is a miss here: its hit was served by _look_up
            sub, key, _ = calls[0]
            return self._done([await self._call(sub, key, state, validate)])
        parts = await asyncio.gather(*(self._hit(hit) if hit is not None else self._call(sub, key, state, validate)
                                       for sub, key, hit in calls), return_exceptions=True)
        for p in parts:
            if isinstance(p, BaseException):
                raise p
        return self._done(list(parts))  # type: ignore[arg-type]

    async def _hit(self, hit: Completion) -> Completion:
        self.stats.cache_hits += 1
        _count("cached")
        return hit

    async def _call(self, request: Request, key: str, state: _LoopState, validate: Validator | None = None
                    ) -> Completion:
        """Send one call the cache did not have (once per run: later askers wait for the same answer)."""
        if key in state.inflight:  # the same call is already on its way (another run on this runner)
            _count("shared")
            return await asyncio.shield(state.inflight[key])
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        state.inflight[key] = fut
        try:
            result = await self._with_retries(request, key, state, validate)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del state.inflight[key]

    def _wait(self, rs: RetryCallState) -> float:
        if self._abort is not None:
            return 0.0  # the run is stopping: the next attempt ends at once, unsent
        exc = rs.outcome.exception() if rs.outcome is not None else None
        hint = pause_from_headers(exc.headers) if isinstance(exc, TransientError) else 0.0
        backoff = wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)(rs)
        return min(max(hint, backoff), self.max_pause)

    def _before_sleep(self, rs: RetryCallState) -> None:
        self.stats.retries += 1
        exc = rs.outcome.exception() if rs.outcome is not None else None
        wait = rs.next_action.sleep if rs.next_action is not None else 0.0
        log.warning("%s: attempt %d of %d failed (%s); retrying in %.2f s", self.adapter, rs.attempt_number,
                    self.max_attempts, exc, wait)

    async def _with_retries(self, request: Request, key: str, state: _LoopState,
                            validate: Validator | None = None) -> Completion:
        """Transient failures are retried up to max_attempts within `timeout`; an unusable answer is asked once
        more (a glitch), then the run stops rather than paying for more of them."""
        clock = _Clock(self.timeout)
        for ask in (1, 2):
            try:
                return await self._retrying(request, key, state, validate, clock)
            except UnusableAnswerError as exc:
                if ask == 2 or self.max_attempts == 1 or self._abort is not None:
                    log.error("unusable answer again for %s (%s); stopping the run: nothing more is sent", key, exc)
                    raise self._stop(exc)
                self.stats.retries += 1
                log.warning("unusable answer for %s, not cached (%s); asking once more", key, exc)
        raise AssertionError("unreachable")

    async def _retrying(self, request: Request, key: str, state: _LoopState, validate: Validator | None,
                        clock: "_Clock") -> Completion:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(TransientError),
                                           stop=stop_after_attempt(self.max_attempts),
                                           wait=lambda rs: clock.cap(self._wait(rs)), before_sleep=self._before_sleep,
                                           reraise=True):
            with attempt:
                try:
                    return await self._attempt(request, key, state, validate, clock)
                except TransientError as exc:
                    n = attempt.retry_state.attempt_number
                    if clock.expired(self._wait_hint(exc)):
                        raise self._stop(RequestTimeoutError(
                            f"no answer from {endpoint_identity(self.adapter.base_url)} within timeout={self.timeout:g} s "
                            f"({n} attempt{'s' * (n > 1)}; last: {exc}); the server may be hung or overloaded. "
                            "Answers received so far are cached: raise timeout and rerun to continue",
                            exc.status, exc.headers)) from None
                    if n >= self.max_attempts:
                        raise self._stop(exc)  # retries exhausted: do not start further calls
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _wait_hint(self, exc: TransientError) -> float:
        """The shortest wait before a retry of this failure (a pause the provider asked for)."""
        return min(pause_from_headers(exc.headers), self.max_pause)

    async def _reserve(self, cost: float, state: _LoopState) -> None:
        """Take one query and `cost` dollars from the caps, waiting for in-flight calls to settle if that could
        make room; raise CapExceededError (nothing sent) when it cannot fit. Check-and-take has no await in
        between, so concurrent tasks cannot both take the last room."""
        while True:
            if self._abort is not None:
                raise _Aborted
            if self.max_queries is not None and self._queries_reserved + 1 > self.max_queries:
                raise self._refuse(CapExceededError(
                    f"max_queries={self.max_queries} reached ({self._queries_reserved} calls sent or in flight); "
                    "nothing more is sent. Cached answers are kept: raise the cap and rerun to continue."))
            committed = self.stats.spend + self._cost_reserved
            if self.max_cost is None or committed + cost <= self.max_cost + 1e-12:
                self._queries_reserved += 1
                self._cost_reserved += cost
                self._open_reservations += 1
                return
            if self._open_reservations == 0:  # nothing in flight can free room: waiting would never end
                raise self._refuse(CapExceededError(
                    f"max_cost=${self.max_cost:.6f}: spent ${self.stats.spend:.6f}, the next call may cost up to "
                    f"${cost:.6f}; nothing more is sent. Cached answers are kept: raise the cap and rerun."))
            await state.budget_changed.wait()

    def _settle(self, reserved: float, actual: float, state: _LoopState) -> None:
        """Replace a reservation by what the call actually cost and wake tasks waiting for room."""
        self._open_reservations -= 1
        self._cost_reserved = self._cost_reserved - reserved if self._open_reservations else 0.0
        self.stats.spend += actual
        state.budget_changed.set()
        state.budget_changed = asyncio.Event()

    def _stop(self, exc: BaseException) -> BaseException:
        if self._abort is None:
            self._abort = exc
        return exc

    def _refuse(self, exc: CapExceededError) -> BaseException:
        """Stop the run on a cap refusal, once logged (a cap is the user's setting: say which one held)."""
        if self._abort is None:
            log.warning("%s: %s", self.adapter, exc)
        return self._stop(exc)

    async def _honour_pause(self) -> None:
        while (delay := self._pause_until - time.monotonic()) > 0:
            if self._abort is not None:
                raise _Aborted
            await asyncio.sleep(min(delay, 0.25))  # short naps: a stop ends the wait

    def _pause(self, headers: Mapping[str, str]) -> None:
        wait = min(pause_from_headers(headers), self.max_pause)
        if wait > 0:
            until = time.monotonic() + wait
            if until > self._pause_until + 0.05:  # once per pause, not once per call that reports it
                log.warning("%s: the provider asked for a pause; no call is sent for %.1f s", self.adapter, wait)
            self._pause_until = max(self._pause_until, until)

    async def _claim_or_wait(self, cache: ResponseCache, request: Request, key: str, validate: Validator | None
                             ) -> tuple[Completion | None, bool]:
        """(None, True): this caller claimed the call and sends it. (answer, False): another caller sent it
        meanwhile. While another holds the claim, wait for its answer; if it fails or dies, its claim goes and
        this one takes over. A holder that neither answers nor goes within the call timeout + 30 s (a stopped
        process) is not waited for: (None, False), sent unclaimed."""
        delay, deadline = 0.02, time.monotonic() + self.adapter.timeout + 30.0
        while True:
            if cache.claim(key):
                # Look (again): a holder caches its answer before releasing, so a claim won after a release
                # must find that answer here rather than pay for it a second time.
                hit = self._cached(cache, request, key, validate)
                if hit is not None:
                    cache.release(key)
                return hit, hit is None
            hit = self._cached(cache, request, key, validate)
            if hit is not None or time.monotonic() > deadline:
                return hit, False
            if delay == 0.02:
                log.info("%s: another caller is sending call %s… (same cache); waiting for its answer",
                         self.adapter, key[:12])
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.5)

    async def _attempt(self, request: Request, key: str, state: _LoopState, validate: Validator | None = None,
                       clock: _Clock | None = None) -> Completion:
        if self._abort is not None:
            raise _Aborted
        await self._honour_pause()
        # Built (its SDK imported, ~0.8 s) on a loop's first call: done before a rate-limit slot is taken, since a
        # stall between taking the slot and sending lets the next call go at once and two reach the server together.
        self.adapter.client()
        reserved = self.worst_case_cost(request)
        await self._reserve(reserved, state)
        charged = reserved  # until we know better, an attempt counts at its worst case
        sent = claimed = False
        cache = self.cache
        try:
            async with state.slots:
                if state.rpm is not None:
                    await state.rpm.acquire()
                if state.tpm is not None:
                    need = (self.adapter.estimate_input_tokens(request)
                            + self.adapter.output_token_bound(request) * request.samples)
                    await state.tpm.acquire(min(need, state.tpm.max_rate))
                await self._honour_pause()
                if self._abort is not None:
                    raise _Aborted
                if cache is not None:
                    hit, claimed = await self._claim_or_wait(cache, request, key, validate)
                    if hit is not None:  # another caller answered it meanwhile: nothing to send or pay
                        charged = 0.0
                        self.stats.cache_hits += 1
                        _count("cached")
                        return hit
                per_attempt = None
                if clock is not None:
                    clock.start()
                    left = clock.left()
                    if left is not None:
                        if left <= _MIN_ATTEMPT:
                            raise RequestTimeoutError("no time left for another attempt", billed_unknown=False)
                        per_attempt = min(self.adapter.timeout, left)
                self.stats.api_calls += 1
                sent = True
                completion, headers = await (self.adapter.exchange(request) if per_attempt is None
                                             else self.adapter.exchange(request, timeout=per_attempt))
                self._usable(request, completion, validate)
        except UnusableAnswerError as exc:  # billed (its usage is known) but never cached
            self.stats.failures += 1
            charged = exc.cost
            self._add_usage(completion.usage)
            raise
        except TransientError as exc:
            self.stats.failures += 1
            self._pause(exc.headers)
            if not exc.billed_unknown:
                charged = 0.0
            else:
                self.stats.unknown_outcome_spend += charged
            raise
        except ConfigurationError as exc:  # raised before anything left this process
            if sent:
                self.stats.api_calls -= 1
                sent = False
            charged = 0.0
            raise self._stop(exc)
        except FatalAPIError as exc:
            self.stats.failures += 1
            if self._abort is None:
                log.error("%s: %s; not retried, the run stops", self.adapter, exc)
            if exc.billed_unknown:  # a 200 answer we cannot use: it was probably billed
                self.stats.unknown_outcome_spend += charged
            else:
                charged = 0.0
            raise self._stop(exc)
        except _Aborted:
            charged = 0.0
            raise
        except BaseException:
            # cancelled or unexpected: once sent, the call may have been billed; keep its worst case charged
            if sent:
                self.stats.unknown_outcome_spend += charged
            else:
                charged = 0.0
            raise
        else:
            if cache is not None:  # durable before anyone uses the answer (the claim goes in `finally`)
                cache.put(key, completion)
            charged = self.price.cost(completion.usage)
            self._add_usage(completion.usage)
            self._pause(headers)
            return completion
        finally:
            if claimed and cache is not None:
                cache.release(key)  # after the answer is cached: a waiting process finds it
            if not sent:  # a call never sent does not count against max_queries
                self._queries_reserved -= 1
            else:
                _count("sent")
            _count("paid", charged)
            self._settle(reserved, charged, state)

    def _add_usage(self, u: Usage) -> None:
        self.stats.input_tokens += u.input_tokens
        self.stats.output_tokens += u.output_tokens
        self.stats.cached_input_tokens += u.cached_input_tokens
