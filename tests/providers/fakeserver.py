"""A real local HTTP server speaking the OpenAI and Anthropic wire formats, able to misbehave on command.

It listens on 127.0.0.1 (real sockets, so the official SDKs run unmodified against it) and serves
`/v1/chat/completions`, `/v1/completions` (legacy, with vLLM-style `prompt_logprobs`), `/v1/responses` and
`/v1/messages`; the token-counting routes (`/tokenize`, `/apply-template`, `/v1/messages/count_tokens`) are
404 (counted in `counter_calls`, never in `requests`), as on a server without a counter.
Answers are a deterministic function of the request body, so a rerun gets identical scores.

Misbehaviour is scripted: `script([...])` queues faults for the next requests in arrival order, and
`fail_first([...])` makes every distinct body go through the listed faults before it is answered. Fault kinds:
"429" (Retry-After), "429ms" (retry-after-ms), "quota" (429 insufficient_quota), "500", "503", "529"
(Anthropic overloaded), "401", "403", "400", "timeout" (hold the request, then drop it), "malformed"
(200 with broken JSON), "reset" (TCP RST), and billed 200 answers no scorer can use: "nanlogprob",
"emptylogprobs" (logprobs.content []), "nulllogprobs" (content null), "notop" (no top_logprobs). Only well-formed 200 answers count as paid: `stats()["paid"]`
maps a body hash to how many times it was answered. A request whose client hung up while it was being
worked on (e.g. the client process was killed) is counted under "abandoned" instead: a real provider would
bill it, but nobody received the answer. `max_concurrent` is the most requests handled at once.

Runs in a thread (`with FakeServer() as s:`) or as its own process (`python tests/providers/fakeserver.py
--latency 0.2` prints the port), controlled over HTTP through `POST /_control` and `GET /_stats`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABELS = ("True", "False", "Maybe", "Yes", "No", "Unknown")
# Free token counters of llama-server and Anthropic, which this server lacks (never answers, never faults).
COUNTER_ROUTES = ("/apply-template", "/tokenize", "/v1/messages/count_tokens")


def body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _unit(*parts: Any) -> float:
    """Deterministic number in (0, 1) from the parts."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return (int.from_bytes(h[:8], "big") + 0.5) / 2**64


def _prompt_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    parts = [str(body.get("system", ""))]
    for m in body.get("messages", body.get("input", [])):
        c = m.get("content", "")
        parts.append(c if isinstance(c, str) else " ".join(b.get("text", "") for b in c))
    return "\n".join(parts)


def _answer(body: dict[str, Any], sample: int) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """Tokens of one answer and, per token, the ranked alternatives with logprobs (a proper distribution)."""
    text = _prompt_text(body)
    u = _unit(text)
    p_true = 0.05 + 0.9 * u
    dist = sorted(
        [("True", p_true * 0.9), ("False", (1 - p_true) * 0.9)] + [(w, 0.1 / 4) for w in LABELS[2:]],
        key=lambda x: -x[1],
    )
    top = [(t, math.log(p)) for t, p in dist]
    temp = float(body.get("temperature", 0) or 0)
    first = top[0][0] if temp == 0 else ("True" if _unit(text, sample, body.get("seed")) < p_true else "False")
    tokens = [first, ".", " Done"][: max(1, int(body.get("max_tokens") or body.get("max_completion_tokens")
                                              or body.get("max_output_tokens") or 16))]
    tops = [top] + [[(t, -0.01), ("!", -4.6)] for t in tokens[1:]]
    return tokens, tops


def _n_tokens(text: str) -> int:
    return max(1, len(text.split()))


