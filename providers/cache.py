"""Disk cache of paid answers: a cached answer costs nothing, and a killed run resumes where it stopped.

Backed by diskcache (SQLite, safe when several processes share the directory). The key is the SHA-256 of
the canonical JSON of provider, endpoint, model and request body (plus a sample index when one request is
split into several calls) — never the API key, which adapters do not put in the body. Values are JSON
(`Completion.to_dict()`), not pickles, so a cache directory can be inspected and shared safely.

Processes sharing a directory also coordinate: before sending an uncached call a runner `claim`s its key, so
two processes asking the same question at once pay for it once; the other waits for the answer to appear.
A claim is an OS lock on one byte of `claims.lock` in the directory (the byte chosen by the key), which the
kernel drops when its holder dies, kill -9 included; it costs a system call where a claim row in SQLite cost
a write transaction (2 µs against ~70 µs of CPU per uncached call, measured here). Where the OS has no
`fcntl` (Windows), claims coordinate the callers of one process only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any, Mapping

import diskcache

from providers.types import Completion

logger = logging.getLogger("providers.cache")


def cache_key(material: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no whitespace) of the key material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class _Claims:
    """The claims of this process on one lock file. POSIX record locks belong to the process, not to a file
    descriptor (a second descriptor would share them, and closing any one drops them all), so every cache
    object of the process on that directory shares this one descriptor and its set of keys held here."""

    _open: dict[tuple[int, int], "_Claims"] = {}  # by the lock file's (device, inode)
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held: set[str] = set()
        self.lock = threading.Lock()

    @classmethod
    def of(cls, directory: str) -> "_Claims":
        """The claims on `directory`'s lock file, found by its inode (a directory deleted and made again gets a
        new file), never opened twice: closing a second descriptor would drop every lock the process holds."""
        path = os.path.join(directory, "claims.lock")
        with cls._guard:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) in cls._open:
                    return cls._open[st.st_dev, st.st_ino]
            except FileNotFoundError:
                pass
            claims = cls(path)
            st = os.fstat(claims.fd)
            return cls._open.setdefault((st.st_dev, st.st_ino), claims)

    @staticmethod
    def _byte(key: str) -> int:
        return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)  # 60 bits: keys never share a byte in practice

    def take(self, key: str) -> bool:
        with self.lock:
            if key in self.held:
                return False
            if fcntl is not None:
                try:
                    fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._byte(key))
                except OSError:  # EAGAIN / EACCES: another process holds it
                    return False
            self.held.add(key)
            return True

    def drop(self, key: str) -> None:
        with self.lock:
            if key in self.held:
                self.held.discard(key)
                if fcntl is not None:
                    fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self._byte(key))


if hasattr(os, "register_at_fork"):  # a forked child holds none of its parent's locks
    os.register_at_fork(after_in_child=_Claims._open.clear)


def _private_dirs(directory: str) -> None:
    """Create the cache folder and any missing parents as 0700: they hold prompts and answers."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def _private_files(directory: str) -> None:
    """The database files diskcache made (with the umask's modes) become 0600; SQLite gives the WAL and
    shared-memory files it creates later the database's mode, and value files live under the 0700 folder."""
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_mode & 0o077 and os.stat(path).st_uid == os.getuid():
                os.chmod(path, 0o600)
        except (FileNotFoundError, AttributeError):  # not made (yet); os.getuid: POSIX only
            pass


class ResponseCache:
    """Completions on disk by key; each `put` is committed before it returns (durable across kill -9).

    The directory is made and opened on first use, so a runner built to price a plan (`spex_api.preview`,
    `--dry-run`) touches no disk until its run looks an answer up."""

    def __init__(self, directory: str | os.PathLike[str], size_limit: int = 2**32) -> None:
        self.directory = os.fspath(directory)
        self._size_limit = size_limit
        self._opened: tuple[diskcache.Cache, _Claims] | None = None
        self._opening = threading.Lock()

    def _open(self) -> tuple[diskcache.Cache, _Claims]:
        """The disk cache and its claims, opened once (threads of one run may ask at the same moment)."""
        if self._opened is None:
            with self._opening:
                if self._opened is None:
                    _private_dirs(self.directory)
                    # No eviction of paid answers: 'none' policy; size_limit only matters for diskcache's culling.
                    cache = diskcache.Cache(self.directory, size_limit=self._size_limit, eviction_policy="none")
                    _private_files(self.directory)
                    self._opened = (cache, _Claims.of(self.directory))
        return self._opened

    @property
    def _cache(self) -> diskcache.Cache:
        return self._open()[0]

    def get(self, key: str) -> Completion | None:
        """The cached answer, or None on a miss. An entry that cannot be read back (truncated, corrupted, not an
        answer) is a miss too, logged with its key and file, so the caller asks again and `put` overwrites it."""
        try:
            raw = self._cache.get(key)
            return None if raw is None else Completion.from_dict(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
            logger.warning("cache entry %s in %s is unreadable (%s: %s); treated as a miss, it will be asked again and "
                           "overwritten", self._where(key), self.directory, type(exc).__name__, str(exc)[:120])
            return None

    def _where(self, key: str) -> str:
        """The entry's key, plus its value file when diskcache stored the value outside SQLite (large answers)."""
        try:
            rows = self._cache._sql("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchall()
        except Exception:  # noqa: BLE001 - only used to name the entry in a log line
            rows = []
        files = [os.path.join(self.directory, f) for (f,) in rows if f]
        return key + (f" (file {files[0]})" if files else "")

    def put(self, key: str, completion: Completion) -> None:
        """Store an answer; committed before it returns."""
        self._cache.set(key, json.dumps(completion.to_dict(), separators=(",", ":")))

    # ---- cross-process claims: who is sending an uncached call right now --------------------------------
    def claim(self, key: str) -> bool:
        """Mark `key` as being sent by this caller; False if anyone else holds it, another runner of this same
        process included. The holder's death (kill -9 too) drops its claim."""
        return self._open()[1].take(key)

    def release(self, key: str) -> None:
        """Drop this process's claim on `key` (after its answer is stored, so a waiting process finds it)."""
        self._open()[1].drop(key)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        if self._opened is not None:
            self._opened[0].close()

    def __repr__(self) -> str:
        return f"ResponseCache({self.directory!r})"
