"""Provider Batch APIs: the uncached requests of a round go out as one batch at half price, resumably.

`BatchRunner` is a `Runner` whose misses are not sent one by one but submitted as a batch: OpenAI's Batch API
(a JSONL file of `{"custom_id", "method", "url", "body"}` lines uploaded with purpose "batch", then
`batches.create` on the endpoint with completion window "24h"; output and error files downloaded when the
batch ends) or Anthropic's Message Batches (`requests[]` of `{"custom_id", "params"}`; `processing_status`
polled; results streamed as JSONL). The custom_id of every request is its cache key, so results are matched
by key, each one parsed and validated like an interactive answer, and written to the cache before any is used.

Limits: a batch holds at most 50,000 requests / 200 MB (OpenAI) or 100,000 / 256 MB (Anthropic); larger
rounds are split. `max_cost` holds: a batch is submitted only when the worst case of all its requests (at
batch prices) fits the room left, so a large round under a tight cap goes out in several batches, one after
the other. Requests that fail inside a batch (the batch expired, 429/5xx lines) go into a follow-up batch
(at most `max_rounds` batches per round); invalid requests stop the run, as interactive ones do. A batch
cancelled by someone else (the dashboard, another script) stops the run after caching what it answered.

Merged rounds: the explanations of one `explain_many` are members of `gather_rounds`; each member's round
waits until every active member has asked, so the requests of all prompts of a round go out as one batch
(an answer two prompts need is asked once) and come back to each prompt.

Resumable: each submitted batch is journaled in `<cache directory>/batches/` (batch id, the requests, their
keys) before this process waits for it. A process that is stopped or killed while a batch runs leaves the
journal behind; a rerun that needs any of those keys attaches to the running batch instead of submitting
again, so nothing is paid twice, and caches every answer of it (also those of other explanations). OpenAI
batches also carry the journal id in their metadata, so a process killed between `batches.create` and the
journal update still finds its batch; Anthropic batches carry no metadata, which leaves that window of a few
milliseconds open there. Processes sharing a cache directory take the journal's file lock while they decide
what to submit, so two of them never submit the same request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Hashable, Iterable, Iterator, Sequence

from providers.adapters.base import Adapter, encode_body
from providers.errors import (
    CapExceededError,
    ConfigurationError,
    FatalAPIError,
    InvalidRequestError,
    ServerError,
    TransientError,
    UnexpectedAnswerError,
)
from providers.cache import ResponseCache
from providers.runner import _LEDGER, Ledger, Runner, Validator, _count
from providers.types import Completion, Message, Request

try:
    import fcntl
except ImportError:  # Windows: the journal lock only orders the callers of one process
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

BATCH_WINDOW_HOURS = 24  # both providers finish a batch within 24 h or expire what is left
POLL_INITIAL, POLL_MAX = 5.0, 60.0  # seconds between status polls: first wait, longest wait


class BatchCancelledError(FatalAPIError):
    """A batch was cancelled (not by this run): its answered requests are cached, the rest was not sent."""


@dataclass(frozen=True)
class Outcome:
    """One request's result in a finished batch: the answer's JSON, or why there is none."""

    key: str
    payload: dict[str, Any] | None
    status: int | None = None
    code: str = ""
    message: str = ""

    @property
    def retriable(self) -> bool:
        """Worth a follow-up batch: not processed (expired, cancelled, missing) or a transient server error."""
        if self.status is not None:
            return self.status in (408, 409, 429) or self.status >= 500
        return self.code in ("batch_expired", "expired", "batch_cancelled", "canceled", "missing", "api_error",
                             "overloaded_error", "rate_limit_error", "timeout_error")


@dataclass(frozen=True)
class Status:
    """Where a batch is: `ended` once no request is still processing; `cancelled` if it was cancelled."""

    ended: bool
    state: str
    cancelled: bool = False
    done: int = 0
    total: int = 0
    failure: str = ""  # the whole batch was rejected (e.g. OpenAI validation): why


class BatchAPI:
    """One provider's batch protocol over its official async SDK client (the adapter's client)."""

    max_requests = 0
    max_bytes = 0
    metadata = False  # batches carry our journal id (so a lost create can be found again)

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def entry(self, key: str, request: Request) -> dict[str, Any]:
        """The batch entry of one request (its custom_id is the cache key)."""
        raise NotImplementedError

    async def submit(self, entries: list[dict[str, Any]], endpoint: str, tag: str) -> tuple[str, str | None]:
        """Create a batch: (batch id, uploaded input file id or None)."""
        raise NotImplementedError

    async def find(self, tag: str) -> str | None:
        """The batch created with this journal tag, if the provider can tell (OpenAI metadata)."""
        return None

    async def status(self, batch_id: str) -> Status:
        raise NotImplementedError

    def results(self, batch_id: str) -> AsyncIterator[Outcome]:
        raise NotImplementedError

    def size(self, entry: dict[str, Any]) -> int:
        """Bytes the entry adds to the batch (a JSONL line or a JSON array element)."""
        return len(encode_body(entry)) + 1


class OpenAIBatchAPI(BatchAPI):
    """OpenAI's Batch API: JSONL file upload, `batches.create`, output/error file download."""

    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024
    metadata = True

    def entry(self, key: str, request: Request) -> dict[str, Any]:
        return {"custom_id": key, "method": "POST", "url": "/v1" + self.adapter.endpoint(request),
                "body": self.adapter.body(request)}

    async def submit(self, entries: list[dict[str, Any]], endpoint: str, tag: str) -> tuple[str, str | None]:
        client = self.adapter.client()
        data = b"".join(encode_body(e) + b"\n" for e in entries)
        file = await client.files.create(file=("spex-batch.jsonl", data, "application/jsonl"), purpose="batch")
        batch = await client.batches.create(input_file_id=file.id, endpoint="/v1" + endpoint,
                                            completion_window=f"{BATCH_WINDOW_HOURS}h",
                                            metadata={"spex_journal": tag})
        return batch.id, file.id

    async def find(self, tag: str) -> str | None:
        async for b in self.adapter.client().batches.list(limit=100):
            if (b.metadata or {}).get("spex_journal") == tag:
                return str(b.id)
        return None

    async def status(self, batch_id: str) -> Status:
        b = await self.adapter.client().batches.retrieve(batch_id)
        counts = b.request_counts
        failure = ""
        if b.status == "failed":
            failure = "; ".join(f"line {e.line}: {e.code}: {e.message}" for e in ((b.errors and b.errors.data) or ()))
        return Status(ended=b.status in ("completed", "failed", "expired", "cancelled"), state=b.status,
                      cancelled=b.status in ("cancelling", "cancelled"),
                      done=(counts.completed + counts.failed) if counts else 0, total=counts.total if counts else 0,
                      failure=failure or ("rejected" if b.status == "failed" else ""))

    async def results(self, batch_id: str) -> AsyncIterator[Outcome]:
        client = self.adapter.client()
        b = await client.batches.retrieve(batch_id)
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.content.splitlines():
                if line.strip():
                    yield self._outcome(json.loads(line))

    @staticmethod
    def _outcome(row: dict[str, Any]) -> Outcome:
        key, resp, err = str(row.get("custom_id")), row.get("response"), row.get("error")
        if resp is not None and resp.get("status_code") == 200 and err is None:
            return Outcome(key, resp.get("body"))
        if resp is not None and resp.get("status_code") is not None:
            e = ((resp.get("body") or {}).get("error") or {})
            return Outcome(key, None, int(resp["status_code"]), str(e.get("code") or e.get("type") or ""),
                           str(e.get("message") or "")[:300])
        e = err or {}
        return Outcome(key, None, None, str(e.get("code") or ""), str(e.get("message") or "")[:300])