class State:
    def __init__(self, latency: float = 0.0, timeout_hold: float = 2.0) -> None:
        self.lock = threading.Lock()
        self.latency = latency
        self.timeout_hold = timeout_hold
        self.queue: deque[dict[str, Any]] = deque()
        self.first_faults: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.requests = 0
        self.counter_calls = 0  # calls to the token-counting routes it does not serve
        self.faults_served: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request, as bodies (rate limits seen here)
        self.ratelimit_headers: dict[str, str] = {}
        self.abandoned = 0
        self.active = 0
        self.max_concurrent = 0
        self.drop_logprobs = False  # answer like a server that ignores `logprobs`

    def control(self, cmd: dict[str, Any]) -> None:
        with self.lock:
            if "latency" in cmd:
                self.latency = float(cmd["latency"])
            if "script" in cmd:
                self.queue.extend(_fault(f) for f in cmd["script"])
            if "fail_first" in cmd:
                self.first_faults = [_fault(f) for f in cmd["fail_first"]]
            if "drop_logprobs" in cmd:
                self.drop_logprobs = bool(cmd["drop_logprobs"])
            if "ratelimit_headers" in cmd:
                self.ratelimit_headers = dict(cmd["ratelimit_headers"])
            if cmd.get("reset"):
                self.queue.clear()
                self.first_faults = []
                self.seen.clear()
                self.paid.clear()
                self.requests = 0
                self.counter_calls = 0
                self.faults_served.clear()
                self.headers_seen.clear()
                self.bodies.clear()
                self.arrivals.clear()
                self.abandoned = 0
                self.max_concurrent = 0
                self.drop_logprobs = False

    def next_fault(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            self.requests += 1
            attempt = self.seen[key]
            self.seen[key] += 1
            if self.queue:
                return self.queue.popleft()
            if attempt < len(self.first_faults):
                return self.first_faults[attempt]
            return None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "counter_calls": self.counter_calls,
                "paid": dict(self.paid),
                "paid_total": sum(self.paid.values()),
                "faults_served": dict(self.faults_served),
                "pending_script": len(self.queue),
                "abandoned": self.abandoned,
                "max_concurrent": self.max_concurrent,
                "arrivals": list(self.arrivals),
            }


