"""Test double of the OpenAI Batch API and Anthropic Message Batches that forwards to a REAL model server.

It emulates the batch protocols only: every batched request is forwarded to a real llama-server
(`providers.local.LocalServer`) and its real answer comes back in the provider's batch result format. The
wire shapes follow the official SDK types (openai: `FileObject`, `Batch`, `BatchRequestCounts`, output/error
file lines `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`; anthropic:
`MessageBatch`, `MessageBatchRequestCounts`, `MessageBatchIndividualResponse` with succeeded / errored /
canceled / expired results), so the official SDKs' `files`, `batches` and `messages.batches` clients talk to
it unchanged. Routes: `POST /v1/files` (multipart), `GET /v1/files/{id}[/content]`, `POST|GET /v1/batches`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, `POST /v1/messages/batches`,
`GET /v1/messages/batches/{id}[/results]`, `POST /v1/messages/batches/{id}/cancel`, and Anthropic's free
`POST /v1/messages/count_tokens` (answered by the real server's own counter, `counted` counts the calls).

Usage is reported as each provider would bill it, since Gemma's own counts are not what OpenAI bills:
OpenAI answers are re-counted with OpenAI's public tokenizer (tiktoken's encoding for the model; 3 tokens per
message plus 3 priming, as OpenAI documents) and get `cached_tokens` by OpenAI's prompt-caching rule (a prompt
of at least 1024 tokens reuses the longest prefix seen before, in 128-token steps). Anthropic has no public
tokenizer, so its answers keep the real server's counts, and cache reads/writes follow Anthropic's rule
(the prefix up to the last `cache_control` block, if at least the model's minimum, is written on first use and
read afterwards). Real providers hit their caches less reliably in batches; this double always hits.

Faults are set on the object: `hold` (a threading.Event; batches wait until it is set), `expire_after=N`
(a batch processes N requests, then expires), `cancel_after=N` (the batch is cancelled, as from the
dashboard, after N requests), `fail_first=N` (the first N requests forwarded fail with a 500 / api_error).
`forwarded` counts requests sent to the model per custom_id (a paid request), `created` counts batches.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from providers.adapters.anthropic import cache_min_tokens
from providers.adapters.base import tiktoken_encoding

OPENAI_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPENAI_CACHE_MIN, OPENAI_CACHE_STEP = 1024, 128


def _now() -> int:
    return int(time.time())


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


class BatchServer:
    """The emulator (see module doc); `with BatchServer(local_server) as s:` serves on `s.base_url` (`port`: a
    fixed one, so answers cached by an earlier process under this server's URL are found again)."""

    def __init__(self, model_server: Any, parallel: int = 4, port: int = 0) -> None:
        self.model_root = model_server.root_url
        self.parallel = parallel
        self.hold = threading.Event()
        self.hold.set()
        self.expire_after: int | None = None
        self.cancel_after: int | None = None
        self.fail_first = 0
        self.forwarded: Counter[str] = Counter()
        self.created = 0
        self.counted = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._openai_seen: set[bytes] = set()
        self._anthropic_seen: set[str] = set()
        self._pool = ThreadPoolExecutor(parallel)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())  # a fixed port keeps cache keys
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def __enter__(self) -> "BatchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._pool.shutdown(wait=True)

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}{hashlib.sha256(str(time.time()).encode()).hexdigest()[:12]}"

    # ------------------------------------------------------------------ forwarding to the real server
    def _forward(self, path: str, body: dict[str, Any], fault: bool = True) -> tuple[int, dict[str, Any]]:
        with self._lock:
            fail = fault and self.fail_first > 0
            self.fail_first -= fail
        if fail:
            return 500, {"error": {"message": "The server had an error processing your request.", "type": "server_error"}}
        req = urllib.request.Request(self.model_root + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def _tokenize(self, text: str) -> int:
        req = urllib.request.Request(self.model_root + "/tokenize", data=json.dumps({"content": text}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return len(json.loads(r.read())["tokens"])

    def _openai_usage(self, url: str, body: dict[str, Any], answer: dict[str, Any]) -> None:
        """Usage as OpenAI bills it: tiktoken counts and OpenAI's prefix-caching rule."""
        enc = tiktoken_encoding(str(body.get("model", "")))
        if enc is None:
            return
        if url.endswith("/chat/completions"):
            tokens = [t for m in body["messages"] for t in enc.encode(m["role"] + "\n" + m["content"],
                                                                      disallowed_special=())]
            prompt = sum(3 + len(enc.encode(m["content"], disallowed_special=())) + len(enc.encode(m["role"]))
                         for m in body["messages"]) + 3
            texts = [(c.get("message") or {}).get("content") or "" for c in answer.get("choices", ())]
            cap = body.get("max_completion_tokens") or body.get("max_tokens")
        else:
            tokens = enc.encode(body["prompt"], disallowed_special=())
            prompt = len(tokens)
            texts = [c.get("text") or "" for c in answer.get("choices", ())]
            cap = body.get("max_tokens")
        served = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        out = sum(max(len(enc.encode(t, disallowed_special=())), 1 if served else 0) for t in texts)
        if cap:
            out = min(out, int(cap) * max(1, len(texts)))
        cached = 0
        if prompt >= OPENAI_CACHE_MIN:
            marks = range(OPENAI_CACHE_MIN, len(tokens) + 1, OPENAI_CACHE_STEP)
            digests = [hashlib.sha256(repr(tokens[:k]).encode()).digest() for k in marks]
            with self._lock:
                hits = [k for k, d in zip(marks, digests) if d in self._openai_seen]
                self._openai_seen.update(digests)
            cached = max(hits, default=0)
        answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
                           "prompt_tokens_details": {"cached_tokens": cached}}

    def _anthropic_usage(self, params: dict[str, Any], answer: dict[str, Any]) -> None:
        """Real token counts; cache writes/reads by Anthropic's cache_control rule (the server's own reuse of
        its KV cache is not what Anthropic bills)."""
        u = answer.get("usage") or {}
        total = int(u.get("input_tokens") or 0) + int(u.get("cache_read_input_tokens") or 0)
        system = params.get("system")
        blocks = ([b for b in system] if isinstance(system, list) else [{"type": "text", "text": system}] if system
                  else [])
        for m in params["messages"]:
            blocks += m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        last = max((i for i, b in enumerate(blocks) if b.get("cache_control")), default=None)
        read = written = 0
        if last is not None:
            prefix = "".join(b.get("text", "") for b in blocks[: last + 1])
            n = min(self._tokenize(prefix), total)
            if n >= cache_min_tokens(str(params.get("model", ""))):
                key = hashlib.sha256(f"{params.get('model')}|{prefix}".encode()).hexdigest()
                with self._lock:
                    hit = key in self._anthropic_seen
                    self._anthropic_seen.add(key)
                read, written = (n, 0) if hit else (0, n)
        answer["usage"] = {"input_tokens": total - read - written, "output_tokens": int(u.get("output_tokens") or 0),
                           "cache_read_input_tokens": read, "cache_creation_input_tokens": written}

    # ------------------------------------------------------------------ processing a batch
    def _process(self, batch: dict[str, Any]) -> None:
        self.hold.wait()
        items: list[dict[str, Any]] = batch["_items"]
        done = 0
        stop_state = None
        futures = []
        for item in items:
            with self._lock:
                if batch["_cancel"]:
                    stop_state = "cancelled"
                elif self.expire_after is not None and done >= self.expire_after:
                    stop_state = "expired"
                elif self.cancel_after is not None and done >= self.cancel_after:
                    stop_state = "cancelled"
                    batch["_cancel"] = True
            if stop_state:
                break
            futures.append(self._pool.submit(self._one, batch, item))
            done += 1
        for f in futures:
            f.result()
        batch["_end"](stop_state)

    def _one(self, batch: dict[str, Any], item: dict[str, Any]) -> None:
        with self._lock:
            self.forwarded[item["custom_id"]] += 1
        if batch["_kind"] == "openai":
            status, answer = self._forward(item["url"], item["body"])
            if status == 200:
                self._openai_usage(item["url"], item["body"], answer)
            item["_result"] = (status, answer)
        else:
            status, answer = self._forward("/v1/messages", item["params"])
            if status == 200:
                self._anthropic_usage(item["params"], answer)
            item["_result"] = (status, answer)

    # ------------------------------------------------------------------ OpenAI
    def _openai_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            return 404, {"error": {"message": "No such File object", "type": "invalid_request_error"}}
        if body.get("completion_window") != "24h" or body.get("endpoint") not in OPENAI_ENDPOINTS:
            return 400, {"error": {"message": "invalid endpoint or completion_window", "type": "invalid_request_error"}}
        t = _now()
        bid = self._id("batch_")
        errors, items, ids = [], [], set()
        for n, line in enumerate(f["_data"].splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                errors.append({"code": "invalid_json_line", "line": n, "message": "not JSON", "param": None})
                continue
            if row.get("url") != body["endpoint"] or row.get("method") != "POST" or row.get("custom_id") in ids:
                errors.append({"code": "invalid_request", "line": n, "param": None,
                               "message": "url must match the batch endpoint, method POST, custom_id unique"})
            ids.add(row.get("custom_id"))
            items.append(row)
        b: dict[str, Any] = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": f["id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": t, "in_progress_at": None,
            "expires_at": t + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(items), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "model": (items[0].get("body") or {}).get("model") if items else None,
        }
        self.created += 1
        if errors:
            b.update(status="failed", failed_at=t, errors={"object": "list", "data": errors})
            self.batches[bid] = {"_public": b}
            return 200, b
        b.update(status="in_progress", in_progress_at=t)
        rec = {"_public": b, "_kind": "openai", "_items": items, "_cancel": False}

        def end(stop: str | None) -> None:
            out, err = [], []
            usage = {"input_tokens": 0, "output_tokens": 0, "cached": 0}
            for it in items:
                rid = self._id("batch_req_")
                if "_result" not in it:
                    code = "batch_expired" if stop == "expired" else "batch_cancelled"
                    err.append({"id": rid, "custom_id": it["custom_id"], "response": None,
                                "error": {"code": code, "message": f"This request could not be executed before the "
                                                                   f"batch was {stop}."}})
                    continue
                status, answer = it["_result"]
                line = {"id": rid, "custom_id": it["custom_id"], "error": None,
                        "response": {"status_code": status, "request_id": rid, "body": answer}}
                (out if status == 200 else err).append(line)
                if status == 200:
                    u = answer["usage"]
                    usage["input_tokens"] += u["prompt_tokens"]
                    usage["output_tokens"] += u["completion_tokens"]
                    usage["cached"] += (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            tt = _now()
            b["finalizing_at"] = tt
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    b[name] = self._store_file(b"".join(json.dumps(r).encode() + b"\n" for r in rows),
                                               "batch_output", f"{bid}_{name}.jsonl")["id"]
            b["request_counts"] = {"total": len(items), "completed": len(out), "failed": len(err)}
            b["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
                          "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                          "input_tokens_details": {"cached_tokens": usage["cached"]},
                          "output_tokens_details": {"reasoning_tokens": 0}}
            if stop == "expired":
                b.update(status="expired", expired_at=tt)
            elif stop == "cancelled":
                b.update(status="cancelled", cancelling_at=b["cancelling_at"] or tt, cancelled_at=tt)
            else:
                b.update(status="completed", completed_at=tt)

        rec["_end"] = end
        self.batches[bid] = rec
        threading.Thread(target=self._process, args=(rec,), daemon=True).start()
        return 200, b

    def _store_file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        fid = self._id("file-")
        f = {"id": fid, "object": "file", "bytes": len(data), "created_at": _now(), "filename": filename,
             "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}
        self.files[fid] = {**f, "_data": data}
        return f

    # ------------------------------------------------------------------ Anthropic
    def _anthropic_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            return 400, _anthropic_error("invalid_request_error", "requests: must be a non-empty list")
        ids = [r.get("custom_id") for r in reqs]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and _CUSTOM_ID.match(i) for i in ids):
            return 400, _anthropic_error("invalid_request_error", "custom_id must be unique and match "
                                         "^[a-zA-Z0-9_-]{1,64}$")
        t = time.time()
        bid = self._id("msgbatch_")
        b: dict[str, Any] = {
            "id": bid, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": _iso(t), "expires_at": _iso(t + 86400), "archived_at": None,
            "cancel_initiated_at": None, "results_url": None,
        }
        items = [dict(r) for r in reqs]
        rec = {"_public": b, "_kind": "anthropic", "_items": items, "_cancel": False}

        def end(stop: str | None) -> None:
            rows, counts = [], Counter()
            for it in items:
                if "_result" not in it:
                    kind = "expired" if stop == "expired" else "canceled"
                    rows.append({"custom_id": it["custom_id"], "result": {"type": kind}})
                    counts[kind] += 1
                    continue
                status, answer = it["_result"]
                if status == 200:
                    rows.append({"custom_id": it["custom_id"], "result": {"type": "succeeded", "message": answer}})
                    counts["succeeded"] += 1
                else:
                    etype = "api_error" if status >= 500 else "invalid_request_error"
                    msg = str((answer.get("error") or {}).get("message") or answer)[:200]
                    rows.append({"custom_id": it["custom_id"],
                                 "result": {"type": "errored", "error": _anthropic_error(etype, msg)}})
                    counts["errored"] += 1
            rec["_results"] = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
            if stop == "cancelled" and b["cancel_initiated_at"] is None:
                b["cancel_initiated_at"] = _iso(time.time())
            b.update(processing_status="ended", ended_at=_iso(time.time()),
                     results_url=f"{self.root_url}/v1/messages/batches/{bid}/results",
                     request_counts={"processing": 0, **{k: counts[k] for k in ("succeeded", "errored", "canceled",
                                                                                 "expired")}})

        rec["_end"] = end
        self.batches[bid] = rec
        self.created += 1
        threading.Thread(target=self._process, args=(rec,), daemon=True).start()
        return 200, b

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") or self.headers.get("x-api-key"):
                    return True
                self._send(401, {"error": {"message": "missing API key", "type": "authentication_error"}})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/v1/batches":
                    data = [r["_public"] for r in reversed(list(server.batches.values()))
                            if r["_public"].get("object") == "batch"]
                    return self._send(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                if len(parts) == 3 and parts[1] == "batches" and parts[2] in server.batches:
                    return self._send(200, server.batches[parts[2]]["_public"])
                if len(parts) >= 3 and parts[1] == "files" and parts[2] in server.files:
                    f = server.files[parts[2]]
                    if len(parts) == 4 and parts[3] == "content":
                        return self._send(200, f["_data"], "application/octet-stream")
                    return self._send(200, {k: v for k, v in f.items() if not k.startswith("_")})
                if len(parts) >= 4 and parts[1:3] == ["messages", "batches"] and parts[3] in server.batches:
                    rec = server.batches[parts[3]]
                    if len(parts) == 5 and parts[4] == "results":
                        if "_results" not in rec:
                            return self._send(400, _anthropic_error("invalid_request_error", "batch still processing"))
                        return self._send(200, rec["_results"], "application/binary")
                    return self._send(200, rec["_public"])
                self._send(404, {"error": {"message": f"no route {path}", "type": "not_found_error"}})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._authorised():
                    return
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/v1/files":
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                    fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                    if fields.get("purpose") is None or fields["purpose"].get_content().strip() != "batch":
                        return self._send(400, {"error": {"message": "purpose must be batch",
                                                          "type": "invalid_request_error"}})
                    upload = fields["file"]
                    return self._send(200, server._store_file(upload.get_payload(decode=True), "batch",
                                                              upload.get_filename() or "upload.jsonl"))
                body = json.loads(raw or b"{}")
                if path == "/v1/batches":
                    return self._send(*server._openai_batch(body))
                if path == "/v1/messages/batches":
                    return self._send(*server._anthropic_batch(body))
                if path == "/v1/messages/count_tokens":  # Anthropic's free counter: the real server's count
                    server.counted += 1
                    return self._send(*server._forward(path, body, fault=False))
                if parts[-1] == "cancel":
                    rec = server.batches.get(parts[-2])
                    if rec is None:
                        return self._send(404, {"error": {"message": "no such batch", "type": "not_found_error"}})
                    with server._lock:
                        rec["_cancel"] = True
                    b = rec["_public"]
                    if b.get("object") == "batch" and b["status"] in ("validating", "in_progress"):
                        b.update(status="cancelling", cancelling_at=_now())
                    elif b.get("type") == "message_batch" and b["processing_status"] == "in_progress":
                        b.update(processing_status="canceling", cancel_initiated_at=_iso(time.time()))
                    return self._send(200, b)
                self._send(404, {"error": {"message": f"no route {path}", "type": "not_found_error"}})

        return Handler


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


__all__ = ["BatchServer"]