class AnthropicBatchAPI(BatchAPI):
    """Anthropic's Message Batches: `messages.batches.create(requests=[...])`, `retrieve`, streamed `results`."""

    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def entry(self, key: str, request: Request) -> dict[str, Any]:
        return {"custom_id": key, "params": self.adapter.body(request)}

    async def submit(self, entries: list[dict[str, Any]], endpoint: str, tag: str) -> tuple[str, str | None]:
        batch = await self.adapter.client().messages.batches.create(requests=entries)
        return batch.id, None

    async def status(self, batch_id: str) -> Status:
        b = await self.adapter.client().messages.batches.retrieve(batch_id)
        c = b.request_counts
        total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
        return Status(ended=b.processing_status == "ended", state=b.processing_status,
                      cancelled=b.cancel_initiated_at is not None, done=total - c.processing, total=total)

    async def results(self, batch_id: str) -> AsyncIterator[Outcome]:
        async for item in await self.adapter.client().messages.batches.results(batch_id):
            r = item.result
            if r.type == "succeeded":
                yield Outcome(item.custom_id, r.message.model_dump(mode="json"))
            elif r.type == "errored":
                e = r.error.error
                yield Outcome(item.custom_id, None, None, str(e.type), str(e.message)[:300])
            else:  # "canceled" or "expired": never processed, never billed
                yield Outcome(item.custom_id, None, None, r.type, f"request {r.type} before processing")