def _fault(f: str | dict[str, Any]) -> dict[str, Any]:
    return {"kind": f} if isinstance(f, str) else dict(f)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, self.server.state.stats())
        elif self.path in ("/health", "/v1/models"):
            self._send(200, {"status": "ok", "data": []})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path == "/_control":
            state.control(json.loads(raw))
            self._send(200, {"ok": True})
            return
        if self.path in COUNTER_ROUTES:  # like a server without a token counter: estimates fall back to chars/4
            with state.lock:
                state.counter_calls += 1
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        with state.lock:
            state.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            state.bodies.append(body)
            state.arrivals.append(time.monotonic())
        with state.lock:
            state.active += 1
            state.max_concurrent = max(state.max_concurrent, state.active)
        try:
            self._serve(body, state)
        finally:
            with state.lock:
                state.active -= 1

    def _client_gone(self) -> bool:
        """True if the client closed its end (it sends nothing else while waiting for our answer)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _serve(self, body: dict[str, Any], state: State) -> None:
        anthropic = self.path.endswith("/messages")
        key = body_hash(body)
        fault = state.next_fault(key)
        if state.latency:
            time.sleep(state.latency)
        if fault is not None:
            with state.lock:
                state.faults_served[fault["kind"]] += 1
            if fault["kind"] not in _UNUSABLE:
                self._misbehave(fault, anthropic)
                return
        if self.path.endswith("/chat/completions"):
            payload = self._chat(body)
        elif self.path.endswith("/responses"):
            payload = self._responses(body)
        elif self.path.endswith("/completions"):
            payload = self._completions(body)
        elif anthropic:
            payload = self._messages(body)
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        if fault is not None:  # a well-formed, billed 200 that no scorer can use
            _UNUSABLE[fault["kind"]](payload)
        with state.lock:
            if self._client_gone():
                state.abandoned += 1
                self.close_connection = True
                return
            state.paid[key] += 1
            extra = dict(state.ratelimit_headers)
        self._send(200, payload, extra)

    # ---- faults -------------------------------------------------------------------------------------
    def _misbehave(self, fault: dict[str, Any], anthropic: bool) -> None:
        kind = fault["kind"]

        def err(status: int, etype: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
            if anthropic:
                payload = {"type": "error", "error": {"type": etype, "message": f"fake {kind}"}}
            else:
                payload = {"error": {"message": f"fake {kind}", "type": etype, "param": None, "code": code}}
            self._send(status, payload, headers)

        if kind == "429":
            err(429, "rate_limit_error" if anthropic else "requests", "rate_limit_exceeded",
                {"retry-after": str(fault.get("retry_after", 0.2))})
        elif kind == "429ms":
            err(429, "rate_limit_error", "rate_limit_exceeded", {"retry-after-ms": str(fault.get("ms", 200))})
        elif kind == "quota":
            err(429, "insufficient_quota", "insufficient_quota")
        elif kind in ("500", "503"):
            err(int(kind), "api_error" if anthropic else "server_error")
        elif kind == "529":
            err(529, "overloaded_error")
        elif kind == "401":  # like OpenAI, echo (part of) the key back in the message
            sent = self.headers.get("authorization", "").removeprefix("Bearer ") or self.headers.get("x-api-key", "")
            payload_msg = f"Incorrect API key provided: {sent}. You can find your API key at ..."
            payload = ({"type": "error", "error": {"type": "authentication_error", "message": payload_msg}} if anthropic
                       else {"error": {"message": payload_msg, "type": "invalid_request_error", "code": "invalid_api_key"}})
            self._send(401, payload)
        elif kind == "403":
            err(403, "permission_error")
        elif kind == "400":
            err(400, "invalid_request_error")
        elif kind == "malformed":
            self._send(200, None, raw=b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
        elif kind == "wrongshape":  # well-formed JSON, but not an answer of this API
            self._send(200, {"id": "chatcmpl-empty", "object": "chat.completion", "choices": []})
        elif kind == "timeout":
            time.sleep(float(fault.get("hold", self.server.state.timeout_hold)))
            self.close_connection = True
        elif kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        else:
            err(400, "invalid_request_error", f"unknown fault {kind}")

    # ---- wire formats -------------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        k = body.get("top_logprobs")
        choices = []
        out_tokens = 0
        for i in range(n):
            tokens, tops = _answer(body, i)
            out_tokens += len(tokens)
            lp = None
            if body.get("logprobs") and not self.server.state.drop_logprobs:
                content = []
                for t, alts in zip(tokens, tops):
                    own = dict(alts).get(t, -9.0)
                    content.append({
                        "token": t, "logprob": own, "bytes": list(t.encode()),
                        "top_logprobs": [{"token": a, "logprob": p, "bytes": list(a.encode())} for a, p in alts[: k or 0]],
                    })
                lp = {"content": content, "refusal": None}
            choices.append({"index": i, "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": lp, "finish_reason": "stop"})
        prompt_tokens = _n_tokens(_prompt_text(body)) + 3 * len(body.get("messages", []))
        out = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model", ""),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                      "total_tokens": prompt_tokens + out_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }
        if body.get("prompt_logprobs") is not None:
            out["prompt_logprobs"] = self._prompt_lps(body)
        return out

    def _responses(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI Responses format: logprobs inside the output_text part when included."""
        tokens, tops = _answer(body, 0)
        k = int(body.get("top_logprobs") or 0)
        part: dict[str, Any] = {"type": "output_text", "text": "".join(tokens), "annotations": []}
        if "message.output_text.logprobs" in (body.get("include") or ()):
            part["logprobs"] = [{"token": t, "logprob": dict(alts).get(t, -9.0), "bytes": list(t.encode()),
                                 "top_logprobs": [{"token": a, "logprob": p, "bytes": list(a.encode())}
                                                  for a, p in alts[:k]]} for t, alts in zip(tokens, tops)]
        prompt_tokens = _n_tokens(_prompt_text(body)) + 3 * len(body.get("input", []))
        return {"id": "resp_fake", "object": "response", "created_at": 0, "status": "completed",
                "model": body.get("model", ""), "incomplete_details": None, "error": None,
                "output": [{"type": "reasoning", "id": "rs_fake", "summary": []},
                           {"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed",
                            "content": [part]}],
                "usage": {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 2},
                          "output_tokens": len(tokens), "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": prompt_tokens + len(tokens)}}

    def _prompt_lps(self, body: dict[str, Any]) -> list[Any]:
        words = re.findall(r"\s*\S+", _prompt_text(body))  # word tokens keep their leading whitespace, like BPE
        rows: list[Any] = [None]
        for i, w in enumerate(words[1:], start=1):
            lp = math.log(0.05 + 0.9 * _unit(words[:i], w))
            rows.append({str(1000 + i): {"logprob": lp, "rank": 1, "decoded_token": w},
                         "7": {"logprob": -6.0, "rank": 2, "decoded_token": "the"}})
        return rows

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        k = body.get("logprobs")
        choices = []
        out_tokens = 0
        for i in range(n):
            tokens, tops = _answer(body, i)
            out_tokens += len(tokens)
            lp = None
            if k is not None:
                lp = {"tokens": tokens, "token_logprobs": [dict(a).get(t, -9.0) for t, a in zip(tokens, tops)],
                      "top_logprobs": [dict(a[:k]) for a in tops], "text_offset": list(range(len(tokens)))}
            choice = {"index": i, "text": "".join(tokens), "logprobs": lp, "finish_reason": "stop"}
            if body.get("prompt_logprobs") is not None:
                choice["prompt_logprobs"] = self._prompt_lps(body)
            choices.append(choice)
        prompt_tokens = _n_tokens(_prompt_text(body))
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body.get("model", ""),
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                          "total_tokens": prompt_tokens + out_tokens}}

    def _messages(self, body: dict[str, Any]) -> dict[str, Any]:
        tokens, _ = _answer(body, 0)
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", ""),
                "content": [{"type": "text", "text": "".join(tokens)}], "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": _n_tokens(_prompt_text(body)), "output_tokens": len(tokens),
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}


