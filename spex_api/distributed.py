"""Many explanations on a Ray cluster, sharing one rate limit, one dollar cap and one answer cache.

`explain_many(prompts, backend="ray")` lands here. Each explanation's engine work (planning, SPEX decoding,
ProxySPEX's tree fits) runs as a Ray task on any node; ONE gateway actor, pinned to the driver's node, owns
everything that talks to the provider: the adapter, the Runner (rpm/tpm limiters, Retry-After pauses,
`max_queries` and `max_cost` across the whole job, retries) and the disk cache. A task hands the gateway
mask batches and gets scores back, so the limits hold cluster-wide however many tasks run, and an answer
is paid once whoever asks for it.

What survives what:
- A worker process dying mid-explanation (OOM kill, node loss): nothing paid is lost. Its queries were sent
  by the gateway, which caches every answer before handing it back (calls in flight finish and are cached
  too). Ray retries the task (`max_retries`); the retry replays the same seeded design, finds every answer
  it had in the gateway's cache and pays only for the missing ones. Its explanation equals an
  uninterrupted run's; its `stats` count the replayed answers as cache hits and its `cost` includes
  what the lost attempt paid.
- The gateway (or the driver, or the whole cluster) dying: the job fails, but every paid answer is in the
  disk cache on the driver's node (`cache_dir`, diskcache). Rerunning the same job there resumes: cached
  answers are free, and only the missing queries are sent (and counted against the rerun's `max_cost`).
  Calls that were in flight at the moment of the gateway's death (at most the runner's concurrency) may
  have been billed by the provider without reaching the cache.
- With `cache_dir=None` nothing survives a gateway death, and a retried task pays again for what the
  lost attempt asked (the gateway's in-flight de-duplication still holds while it lives).
- A failing explanation with `return_exceptions=False` (or Ctrl-C) stops the gateway sending and cancels
  the other tasks; answers already in flight still reach the cache.

The API key travels to the gateway as an argument of the actor (held in the cluster's memory by Ray's GCS);
the plans the tasks receive carry none (a pickled Preview drops its credentials).

Ray is an optional extra (`pip install "spex-api[ray]"`); nothing else in spex-api imports it.
"""

from __future__ import annotations

import os
import types
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from spex_api.sdk import Preview

# Ray started by explain_many itself (no cluster to join): small, no dashboard, it shares the machine.
LOCAL_RAY = {"include_dashboard": False, "object_store_memory": 80 * 1024**2, "log_to_driver": False}
# A worker dying is a system failure Ray retries; an exception raised by the explanation is not retried.
TASK_RETRIES = 3


