"""Disk cache of paid answers: a cached answer costs nothing, and a killed run resumes where it stopped.

Backed by diskcache (SQLite, safe when several processes share the directory). The key is the SHA-256 of
the canonical JSON of provider, endpoint, model and request body (plus a sample index when one request is
split into several calls) — never the API key, which adapters do not put in the body. Values are JSON
(`Completion.to_dict()`), not pickles, so a cache directory can be inspected and shared safely.

Processes sharing a directory also coordinate: before sending an uncached call a runner `claim`s its key
(an atomic add with an expiry), so two processes asking the same question at once pay for it once; the
other waits for the answer to appear. Claims of processes that died on this host are taken over at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from typing import Any, Mapping

import diskcache

from providers.types import Completion


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no whitespace) of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResponseCache:
    """Completions on disk by key; each `put` is committed before it returns (durable across kill -9)."""

    def __init__(self, directory: str | os.PathLike[str], size_limit: int = 2**32) -> None:
        self.directory = os.fspath(directory)
        # No eviction of paid answers: 'none' policy; size_limit only matters for diskcache's culling.
        self._cache = diskcache.Cache(self.directory, size_limit=size_limit, eviction_policy="none")

    def get(self, key: str) -> Completion | None:
        raw = self._cache.get(key)
        return None if raw is None else Completion.from_dict(json.loads(raw))

    def put(self, key: str, completion: Completion, release: bool = False) -> None:
        """Store an answer; with `release`, drop this process's claim on it in the same transaction."""
        value = json.dumps(completion.to_dict(), separators=(",", ":"))
        if not release:
            self._cache.set(key, value)
            return
        with self._cache.transact():
            self._cache.set(key, value)
            self._cache.delete("claim:" + key)

    # ---- cross-process claims: who is sending an uncached call right now --------------------------------
    def claim(self, key: str, ttl: float) -> bool:
        """Atomically mark `key` as being sent by this caller (for `ttl` seconds); False if anyone else holds it,
        another runner of this same process included. A claim left by a dead process on this host (kill -9)
        is taken over at once."""
        ck, me = "claim:" + key, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        if self._cache.add(ck, me, expire=ttl):
            return True
        holder = self._cache.get(ck)
        if holder is None:
            return self._cache.add(ck, me, expire=ttl)
        host, pid, _ = (str(holder).rsplit(":", 2) + ["", ""])[:3]
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            with self._cache.transact():  # replace the dead holder's claim unless someone just did
                if self._cache.get(ck) == holder:
                    self._cache.set(ck, me, expire=ttl)
                    return True
        return False

    def release(self, key: str) -> None:
        self._cache.delete("claim:" + key)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()

    def __repr__(self) -> str:
        return f"ResponseCache({self.directory!r})"