def _chat_positions(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for c in payload["choices"] for t in ((c.get("logprobs") or {}).get("content") or ())]


def _nan_logprob(payload: dict[str, Any]) -> None:
    for t in _chat_positions(payload):
        t["logprob"] = math.nan  # json.dumps writes NaN, which json.loads (and the SDKs) accept
        if t["top_logprobs"]:
            t["top_logprobs"][0]["logprob"] = math.nan


def _empty_content(payload: dict[str, Any]) -> None:
    for c in payload["choices"]:
        if c.get("logprobs"):
            c["logprobs"]["content"] = []


def _null_content(payload: dict[str, Any]) -> None:
    for c in payload["choices"]:
        if c.get("logprobs"):
            c["logprobs"]["content"] = None


def _no_top(payload: dict[str, Any]) -> None:
    for t in _chat_positions(payload):
        t.pop("top_logprobs", None)


# 200 answers that parse but cannot be scored (chat completions): billed like any answer
_UNUSABLE = {"nanlogprob": _nan_logprob, "emptylogprobs": _empty_content, "nulllogprobs": _null_content,
             "notop": _no_top}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    state: State

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, kill -9, resets we caused) are expected here: stay quiet."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeServer:
    """The fake provider in a background thread of this process; use as a context manager."""

    def __init__(self, latency: float = 0.0, timeout_hold: float = 2.0, port: int = 0) -> None:
        self._httpd = _Server(("127.0.0.1", port), Handler)
        self._httpd.state = State(latency, timeout_hold)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def state(self) -> State:
        return self._httpd.state

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def script(self, faults: list[str | dict[str, Any]]) -> None:
        self.state.control({"script": faults})

    def fail_first(self, faults: list[str | dict[str, Any]]) -> None:
        self.state.control({"fail_first": faults})

    def stats(self) -> dict[str, Any]:
        return self.state.stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    server = FakeServer(latency=args.latency, port=args.port)
    print(server.port, flush=True)
    server._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    sys.exit(main())
