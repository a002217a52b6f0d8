"""The one bridge from synchronous code to coroutines (a leaf module: asyncio only).

The engine is synchronous; value functions and the provider layer may be async. `BackgroundLoop` keeps one
event loop on a daemon thread for a whole run, so every batch of queries shares its clients, rate limiter
and cache (the SDK's runs go through one); `run_sync` awaits one coroutine from synchronous code, on a
private BackgroundLoop when the calling thread already runs a loop (a notebook, an async app).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Awaitable, Coroutine

log = logging.getLogger(__name__)


class BackgroundLoop:
    """One event loop on a background thread; `run(coro)` waits for a coroutine on it from any other thread."""

    def __init__(self, name: str = "spex-api-io") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run coro on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Close the loop's async generators first (each SDK client closes with them: no socket outlives the
        loop), then stop and close the loop."""
        try:
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(10)
        except Exception as exc:  # noqa: BLE001 - closing clients must not mask the run's own outcome
            log.debug("closing the event loop's clients failed: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def run_sync(awaitable: Awaitable[Any]) -> Any:
    """The awaitable's result, from synchronous code: on a fresh loop (asyncio.run), or, when this thread
    already runs one, on a private BackgroundLoop closed afterwards."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    io = BackgroundLoop("spex-api-sync")
    try:
        return io.run(_await(awaitable))
    finally:
        io.close()