def batch_api(adapter: Adapter) -> BatchAPI:
    """The batch protocol for an adapter; ConfigurationError (before any spend) when its API has none."""
    from providers.adapters.openai import CompatibleAdapter, OpenAIAdapter

    if type(adapter).__name__ == "AnthropicAdapter":
        return AnthropicBatchAPI(adapter)
    if isinstance(adapter, OpenAIAdapter) and not isinstance(adapter, CompatibleAdapter):
        return OpenAIBatchAPI(adapter)
    raise ConfigurationError(f"{adapter.provider} at {adapter.base_url} has no batch API (OpenAI's Batch API and "
                             "Anthropic's Message Batches only); use interactive mode")


# ------------------------------------------------------------------------------------------------ journal
def _request_to_json(r: Request) -> dict[str, Any]:
    return r.to_dict()


def _request_from_json(d: dict[str, Any]) -> Request:
    return Request(**{**d, "messages": tuple(Message(**m) for m in d["messages"]), "stop": tuple(d["stop"])})


class Journal:
    """Submitted batches on disk (one JSON file each, written atomically) under a cache directory's `batches/`
    (made on first use: a runner built to price a plan touches no disk)."""

    def __init__(self, cache_dir: str) -> None:
        self.directory = os.path.join(cache_dir, "batches")
        self._lock_path = os.path.join(self.directory, "journal.lock")

    def _made(self) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return self.directory

    def _path(self, tag: str) -> str:
        return os.path.join(self.directory, f"{tag}.json")

    def write(self, record: dict[str, Any]) -> None:
        """Store a record durably (temp file, fsync, rename) before anything relies on it."""
        fd, tmp = tempfile.mkstemp(dir=self._made(), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(record["tag"]))

    def remove(self, tag: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(tag))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(os.listdir(self._made())):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.directory, name)) as f:
                        out.append(json.load(f))
                except (OSError, ValueError):  # a record another process just removed
                    continue
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (the OS drops it when its holder dies)."""
        self._made()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ runner
@dataclass
class _Ask:
    """One caller's misses waiting for the merged round (gather_rounds)."""

    member: Hashable
    todo: dict[str, Request]
    validate: Validator | None
    ledger: Ledger | None
    answers: "asyncio.Future[dict[str, Completion]]"