def require_ray() -> Any:
    """The ray module, or an ImportError naming the extra to install (raised before any query is spent)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError('backend="ray" needs Ray: pip install "spex-api[ray]"') from exc
    return ray


def _process_cpu() -> float:
    """CPU seconds (user + system) this process has used."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class Gateway:
    """The job's only caller of the provider: one adapter, one Runner, one value function per prompt.

    Run as an async Ray actor, so every task's mask batches share one event loop, rate limiter and cache.
    Started empty (`ray_gateway`); `setup` hands it the job: `previews` are the job's plans (index i = prompt
    i), `base_url`/`api_key` the live endpoint's, `server` the driver's endpoint_identity of it (so both key
    answers alike: a LocalServer by its model, not its port).
    """

    def __init__(self) -> None:
        """Started while the driver still plans the job: the process's start-up and imports overlap planning."""
        from spex_api import sdk  # noqa: F401 - imported now, not when the first task asks
        from providers import value_function  # noqa: F401

        self._runner: Any = None  # set by `setup`

    def setup(self, previews: Sequence[Preview], base_url: str | None, api_key: str | None,
              max_cost: float | None, max_queries: int | None, server: str | None = None) -> None:
        """Take the planned job: build the adapter and the Runner (limits, caps, cache) that serve every task."""
        from providers.adapters.base import name_server
        from spex_api import sdk

        if base_url is not None and server is not None:
            name_server(base_url, server)  # the driver's identity of the server (a LocalServer: by its model)
        self._previews = list(previews)
        first = self._previews[0]
        self._adapter = sdk._make_adapter(first.provider, first.model, base_url, api_key, first.prices,
                                          sdk._timeout(first))
        self._runner = sdk._make_runner(first, self._adapter, max_cost, max_queries)
        self._vfs: dict[int, Any] = {}
        self._meters: dict[int, Any] = {}
        self._cpu0 = _process_cpu()  # what serving the job costs, not the actor's start-up imports
        self._merged = False

    async def gather_rounds(self, members: list[int]) -> None:
        """Batch mode: each round of these prompts goes out as one batch (BatchRunner.gather_rounds). A task
        blocked on the gateway frees its CPU, so every member's task gets to ask."""
        self._merged = True
        self._runner.gather_rounds(members)

    async def leave(self, i: int) -> None:
        """Prompt i's task ended: the other prompts' rounds stop waiting for it."""
        if self._merged:
            self._runner.leave(i)

    def _value_function(self, i: int) -> Any:
        """Prompt i's value function (built on first use; a retried task finds the same one)."""
        if i not in self._vfs:
            from providers.value_function import LLMValueFunction

            from spex_api.sdk import _Meter

            pre = self._previews[i]
            self._meters[i] = _Meter(self._runner, i if self._merged else None)
            self._vfs[i] = LLMValueFunction(pre.prompt, self._adapter, pre.scorer, self._meters[i], progress=False)
        return self._vfs[i]

    async def reference(self, i: int) -> tuple[Any, float]:
        """Prompt i's original answer and its score."""
        vf = self._value_function(i)
        completion = await vf.reference()
        return completion, float(vf.scorer.score_many([completion])[0])  # the scorer bound to that answer

    async def score(self, i: int, masks: np.ndarray, repeat: int = 0) -> np.ndarray:
        """Scores of prompt i's masked prompts, one per row of `masks`; `repeat` = k > 0 asks them again as the
        k-th genuine re-ask (the noise pilot's), never answered from the first asking's cache entries."""
        return await self._value_function(i)(masks, repeat=repeat)

    def accounts(self, i: int) -> dict[str, Any]:
        """What prompt i paid and how its queries were served, over all of its task's attempts."""
        from spex_api.sdk import _accounts

        scorer = self._value_function(i).scorer  # built on first use, with its meter
        return _accounts(self._meters[i], scorer)

    def stats(self) -> dict[str, Any]:
        """The runner's counters for the whole job (api_calls, cache_hits, spend, ...) and the CPU this process
        spent on the job since it was set up."""
        return {**self._runner.stats.as_dict(), "gateway_cpu_seconds": _process_cpu() - self._cpu0}

    async def settle(self, reason: BaseException) -> None:
        """Stop sending (later calls raise `reason`) and wait, at most the answer timeout, for the calls in
        flight: they are paid for, so they reach the cache first."""
        self._runner.stop(reason)
        await self._runner.drain(float(self._adapter.timeout))

    def close(self) -> None:
        """Release the cache's file handles before the actor goes (a job stopped before set-up has none)."""
        if self._runner is not None and self._runner.cache is not None:
            self._runner.cache.close()


@contextmanager
def ray_gateway() -> Iterator[Any]:
    """Ray and the job's gateway actor, started while the driver plans the job so that the actor's start-up
    (a fresh process: ~1.2 s of Ray's boot and imports) overlaps planning; the gateway is stopped on exit.

    Uses the running Ray (after `ray.init(address=...)`), else joins the cluster at RAY_ADDRESS, else starts a
    small local one; what it started it shuts down on exit. The gateway sends nothing before `explain_on_ray`
    hands it the job.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS names a cluster to join; without it a small local Ray is started
        ray.init(**({"log_to_driver": False} if os.environ.get("RAY_ADDRESS") else LOCAL_RAY))
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The gateway lives on the driver's node: that is where the disk cache (and a local server) is.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        gateway = ray.remote(Gateway).options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote()
        try:
            yield gateway
        finally:
            try:
                ray.get(gateway.close.remote())
            except Exception:  # noqa: BLE001 - a dead gateway has nothing left to close
                pass
            ray.kill(gateway)
    finally:
        if started:
            ray.shutdown()


def _explain_task(pre: Preview, i: int, gateway: Any, base_url: str | None) -> Any:
    """One explanation's engine work on a Ray worker; every score comes from the gateway."""
    import ray

    from spex_api.sdk import _explainer, _finish

    def scores(masks: np.ndarray, repeat: int = 0) -> np.ndarray:
        return ray.get(gateway.score.remote(i, np.asarray(masks, dtype=bool), repeat))

    reference, original_score = ray.get(gateway.reference.remote(i))
    expl = _explainer(pre, scores).explain()  # `repeat`: the noise pilot re-asks as on the single-process path
    if pre.verify_removal:
        from spex_api.engine.removal import check_removal

        expl = check_removal(expl, scores, pre.verify_removal, full_score=original_score)
    return _finish(pre, expl, reference, original_score, ray.get(gateway.accounts.remote(i)),
                   types.SimpleNamespace(base_url=base_url))


