"""Disk cache of paid answers: a cached answer costs nothing, and a killed run resumes where it stopped.

Backed by diskcache (SQLite, safe when several processes share the directory). The key is the SHA-256 of
the canonical JSON of provider, endpoint, model and request body (plus a sample index when one request is
split into several calls) — never the API key, which adapters do not put in the body. Values are JSON
(`Completion.to_dict()`), not pickles, so a cache directory can be inspected and shared safely.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import diskcache

from providers.types import Completion


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no whitespace) of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ResponseCache:
    """Completions on disk by key; each `put` is committed before it returns (durable across kill -9)."""

    def __init__(self, directory: str | os.PathLike[str], size_limit: int = 2**32) -> None:
        self.directory = os.fspath(directory)
        # No eviction of paid answers: 'none' policy; size_limit only matters for diskcache's culling.
        self._cache = diskcache.Cache(self.directory, size_limit=size_limit, eviction_policy="none")

    def get(self, key: str) -> Completion | None:
        raw = self._cache.get(key)
        return None if raw is None else Completion.from_dict(json.loads(raw))

    def put(self, key: str, completion: Completion) -> None:
        self._cache.set(key, json.dumps(completion.to_dict(), separators=(",", ":")))

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()

    def __repr__(self) -> str:
        return f"ResponseCache({self.directory!r})"