class BatchRunner(Runner):
    """A Runner that sends each run's uncached requests as provider batches at batch prices (see module doc).

    Parameters beyond Runner's: `poll_initial` / `poll_max` seconds between status polls (the wait grows by
    half each poll up to poll_max; defaults POLL_INITIAL, POLL_MAX); `max_rounds` batches per run for requests that keep failing transiently;
    `max_batch_requests` / `max_batch_bytes` lower the provider's limits (None: the provider's own). A cache
    directory is required: answers land there and the journal of running batches lives there. `price` is the
    Batch-API price (what estimates, caps and reported cost use); `list_price` is the interactive one.
    """

    def __init__(self, adapter: Adapter, cache: str | os.PathLike[str] | ResponseCache | None, *, poll_initial: float | None = None, poll_max: float | None = None,
                 max_rounds: int = 3, max_batch_requests: int | None = None, max_batch_bytes: int | None = None,
                 **kwargs: Any) -> None:
        if cache is None:
            raise ConfigurationError("batch mode needs a cache directory: answers land there and running batches "
                                     "are journaled there, so a stopped run resumes without paying twice")
        self.api = batch_api(adapter)
        self.disk = cache if isinstance(cache, ResponseCache) else ResponseCache(cache)  # the runner's cache too
        super().__init__(adapter, cache=self.disk, **kwargs)
        self.list_price = self.price
        self.price = self.price.batch()
        poll_initial = POLL_INITIAL if poll_initial is None else poll_initial
        poll_max = max(POLL_MAX, poll_initial) if poll_max is None else poll_max
        if poll_initial <= 0 or poll_max < poll_initial:
            raise ConfigurationError("need 0 < poll_initial <= poll_max")
        if max_rounds < 1:
            raise ConfigurationError("max_rounds must be >= 1")
        self.poll_initial, self.poll_max, self.max_rounds = poll_initial, poll_max, max_rounds
        self.max_batch_requests = min(max_batch_requests or self.api.max_requests, self.api.max_requests)
        self.max_batch_bytes = min(max_batch_bytes or self.api.max_bytes, self.api.max_bytes)
        self.journal = Journal(self.disk.directory)
        self.batches_submitted = 0
        self.batches_resumed = 0
        self._locks: dict[Any, asyncio.Lock] = {}
        self._members: set[Hashable] = set()  # gather_rounds: callers whose rounds are merged
        self._waiting: list[_Ask] = []  # their asks of the round being gathered

    def gather_rounds(self, members: Iterable[Hashable]) -> None:
        """Merge the rounds of these callers (the prompts of one explain_many; call it on the runner's loop
        before they run): a `run(..., member=m)` waits until every member still active waits too, then the
        requests of all of them go out as one batch (split only at the provider's limits and under max_cost),
        an answer several of them asked for once, and each caller gets its own answers back."""
        self._members = set(members)
        self._flush_if_ready()

    def leave(self, member: Hashable) -> None:
        """A member of `gather_rounds` asks nothing more (its explanation ended): the others stop waiting for it."""
        self._members.discard(member)
        self._flush_if_ready()

    def stop(self, reason: BaseException) -> None:
        super().stop(reason)
        waiting, self._waiting = self._waiting, []
        for ask in waiting:
            if not ask.answers.done():
                ask.answers.set_exception(reason)

    async def run(self, requests: Sequence[Request], validate: Validator | None = None,
                  ledger: Ledger | None = None, member: Hashable | None = None) -> list[Completion]:
        """Completions in order: cached ones at once, the rest through batches (see the module doc). An answer
        `validate` rejects is never cached; its request goes into the follow-up batch. A `member` of
        `gather_rounds` sends its misses in the round's merged batch."""
        for r in requests:
            self.adapter.check(r)
        if getattr(self, "_halted", None) is not None:  # stop() refuses later runs until resume()
            raise self._halted  # type: ignore[misc]
        self._state()
        if self._active_runs == 0:  # a stop from an earlier run does not block this one
            self._abort = None
        self._active_runs += 1
        token = _LEDGER.set(ledger) if ledger is not None else None
        unique = list(dict.fromkeys(requests))
        results: list[Any] = [None] * len(unique)
        started = time.monotonic()
        try:
            misses = self._look_up(unique, results, validate)
            todo = {key: sub for _, calls in misses for sub, key, hit in calls if hit is None}
            if todo and member is not None and member in self._members:
                answers = await self._merged(member, todo, validate)
            else:
                answers = await self._collect(todo, validate) if todo else {}
            for i, calls in misses:
                results[i] = self._done([hit if hit is not None else answers[key] for _, key, hit in calls])
        finally:
            if token is not None:
                _LEDGER.reset(token)
            self._active_runs -= 1
            self.stats.busy_seconds += time.monotonic() - started
        if len(unique) == len(requests):
            return results
        answer = dict(zip(unique, results))
        return [answer[r] for r in requests]

    # ---- merged rounds (gather_rounds) ---------------------------------------------------------------
    async def _merged(self, member: Hashable, todo: dict[str, Request], validate: Validator | None
                      ) -> dict[str, Completion]:
        """Wait for the round's merged batch; this caller's answers, its ledger credited with what it paid."""
        ask = _Ask(member, todo, validate, _LEDGER.get(), asyncio.get_running_loop().create_future())
        self._waiting.append(ask)
        self._flush_if_ready()
        return await ask.answers

    def _flush_if_ready(self) -> None:
        """Send the waiting callers' requests as one round once every active member waits."""
        if not self._waiting or not self._members <= {a.member for a in self._waiting}:
            return
        asks, self._waiting = self._waiting, []
        # its own empty context: what the round pays is credited to each caller's ledger in _round, not to
        # whichever caller happened to complete the round
        asyncio.get_running_loop().create_task(self._round(asks), context=contextvars.Context())

    async def _round(self, asks: list["_Ask"]) -> None:
        todo: dict[str, Request] = {}
        checks: dict[Request, list[Validator]] = {}
        for a in asks:
            for k, r in a.todo.items():
                todo.setdefault(k, r)
                if a.validate is not None:
                    checks.setdefault(r, []).append(a.validate)

        def validate(request: Request, completion: Completion) -> None:  # every asker's check must pass
            for check in checks.get(request, ()):
                check(request, completion)

        log.info("round of %d callers: %d distinct requests (%d asked)", len(asks), len(todo),
                 sum(len(a.todo) for a in asks))
        paid: dict[str, float] = {}
        try:
            answers = await self._collect(todo, validate, paid)
        except BaseException as exc:  # noqa: BLE001 - every caller of the round gets it
            for a in asks:
                if not a.answers.done():
                    a.answers.set_exception(exc)
            return
        owned: set[str] = set()
        for a in asks:  # the first asker of an answer paid for it; later ones shared it
            if a.ledger is not None:
                for k in a.todo:
                    if k in paid and k not in owned:
                        a.ledger.paid += paid[k]
                        a.ledger.sent += 1
                    elif k in paid:
                        a.ledger.shared += 1
                    else:
                        a.ledger.cached += 1
            owned.update(k for k in a.todo if k in paid)
            if not a.answers.done():
                a.answers.set_result({k: answers[k] for k in a.todo})

    # ---- one run: attach, submit what fits, wait, repeat for what failed -------------------------------
    async def _collect(self, todo: dict[str, Request], validate: Validator | None,
                       paid: dict[str, float] | None = None) -> dict[str, Completion]:
        answers: dict[str, Completion] = {}
        tries: dict[str, int] = {}  # batches each request went out in (a tight max_cost splits a round: not a retry)
        while todo:
            async with self._lock():
                with self.journal.locked():
                    mine = [rec for rec in self.journal.records()
                            if rec["host"] == self._host() and not todo.keys().isdisjoint(rec["keys"])]
                    mine = [rec for rec in await asyncio.gather(*(self._recover(rec) for rec in mine)) if rec]
                    for rec in mine:
                        log.info("batch %s already submitted (%d requests): waiting for it instead of resubmitting",
                                 rec["batch_id"], len(rec["keys"]))
                    self.batches_resumed += len(mine)
                    taken = {k for rec in mine for k in rec["keys"]}
                    fresh = {k: r for k, r in todo.items() if k not in taken}
                    failing = sum(tries.get(k, 0) >= self.max_rounds for k in fresh)
                    if failing:
                        raise self._stop(ServerError(
                            f"{failing} requests still failed after {self.max_rounds} batches; their answers are not "
                            "cached: rerun to try again"))
                    if fresh:
                        submitted = await self._submit(fresh)
                        for rec in submitted:
                            for k in rec["keys"]:
                                tries[k] = tries.get(k, 0) + 1
                        mine += submitted
            if not mine:  # nothing fits the cap right now; waiting for concurrent runs on this runner
                await self._state().budget_changed.wait()
                continue
            tasks = [asyncio.ensure_future(self._finish(rec, todo, validate, paid)) for rec in mine]
            try:
                done = await asyncio.gather(*tasks)
            except BaseException:  # the others stay journaled: a rerun collects them
                for t in tasks:
                    t.cancel()
                raise
            for got in done:
                answers.update(got)
            todo = {k: r for k, r in todo.items() if k not in answers}
        return answers

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop not in self._locks:
            self._locks[loop] = asyncio.Lock()
        return self._locks[loop]

    def _host(self) -> str:
        return f"{self.adapter.provider}|{self.adapter.base_url or ''}"

    async def _recover(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A journaled record with its batch id; one whose process died before the id was known is looked up
        by tag (OpenAI) or, not found, dropped (its requests are submitted again)."""
        if rec.get("batch_id"):
            return rec
        found = await self._api_call(lambda: self.api.find(rec["tag"])) if self.api.metadata else None
        if found is None:
            log.warning("journal %s: its batch was never created; its requests will be submitted", rec["tag"])
            self.journal.remove(rec["tag"])
            return None
        rec["batch_id"] = found
        self.journal.write(rec)
        return rec

    def _chunks(self, todo: dict[str, Request]) -> Iterator[tuple[str, list[tuple[str, Request, dict[str, Any]]]]]:
        """(endpoint, entries) groups within the batch limits (one endpoint per OpenAI batch)."""
        by_endpoint: dict[str, list[tuple[str, Request]]] = {}
        for k, r in todo.items():
            by_endpoint.setdefault(self.adapter.endpoint(r), []).append((k, r))
        for endpoint, items in by_endpoint.items():
            chunk: list[tuple[str, Request, dict[str, Any]]] = []
            size = 0
            for k, r in items:
                e = self.api.entry(k, r)
                n = self.api.size(e)
                if n > self.max_batch_bytes:
                    raise ConfigurationError(f"one request is {n} bytes, above the batch limit {self.max_batch_bytes}")
                if chunk and (len(chunk) >= self.max_batch_requests or size + n > self.max_batch_bytes):
                    yield endpoint, chunk
                    chunk, size = [], 0
                chunk.append((k, r, e))
                size += n
            if chunk:
                yield endpoint, chunk

    def _fit(self, chunk: list[tuple[str, Request, dict[str, Any]]]) -> tuple[list[Any], float]:
        """The longest head of `chunk` whose worst case fits what max_cost / max_queries leave, and that cost."""
        room = None if self.max_cost is None else self.max_cost - self.stats.spend - self._cost_reserved + 1e-12
        calls = None if self.max_queries is None else self.max_queries - self._queries_reserved
        total, n = 0.0, 0
        for _, r, _ in chunk:
            w = self.worst_case_cost(r)
            if (room is not None and total + w > room) or (calls is not None and n + 1 > calls):
                break
            total, n = total + w, n + 1
        return chunk[:n], total

    async def _submit(self, todo: dict[str, Request]) -> list[dict[str, Any]]:
        """Submit batches for as much of `todo` as the caps allow; journal each before waiting for it."""
        records: list[dict[str, Any]] = []
        for endpoint, chunk in self._chunks(todo):
            part, worst = self._fit(chunk)
            if not part:
                if records or self._open_reservations:
                    break  # the rest waits until submitted batches settle
                raise self._stop(CapExceededError(
                    f"max_cost=${self.max_cost}: spent ${self.stats.spend:.6f}, the next request may cost up to "
                    f"${self.worst_case_cost(chunk[0][1]):.6f} at batch prices; nothing more is submitted. Cached "
                    "answers are kept: raise the cap and rerun." if self.max_cost is not None else
                    f"max_queries={self.max_queries} reached; nothing more is submitted"))
            if len(part) < len(chunk):
                log.warning("max_cost leaves room for %d of %d requests at their worst case: submitting them first, "
                            "the rest after they are answered", len(part), len(chunk))
            tag = uuid.uuid4().hex
            rec = {"tag": tag, "host": self._host(), "model": self.adapter.model, "endpoint": endpoint,
                   "batch_id": None, "submitted": time.time(), "keys": [k for k, _, _ in part],
                   "requests": [_request_to_json(r) for _, r, _ in part]}
            self.journal.write(rec)  # before create: a process killed during create leaves a findable trace
            self._queries_reserved += len(part)
            self._cost_reserved += worst
            self._open_reservations += 1
            rec["worst"] = worst
            try:
                rec["batch_id"], rec["input_file_id"] = await self._create([e for _, _, e in part], endpoint, tag)
            except BaseException:
                self._queries_reserved -= len(part)
                self._settle(worst, 0.0, self._state())
                self.journal.remove(tag)
                raise
            self.journal.write(rec)
            self.stats.api_calls += len(part)
            self.batches_submitted += 1
            log.info("submitted batch %s: %d requests to %s, worst case $%.6f at batch prices; results within %d h",
                     rec["batch_id"], len(part), endpoint, worst, BATCH_WINDOW_HOURS)
            records.append(rec)
        return records

    async def _create(self, entries: list[dict[str, Any]], endpoint: str, tag: str) -> tuple[str, str | None]:
        """batches.create with retries; after a failure whose outcome is unknown, a batch that was created
        anyway is found by its tag (OpenAI) rather than created twice."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._translated(self.api.submit(entries, endpoint, tag))
            except TransientError as exc:
                if exc.billed_unknown and self.api.metadata:
                    found = await self._api_call(lambda: self.api.find(tag))
                    if found is not None:
                        return found, None
                if attempt >= self.max_attempts:
                    raise
                await asyncio.sleep(min(self.backoff_initial * 2 ** attempt, self.backoff_max))

    async def _translated(self, awaitable: Any) -> Any:
        """Await an SDK call; its errors become providers.errors classes (raised outside the except block,
        so the SDK's exception, which may quote the key, is not chained)."""
        translated = None
        try:
            return await awaitable
        except Exception as exc:
            translated = self.adapter._translate(exc)
            if translated is exc:
                raise
        raise translated

    async def _api_call(self, make: Any) -> Any:
        """A management call (retrieve, list, download) with retries on transient errors."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._translated(make())
            except TransientError:
                self.stats.retries += 1
                if attempt >= self.max_attempts:
                    raise
                await asyncio.sleep(min(self.backoff_initial * 2 ** attempt, self.backoff_max))

    async def _finish(self, rec: dict[str, Any], todo: dict[str, Request], validate: Validator | None,
                      paid: dict[str, float] | None = None) -> dict[str, Completion]:
        """Wait for a batch to end; cache every answer in it; return those this run asked for (and what each
        fresh one cost in `paid`). Failures that a follow-up batch may fix are left out (the caller resubmits
        them); others stop the run."""
        batch_id, delay = rec["batch_id"], self.poll_initial
        state = ""
        while True:
            st = await self._api_call(lambda: self.api.status(batch_id))
            if st.state != state:
                log.info("batch %s: %s (%d/%d done)", batch_id, st.state, st.done, st.total)
                state = st.state
            if st.ended:
                break
            if self._abort is not None:  # stop(): the batch stays journaled, a rerun collects it
                log.info("batch %s left running (journaled in %s): rerun to collect it", batch_id,
                         self.journal.directory)
                raise self._abort
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max)
        if st.failure:
            self._release(rec, 0.0)
            self.journal.remove(rec["tag"])
            raise self._stop(InvalidRequestError(f"batch {batch_id} was rejected: {st.failure[:500]}"))
        requests = dict(zip(rec["keys"], (_request_from_json(d) for d in rec["requests"])))
        got: dict[str, Completion] = {}
        spent, retry = 0.0, 0
        fatal: FatalAPIError | None = None
        seen: set[str] = set()
        async for out in await self._api_call(lambda: _listed(self.api.results(batch_id))):
            request = requests.get(out.key)
            if request is None or out.key in seen:
                continue  # not ours (or a duplicate line): never use an answer we cannot match
            seen.add(out.key)
            if out.payload is None:
                if out.retriable:
                    retry += 1
                elif fatal is None:
                    fatal = InvalidRequestError(f"batch {batch_id}: {out.code or out.status}: {out.message}",
                                                out.status)
                continue
            hit = self._cached(self.disk, request, out.key, validate)  # another process collected it first: paid there
            if hit is not None:
                got[out.key] = hit
                _count("cached")
                continue
            try:
                completion = self.adapter.parse(out.payload, request)
            except UnexpectedAnswerError as exc:
                fatal = fatal or exc
                continue
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                fatal = fatal or UnexpectedAnswerError(f"batch {batch_id}: an answer is not a {rec['endpoint']} "
                                                       f"answer ({type(exc).__name__}: {str(exc)[:200]})")
                continue
            cost = self.price.cost(completion.usage)
            spent += cost
            self._add_usage(completion.usage)
            _count("sent")
            _count("paid", cost)
            if validate is not None and out.key in todo:
                try:
                    validate(request, completion)
                except Exception as exc:  # noqa: BLE001 - whatever the caller's check raises means "unusable"
                    log.warning("batch %s: answer %s is unusable (%s): never cached, asked again", batch_id,
                                out.key, exc)
                    retry += 1
                    continue
            self.disk.put(out.key, completion)  # durable before anyone uses it
            got[out.key] = completion
            if paid is not None:
                paid[out.key] = cost
        missing = len(requests) - len(seen)
        self._release(rec, spent)
        self.journal.remove(rec["tag"])
        if retry or missing:
            self.stats.failures += retry + missing
            log.warning("batch %s (%s): %d answered, %d not processed or failed transiently%s", batch_id, st.state,
                        len(got), retry + missing, "" if st.cancelled else ": they go into a follow-up batch")
        if st.cancelled:
            raise self._stop(BatchCancelledError(
                f"batch {batch_id} was cancelled: {len(got)} answers are cached, {len(requests) - len(got)} requests "
                "were not answered; rerun to submit them again"))
        if fatal is not None:
            raise self._stop(fatal)
        return {k: c for k, c in got.items() if k in todo}

    def _release(self, rec: dict[str, Any], spent: float) -> None:
        """Settle a batch's reservation (if this process made it) with what its answers cost."""
        if "worst" in rec:
            self._settle(rec.pop("worst"), spent, self._state())
        else:  # a batch an earlier process submitted: its answers are paid either way
            self.stats.spend += spent


async def _listed(it: AsyncIterator[Outcome]) -> AsyncIterator[Outcome]:
    """Read a whole result stream first (so a dropped download is retried from the start, not half used)."""
    rows = [o async for o in it]

    async def again() -> AsyncIterator[Outcome]:
        for o in rows:
            yield o

    return again()


__all__ = ["AnthropicBatchAPI", "BatchAPI", "BatchCancelledError", "BatchRunner", "Journal", "OpenAIBatchAPI",
           "Outcome", "Status", "batch_api"]