def _slots(ray: Any, task_cpus: float, mode: str, tasks: int) -> int:
    """How many of the job's `tasks` explanation tasks to keep in flight: as many as the cluster has CPU slots for.
    A task blocked in ray.get on the gateway lends its CPU back, and Ray would start another worker process for a
    queued task (~2 CPU s of imports each) and run more fits than there are cores: 6 prompts on 2 CPUs started 6
    workers, 26.6 worker CPU s against 11.8 on one. Batch mode keeps every task in flight: each round waits for all
    of them."""
    if mode == "batch" or not task_cpus:
        return tasks
    return min(tasks, max(1, int(float(ray.cluster_resources().get("CPU", 1.0)) / task_cpus)))


def _cause(exc: BaseException) -> BaseException:
    """The exception the explanation raised, unwrapped from Ray's task-error wrappers (one per hop)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


def explain_on_ray(previews: Sequence[Preview], admitted: Sequence[int], adapter: Any, gateway: Any,
                   max_cost: float | None, max_queries: int | None, tracker: Any = None, *,
                   return_exceptions: bool = False, ray_options: dict[str, Any] | None = None
                   ) -> tuple[dict[int, Any], dict[str, Any]]:
    """Explanations of the `admitted` prompts, {index: Explanation or its exception}, with engine work as Ray
    tasks and every query through `gateway` (from `ray_gateway`) on `adapter`'s endpoint; and the gateway's
    counters for the job.

    `ray_options` are Ray task options (default num_cpus=1, max_retries=3). `tracker` (a
    spex_api.progress.BatchProgress) hears of each prompt's start and end. With `return_exceptions=False` the
    first failure stops the job (the gateway sends nothing more, the other tasks are cancelled) and is raised.
    """
    from providers.adapters.base import endpoint_identity
    from spex_api.sdk import BatchCancelled, Interrupted, _public_base_url

    ray = require_ray()
    secret = previews[0].credentials
    try:  # before any task asks
        ray.get(gateway.setup.remote(
            previews, (secret and secret.get("base_url")) or adapter.base_url,  # user:pass@ kept for the gateway
            secret and secret.get("api_key"), max_cost, max_queries, endpoint_identity(adapter.base_url)))
    except Exception as exc:  # noqa: BLE001 - the gateway's own error, not Ray's wrapper of it
        raise _cause(exc) from None
    if previews[0].mode == "batch":
        ray.get(gateway.gather_rounds.remote(list(admitted)))
    options = {"num_cpus": 1, "max_retries": TASK_RETRIES, **(ray_options or {})}
    task = ray.remote(_explain_task).options(**options)
    public = _public_base_url(previews[0], adapter)
    queue = deque(admitted)
    refs: dict[Any, int] = {}

    def submit() -> Any:
        i = queue.popleft()
        ref = task.remote(previews[i], i, gateway, public)
        refs[ref] = i
        if tracker is not None:
            tracker.start(i)
        return ref

    pending = [submit() for _ in range(_slots(ray, options["num_cpus"], previews[0].mode, len(queue)))]
    results: dict[int, Any] = {}
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if queue:
                pending.append(submit())
            i = refs[ready[0]]
            gateway.leave.remote(i)
            try:
                results[i] = ray.get(ready[0])
                if tracker is not None:
                    tracker.done(i, results[i])
            except Exception as exc:  # noqa: BLE001 - handed back to the caller on request
                cause = _cause(exc)
                if tracker is not None:
                    tracker.failed(i, cause)
                if not return_exceptions:
                    raise cause from None
                results[i] = cause
        return results, ray.get(gateway.stats.remote())
    except BaseException as exc:
        reason = Interrupted("interrupted") if isinstance(exc, KeyboardInterrupt) else BatchCancelled(
            f"stopped because a prompt failed: {type(exc).__name__}: {exc}")
        for ref in pending:
            ray.cancel(ref)
        try:
            ray.get(gateway.settle.remote(reason))  # paid answers in flight reach the cache first
        except Exception:  # noqa: BLE001 - a dead gateway has nothing left to settle
            pass
        raise
