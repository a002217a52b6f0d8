"""One call from a prompt to ranked interactions: `explain` and, for many prompts at once, `explain_many`.

This is the composition layer: `preview` builds the masked prompt, the provider adapter and the scorer
from `providers` once, plans the queries with the engine once and prices them; `run` shows the plan and its
price, and only then spends, through that adapter and plan, one runner (rate limits, retries, disk cache,
cost caps) and one value function per prompt, whose scorer is bound to that prompt's original answer.
Providers are imported inside functions so that `import spex_api` stays light.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence, cast

import numpy as np

from spex_api.engine import aio
from spex_api.engine.metadata import QueryStats, RunMetadata

if TYPE_CHECKING:
    from providers.adapters.base import Adapter
    from providers.cost import Price, PriceTable
    from providers.prompt import MaskedPrompt
    from providers.runner import Runner
    from providers.value_function import LLMValueFunction
    from spex_api.engine.explanation import Explanation
    from spex_api.engine.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/spex-api"
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "openai-responses": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
LOCAL = "local"
_NOT_STARTED = "http://127.0.0.1:0/v1"
MODES = ("interactive", "batch")
DEFAULT_TIMEOUT = 120.0  # seconds for one answer, retries included
SCORERS = ("auto", "label-margin", "answer-logprob", "frequency", "semantic", "similarity")
# The original (unmasked) answer: asked once per prompt before any masked one, and counted in the budget.
REFERENCE_QUERIES = 1


class SpendRefused(RuntimeError):
    """The user declined the confirmation, so nothing was spent."""


@dataclass(kw_only=True)
class Preview:
    """Everything decided before the first query: what is asked, of whom, how often, at what price.

    It keeps the adapter `preview` built, so `run` sends through it rather than building another.
    """

    prompt: MaskedPrompt
    provider: str
    model: str
    base_url: str | None
    scorer: Any  # the configured providers.scorers Scorer (immutable; each run binds its own copy)
    plan: Plan
    budget: int
    max_cost: float | None
    estimated_cost: float
    method: str
    max_order: int
    random_state: int
    cache_dir: str | None
    labels: tuple[str, ...] | None = None
    granularity: str | None = None
    # The API key and the base_url as given (it may hold user:password@): opaque, never in repr/vars/pickle.
    credentials: Any = field(default=None, repr=False)  # providers.redact.Secret
    prices: PriceTable | None = None  # the price table with the caller's overrides
    mode: str = "interactive"  # or "batch": provider Batch APIs at batch prices, one batch per round
    interactive_cost: float | None = None  # the same run at interactive prices (shown next to a batch estimate)

    @property
    def rounds(self) -> int:
        """Rounds of queries, each waiting for the one before: the original answer, the design (an adaptive design:
        one per round), and the held-out slice when there is one. In batch mode each round is one batch (split
        only by the limits)."""
        design = max(1, len(self.plan.rounds))
        return 1 + design + bool(self.plan.n_holdout and self.plan.method != "exhaustive")
    # timeout, max_attempts, concurrency, rpm, tpm for the runner (and the adapter's timeout)
    limits: dict[str, Any] = field(default_factory=dict)
    worst_case_cost: float = 0.0  # most the run can cost on a cold cache (admission under a batch's max_cost)
    verify_removal: int = 0  # queries for the removal check after the fit (top 1..r features masked)
    # Not a field (asdict/replace/compare skip it) and not pickled (it holds credentials): an unpickled
    # Preview builds its adapter again to run. Set by `preview`.
    _adapter: ClassVar[Adapter | None] = None
    # The runner and value function `preview` built for the run (neither a field nor pickled, like _adapter):
    # `run` takes them once; a second run, or an unpickled Preview, builds its own.
    _session: ClassVar[_Session | None] = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_adapter", "_session")}

    def _take_session(self, adapter: Any) -> _Session | None:
        """The session `preview` built, for one run through `adapter` (None if there is none for it)."""
        session = self._session
        object.__setattr__(self, "_session", None)
        return session if session is not None and session.runner.adapter is adapter else None

    @property
    def local(self) -> bool:
        return self.provider == LOCAL

    @property
    def n_queries(self) -> int:
        """Queries the run will send: the plan's total (noise pilot included), the original answer and the
        removal check's."""
        return int(self.plan.total) + REFERENCE_QUERIES + self.verify_removal

    def renderable(self) -> Any:
        """A rich table of the plan and its price (shown before any spend)."""
        from rich.table import Table
        from rich.text import Text

        t = Table(title="spex-api plan (nothing spent yet)", title_justify="left", show_header=False)
        t.add_column(style="bold")
        t.add_column()

        def row(name: str, value: str) -> None:  # prompt words, model names, paths: data, never markup
            t.add_row(name, Text(value))

        row("model", f"{self.provider} / {self.model}" + (f" at {self.base_url}" if self.base_url else ""))
        row("features", f"{self.prompt.n_features} ({', '.join(_preview_names(self.prompt))})")
        row("scorer", getattr(self.scorer, "name", str(self.scorer)))
        row("method", f"{self.plan.method}: {self.plan.reason}")
        held = (f"{self.plan.n_holdout} held-out masks" if self.plan.n_holdout else
                "no held-out masks: faithfulness by cross-validation" if self.plan.method != "exhaustive" else
                "every mask: exact")
        row("queries", f"{self.n_queries} of a budget of {self.budget} (incl. the original answer; {held})")
        cap = f" (cap ${self.max_cost:.2f})" if self.max_cost is not None else ""
        if self.estimated_cost == 0:
            price = "$0 (local model)" if self.local else "$0 (no price set for this server)"
        else:
            price = f"about ${self.estimated_cost:.4f} before cache hits"
        if self.mode == "batch" and self.interactive_cost:
            price += (f" at batch prices (interactive ${self.interactive_cost:.4f}: saves "
                      f"{1 - self.estimated_cost / self.interactive_cost:.0%})")
        row("est. cost", price + cap)
        if self.mode == "batch":
            design = (f"{len(self.plan.rounds)} adaptive design rounds, each chosen from the answers before it"
                      if self.plan.adaptive else "design")
            rounds = f"original answer, {design}" + (", held-out slice" if self.plan.n_holdout and
                                                       self.plan.method != "exhaustive" else "")
            row("latency", f"batch mode: {self.rounds} batches, one per round ({rounds}); each ends within "
                                 f"24 h (often minutes), so up to {24 * self.rounds} h in all. A stopped run resumes "
                                 "its batches on rerun")
        row("cache", os.path.expanduser(self.cache_dir) if self.cache_dir else "off")
        return t


def _preview_names(prompt: Any, k: int = 6) -> list[str]:
    names = prompt.feature_names
    return names[:k] + (["…"] if len(names) > k else [])


# ---------------------------------------------------------------------------------------------- planning
def _resolve_provider(
    provider: str | None, model: str | None, base_url: str | None, api_key: str | None
) -> tuple[str, str, str | None]:
    """Pick provider and model: explicit choice, else OpenAI when a key is set, else the local server."""
    if provider is None:
        if base_url is not None:
            provider = "openai-compatible"
        elif api_key or os.environ.get("OPENAI_API_KEY"):
            provider = "openai"
        else:
            provider = LOCAL
    provider = provider.lower()
    from providers.local import MODEL_NAME

    if provider == LOCAL or (model is None and base_url is not None and provider == "openai-compatible"):
        return provider, model or MODEL_NAME, base_url  # the local Gemma server (`spex-api serve-local`)
    if model is None:
        if provider not in DEFAULT_MODELS:
            raise ValueError(f"give a model for provider {provider!r}")
        model = DEFAULT_MODELS[provider]
    return provider, model, base_url


def _as_prompt(prompt: Any, features: str, template: str | None, system: str | None) -> Any:
    from providers.prompt import MaskedPrompt

    if isinstance(prompt, MaskedPrompt):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string or a MaskedPrompt, got {type(prompt).__name__}")
    if features not in ("words", "sentences", "paragraphs"):
        raise ValueError(f"features must be words, sentences or paragraphs, got {features!r}")
    return MaskedPrompt.from_text(prompt, granularity=cast(Any, features), template=template, system=system)


def _price_table(prices: Any) -> Any:
    """A PriceTable from None (built-in), a PriceTable, or overrides {provider: {model: Price}}."""
    from providers.cost import PriceTable

    return prices if isinstance(prices, PriceTable) else PriceTable(prices)


def _make_adapter(provider: str, model: str, base_url: str | None, api_key: str | None, prices: Any = None,
                  timeout: float = DEFAULT_TIMEOUT) -> Any:
    from providers.adapters import make_adapter

    if provider == LOCAL:
        # Before the server runs (preview) the adapter gets an unreachable placeholder URL: nothing is sent
        # from a preview, and run() builds a fresh adapter on the live server's port.
        return make_adapter("openai-compatible", model, base_url=base_url or _NOT_STARTED, timeout=timeout)
    return make_adapter(provider, model, base_url=base_url, api_key=api_key, prices=_price_table(prices),
                        timeout=timeout)


def _make_scorer(scorer: Any, labels: Sequence[str] | None, adapter: Any) -> Any:
    """A scorer object from its name; "auto" picks the best the provider supports.

    auto: with labels, the logprob margin between them (or, without logprobs, their answer frequency over
    samples); without labels, the logprob of the original answer's first token, or without logprobs the
    semantic similarity to the original answer (string similarity when the semantic extra is not installed).
    """
    from providers import scorers

    if not isinstance(scorer, str):
        return scorer
    name = scorer.lower().replace("_", "-")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; use one of {', '.join(SCORERS)} or pass a Scorer object")
    if name in ("answer-logprob", "similarity", "semantic") and labels:
        raise ValueError(f"scorer {name} takes no labels")
    if name == "auto":
        has_logprobs = getattr(adapter, "max_top_logprobs", None) is not None
        if labels:
            name = "label-margin" if has_logprobs else "frequency"
        else:
            name = "answer-logprob" if has_logprobs else "semantic" if _semantic_available() else "similarity"
    labels = tuple(labels) if labels else ("True", "False")
    if name == "label-margin":
        return scorers.LabelMargin(labels)
    if name == "frequency":
        return scorers.AnswerFrequency(labels)
    if name == "answer-logprob":
        return scorers.AnswerLogprob()
    if name == "semantic":
        from providers.semantic import SemanticSimilarity

        return SemanticSimilarity()
    return scorers.AnswerSimilarity()


@functools.lru_cache(maxsize=1)
def _semantic_available() -> bool:
    """Whether the semantic extra is installed (checked once: explain_many previews every prompt)."""
    from providers.semantic import available

    return available()


class _RawCompletion:
    """A scorer whose requests go to the text-completion endpoint (no chat template): the prompt is sent as
    written. Small base models such as the local Gemma-3-270M continue text rather than follow chat turns."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer

    def __getattr__(self, name: str) -> Any:
        if name == "_scorer":  # not set yet (unpickling, e.g. into a Ray worker): no delegation loop
            raise AttributeError(name)
        return getattr(self._scorer, name)

    def bind(self, adapter: Any, reference: Any = None) -> "_RawCompletion":
        """Bind the wrapped scorer and keep the wrapping: the bound scorer's requests stay plain text."""
        return _RawCompletion(self._scorer.bind(adapter, reference))

    def request(self, messages: Any) -> Any:
        return dataclasses.replace(self._scorer.request(messages), raw_completion=True)

    def reference_request(self, messages: Any) -> Any:
        return dataclasses.replace(self._scorer.reference_request(messages), raw_completion=True)


def _plan(n: int, budget: int, method: str, max_order: int, noise_pairs: int | str = 0) -> Plan:
    """The engine's plan for what the budget leaves once the original answer is counted (the Explainer's own
    plan, so the repeat-noise pilot is reserved exactly as the run will spend it)."""
    from spex_api.engine.explainer import Explainer
    from spex_api.engine.planner import minimum_budget

    try:
        return Explainer(_no_queries, n, budget - REFERENCE_QUERIES, method=method, max_order=max_order,
                         noise_pairs=noise_pairs).plan()
    except ValueError as exc:
        if "below the minimum" not in str(exc):
            raise
        # the planner saw less: quote the budget the user passed and the minimum they must pass
        need = minimum_budget(n, method, max_order) + REFERENCE_QUERIES
        detail = str(exc).split(f"at n={n}: ", 1)[-1]
        raise ValueError(f"budget {budget} is below the minimum of {need} queries for method={method!r} at n={n}: "
                         f"the original answer plus {detail}") from None


def _no_queries(masks: Any) -> Any:
    raise AssertionError("planning sends no query")


MAX_FEATURES = 5000  # ProxySPEX's tree fits took 21 s of CPU at 2,000 features and 59 queries here, growing with n
MEMORY_SHARE = 0.5  # of the memory available when planning: what one run's design may take


def _feasible_plan(n: int, budget: int, method: str, max_order: int, noise_pairs: int | str = 0) -> Plan:
    """The plan, refused or capped before any query when this machine could not carry it out: too many features
    for the engine to fit in reasonable time, or a design too large for the memory available (the budget is
    then lowered to what fits, and the plan's reason says so)."""
    if n > MAX_FEATURES:
        raise ValueError(f"{n} features is more than the engine can fit in reasonable time (at most {MAX_FEATURES}; "
                         "the tree fits alone took 21 s of CPU at 2,000 features, growing with the feature count): "
                         "use features='sentences' or 'paragraphs', or a shorter text")
    p = _plan(n, budget, method, max_order, noise_pairs)
    limit, need = _memory_available(), _plan_bytes(p)
    if limit is None or need <= MEMORY_SHARE * limit:
        return p
    capped = budget
    while need > MEMORY_SHARE * limit:
        capped = max(2, int((capped - REFERENCE_QUERIES) * MEMORY_SHARE * limit / need * 0.9) + REFERENCE_QUERIES)
        try:
            p = _plan(n, capped, method, max_order, noise_pairs)
        except ValueError:
            raise ValueError(f"even the smallest plan for {n} features needs more memory than the "
                             f"{limit / 2**30:.1f} GB available; free memory or use coarser features") from None
        need = _plan_bytes(p)
    why = (f"budget capped from {budget} to {capped} queries to fit memory: the plan for {budget} needs about "
           f"{_plan_bytes(_plan(n, budget, method, max_order)) / 2**30:.0f} GB, {limit / 2**30:.1f} GB is available")
    log.warning("%s", why)
    return dataclasses.replace(p, reason=f"{p.reason}; {why}")


def _plan_bytes(p: Any) -> int:
    """Memory a plan's design takes while it is fitted: each mask as float64 features plus its answer."""
    return int(p.total) * (8 * int(p.n) + 64)


def _memory_available() -> float | None:
    """Bytes of memory available now (Linux MemAvailable, else physical memory); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


class _Design(Exception):
    """Raised by the probe value function with the masks of the design's first batch."""

    def __init__(self, masks: Any) -> None:
        super().__init__("design probe")
        self.masks = masks


def _run_requests(prompt: Any, vf: Any, plan_: Any, random_state: int) -> tuple[list[Any], np.ndarray] | None:
    """Every distinct request the run will send and its mask, found without sending anything: the original
    answer (the full mask), and the design generated as the run will (same random_state) with its held-out
    masks. None when the design cannot be known ahead."""
    from spex_api.engine.explainer import Explainer

    if plan_.adaptive:
        return None

    def capture(masks: Any) -> Any:
        raise _Design(np.asarray(masks, dtype=bool))

    explainer = Explainer(capture, plan_.n, plan_.budget, method=plan_.requested, max_order=plan_.max_order,
                          random_state=random_state, plan=plan_)
    try:
        explainer.explain()
        return None
    except _Design as probe:
        train = probe.masks
    full = prompt.render(prompt.full_mask())
    bound = vf.scorer  # the requests as the run builds them (settings resolved for this adapter)
    masks = np.concatenate([prompt.full_mask()[None, :], train, explainer.holdout_masks(train)])
    requests = [bound.reference_request(full) if bound.needs_reference else bound.request(full)]
    requests += [vf._request_for(m) for m in prompt.render_many(masks[1:])]
    first = dict(zip(reversed(requests), range(len(requests) - 1, -1, -1)))  # request -> its first row
    rows = sorted(first.values())
    return [requests[i] for i in rows], masks[rows]


PROBE_MAX_QUERIES = 20_000  # estimates render every planned request up to this many; larger plans are sampled


def _probeable(plan_: Any) -> bool:
    """Whether an estimate may render the plan's every request (a few ms per hundred; larger plans are priced
    from a sample, where duplicates no longer matter)."""
    return plan_ is not None and int(plan_.total) <= PROBE_MAX_QUERIES


def _uncached_cost(session: _Session, plan_: Any, random_state: int) -> tuple[float, float] | None:
    """(estimate, worst case) in dollars, at interactive prices, of the plan's queries the disk cache lacks
    (`_run_requests`, as the session's value function builds them, each looked up in its runner's cache). None
    when the design cannot be known ahead (it is left to the cold estimate): an adaptive design's later rounds
    depend on the answers to its first."""
    runner, vf, price = session.runner, session.value_function, session.list_price
    found = _run_requests(vf.prompt, vf, plan_, random_state)
    if found is None:
        return None
    todo = [r for r in found[0] if not runner.is_cached(r)]
    return (float(sum(runner.estimate_cost(r, price=price) for r in todo)),
            float(sum(runner.worst_case_cost(r, price=price) for r in todo)))


def estimate_many(previews: Sequence[Preview]) -> float:
    """Dollars the previewed prompts cost when run together by `explain_many` (before cache hits): their own
    estimates, less what they share: a request several prompts send (e.g. every feature masked, when they
    share instructions) is asked once, and a fixed prefix the provider caches is written once for all of them.
    Computed from the plans alone; nothing is sent (the endpoint's free token counter excepted)."""
    seen: set[Any] = set()
    prefixes: set[str] = set()
    total = 0.0
    for pre in previews:
        total += pre.estimated_cost
        if pre.estimated_cost == 0:
            continue
        vf = _pricing_function(pre.prompt, _preview_adapter(pre), pre.scorer, pre.prices, pre.mode == "batch",
                               pre.limits)
        found = _run_requests(pre.prompt, vf, pre.plan, pre.random_state) if _probeable(pre.plan) else None
        requests, masks = found or ([], np.zeros((0, 0), bool))
        shared = [i for i, r in enumerate(requests) if r in seen]
        seen.update(requests)
        if shared:
            total -= vf.estimate_masks(masks[shared], [requests[i] for i in shared])
        prefix, write = vf.prefix_write()
        if prefix in prefixes:
            total -= write
        prefixes.add(prefix)
    return max(total, 0.0)


def _preview_adapter(pre: Preview) -> Any:
    """The adapter the preview built (an unpickled one builds it again: the same endpoint, no spend)."""
    if pre._adapter is None:
        secret = pre.credentials
        object.__setattr__(pre, "_adapter", _make_adapter(
            pre.provider, pre.model, (secret and secret.get("base_url")) or pre.base_url,
            secret and secret.get("api_key"), pre.prices, _timeout(pre)))
    return pre._adapter


def _check_labels(labels: Any) -> tuple[str, ...] | None:
    """Labels as a tuple of strings; a bare string ("TF") is an error, not one label per letter."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise TypeError(f"labels must be a list of strings such as ['True', 'False'], got {labels!r}")
    labels = tuple(labels)
    if not all(isinstance(x, str) for x in labels):
        raise TypeError(f"labels must be strings, got {labels!r}")
    return labels


def _check_text(messages: Any) -> None:
    """Refuse text that cannot be sent: lone surrogates (e.g. invalid UTF-8 decoded with surrogateescape)."""
    for m in messages:
        try:
            m.content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"the {m.role} message is not valid UTF-8 text: a lone surrogate "
                             f"{exc.object[exc.start]!a} at character {exc.start}") from None


def preview(
    prompt: Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    features: str = "words",
    template: str | None = None,
    system: str | None = None,
    scorer: Any = "auto",
    labels: Sequence[str] | None = None,
    budget: int = 1000,
    max_cost: float | None = None,
    method: str = "auto",
    max_order: int = 5,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    random_state: int = 0,
    raw_completion: bool | None = None,
    prices: Any = None,
    mode: str = "interactive",
    timeout: float = DEFAULT_TIMEOUT,
    max_attempts: int = 6,
    concurrency: int = 8,
    rpm: float | None = None,
    tpm: float | None = None,
    noise_pairs: int | str = "auto",
    verify_removal: int = 0,
) -> Preview:
    """Validate everything and plan the run without sending a single query (what `--dry-run` shows).

    Raises ValueError/TypeError (or a provider configuration error) on bad input: an empty prompt, an
    unknown provider, a missing API key, a label the model cannot score, a budget below the minimum,
    an estimated cost above `max_cost`. `raw_completion` sends the prompt as plain text to the completions
    endpoint instead of as a chat turn (default: on for the local Gemma base model, which continues text
    rather than following chat turns; off elsewhere). `prices` overrides or adds price-table entries
    ({provider: {model: providers.cost.Price}} or a PriceTable), e.g. for a paid server reached by base_url.
    `mode="batch"` sends each round through the provider's Batch API (OpenAI, Anthropic) at half price, results
    within 24 h per round; it needs a cache directory (running batches are journaled there) and is estimated
    and capped at batch prices.
    `timeout` is the longest wait in seconds for one answer, retries included (a hung server stops the run
    with a clear error); `max_attempts` per answer; `concurrency` API calls at once; `rpm` / `tpm` requests /
    tokens per minute (None: no limit).
    `noise_pairs` masked prompts are asked twice before the run to measure the model's repeat noise (the R²
    ceiling, and whether SPEX can be trusted); "auto" = a few % of the budget (none in batch mode, where each
    round is a batch), 0 = none. `verify_removal` = r > 0 spends r queries after the fit re-asking the model
    with the explanation's top 1..r features masked (measured vs predicted change). Both come out of `budget`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "batch" and not cache_dir:
        raise ValueError("batch mode needs a cache_dir: answers land there and running batches are journaled "
                         "there, so a stopped run resumes them instead of paying twice")
    if not isinstance(budget, (int, np.integer)) or budget < 2:
        raise ValueError(f"budget must be an integer >= 2 queries, got {budget!r}")
    if max_cost is not None and (isinstance(max_cost, bool) or not isinstance(max_cost, (int, float, np.number))
                                 or not 0 <= max_cost < float("inf")):
        raise ValueError(f"max_cost must be a finite number of dollars >= 0 (None for no cap), got {max_cost!r}")
    labels = _check_labels(labels)
    from providers.redact import Secret, public_url

    credentials = Secret(api_key=api_key, base_url=base_url)
    provider, model, base_url = _resolve_provider(provider, model, base_url, api_key)
    masked = _as_prompt(prompt, features, template, system)
    _check_text(masked.render(masked.full_mask()))
    prices = _price_table(prices)
    limits = _check_limits(timeout=timeout, max_attempts=max_attempts, concurrency=concurrency, rpm=rpm, tpm=tpm)
    adapter = _make_adapter(provider, model, base_url, api_key, prices, timeout)
    base_url = public_url(base_url)
    score = _make_scorer(scorer, labels, adapter)
    from providers.local import MODEL_NAME

    use_raw = (model == MODEL_NAME) if raw_completion is None else raw_completion
    if use_raw:
        if adapter.provider in ("openai", "anthropic"):
            raise ValueError(f"raw_completion needs a text-completion endpoint, which {adapter.provider} does not serve")
        score = _RawCompletion(score)
    score.validate(adapter)
    if isinstance(verify_removal, bool) or not isinstance(verify_removal, (int, np.integer)) \
            or not 0 <= verify_removal <= masked.n_features:
        raise ValueError(f"verify_removal must be an integer in [0, {masked.n_features}] (the feature count), "
                         f"got {verify_removal!r}")
    if mode == "batch" and noise_pairs == "auto":
        noise_pairs = 0  # two more rounds, each a batch that may take hours
    the_plan = _feasible_plan(masked.n_features, int(budget) - int(verify_removal), method, max_order, noise_pairs)
    # the value function prices a separate reference request itself when the scorer asks for one; otherwise
    # the original answer is one more query, except that an exhaustive design asks the full mask anyway
    n_est = the_plan.total + (0 if score.needs_reference or the_plan.method == "exhaustive" else REFERENCE_QUERIES)
    # the run's runner and value function, built once: they price the plan here and spend it in `run`
    session = _Session.build(masked, adapter, score, mode, cache_dir, max_cost, prices, limits)
    vf = session.value_function
    # the value function prices the original answer itself when the scorer asks for it separately; the
    # worst case (cold cache, every answer at max_tokens) is at interactive prices, as admission reads it
    design: dict[str, Any] = dict(plan_=the_plan, random_state=random_state, extra=int(verify_removal))
    interactive = _design_estimate(vf, n_est, price=session.list_price, **design)
    worst = vf.worst_case_cost(n_est, session.list_price)
    estimate = _design_estimate(vf, n_est, **design) if mode == "batch" else interactive  # at batch prices
    if max_cost is not None and cache_dir and os.path.isdir(os.path.expanduser(cache_dir)) and interactive > 0:
        # under a cap, price only what the cache lacks: a warm cache runs even with max_cost=0
        warm = _uncached_cost(session, the_plan, random_state)
        if warm is not None:
            estimate, interactive, worst = estimate * warm[0] / interactive, warm[0], warm[1]
    if max_cost is not None and estimate > max_cost:
        log.warning("refused before spend: estimated $%.4f exceeds max_cost $%.4f", estimate, max_cost)
        raise ValueError(
            f"the estimated cost ${estimate:.4f} of {the_plan.total + REFERENCE_QUERIES} queries exceeds max_cost "
            f"${max_cost:.4f}; "
            "lower the budget or raise max_cost"
        )
    pre = Preview(
        prompt=masked, provider=provider, model=model, base_url=base_url, scorer=score, plan=the_plan,
        budget=int(budget), max_cost=max_cost, estimated_cost=estimate, method=method, max_order=max_order,
        random_state=random_state, cache_dir=cache_dir, labels=tuple(labels) if labels else None,
        granularity=features if isinstance(prompt, str) else None, credentials=credentials, prices=prices,
        mode=mode, interactive_cost=interactive, limits=limits, worst_case_cost=worst,
        verify_removal=int(verify_removal),
    )
    object.__setattr__(pre, "_adapter", adapter)
    object.__setattr__(pre, "_session", session)
    return pre


def _check_limits(**limits: Any) -> dict[str, Any]:
    """The runner's knobs, refused before any spend when they make no sense."""
    t, attempts, conc = limits["timeout"], limits["max_attempts"], limits["concurrency"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {t!r}")
    for name, v in (("max_attempts", attempts), ("concurrency", conc)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    for name in ("rpm", "tpm"):
        v = limits[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ValueError(f"{name} must be a positive number per minute (or None for no limit), got {v!r}")
    return {**limits, "timeout": float(t), "max_attempts": int(attempts), "concurrency": int(conc)}


def _design_estimate(vf: Any, n_queries: int, plan_: Any, random_state: int, extra: int = 0,
                     price: Any = None) -> float:
    """Dollars for the run before any cache hit at the runner's price or `price`: the very requests the plan
    will send (`_run_requests`: the design as the run generates it, duplicates once), plus the noise pilot's
    re-asks and `extra` queries (the removal check) at a typical masked prompt's price, and one cache write of
    the fixed prefix; when the design cannot be known ahead (or is too large to render), n_queries typical
    masked prompts. Prompt tokens come from the endpoint's free token counter where it has one
    (`LLMValueFunction.estimate_masks`), answers at max_tokens."""
    found = _run_requests(vf.prompt, vf, plan_, random_state) if _probeable(plan_) else None
    if found is None:
        return float(vf.estimate_cost(n_queries, price))
    requests, masks = found
    more = int(getattr(plan_, "n_noise", 0)) + extra
    return float(vf.estimate_masks(masks, requests, price) + more * vf.typical_cost(price)
                 + vf.prefix_write(price)[1])


def _pricing_function(prompt: Any, adapter: Any, scorer: Any, prices: Any, batch: bool,
                      limits: dict[str, Any] | None) -> Any:
    """A value function that prices this prompt's queries (interactive or Batch-API prices) and sends nothing."""
    from providers.batch import batch_api
    from providers.runner import Runner
    from providers.value_function import LLMValueFunction

    runner = Runner(adapter, prices=prices, **(limits or {}))
    if batch:
        batch_api(adapter)
        runner.price = runner.price.batch()
    return LLMValueFunction(prompt, adapter, scorer, runner, progress=False)


# ---------------------------------------------------------------------------------------------- running
class BackgroundLoop(aio.BackgroundLoop):
    """The engine's background loop (spex_api.engine.aio) for a run or a batch: every query goes through it,
    so one runner's rate limiter, semaphore and cache serve all explanations, while the engine stays
    synchronous; it also carries which prompt of a batch asks, and settles a stopped run."""

    def run(self, coro: Any) -> Any:
        """Run coro on the loop and wait; which prompt of a batch the calling thread works for goes along."""
        from spex_api.progress import PROMPT

        tag = PROMPT.get()
        if tag is not None:
            coro = _tagged(tag, coro)
        return super().run(coro)

    def settle(self, runner: Any, reason: BaseException) -> None:
        """Stop `runner` sending (runs in progress and later ones raise `reason`) and wait, at most the answer
        timeout, for the calls already in flight: their answers are paid for, so they reach the cache before
        the loop closes. A second Ctrl-C while waiting gives up on them."""
        grace = float(getattr(runner, "timeout", None) or runner.adapter.timeout)

        async def stop_and_drain() -> None:
            runner.stop(reason)
            n = sum(len(st.inflight) for st in list(runner._states.values()))
            if n:
                log.warning("stopping: waiting up to %.0f s for %d call(s) in flight so their paid answers are "
                            "cached (Ctrl-C again to quit now)", grace, n)
            await runner.drain(grace)

        asyncio.run_coroutine_threadsafe(stop_and_drain(), self.loop).result(grace + 5)


async def _tagged(tag: int, coro: Any) -> Any:
    """Await coro with the batch's prompt tag set, so the runner's progress callbacks credit that prompt."""
    from spex_api.progress import PROMPT

    PROMPT.set(tag)
    return await coro


class Interrupted(RuntimeError):
    """The run was interrupted (Ctrl-C); the answers received are cached, so a rerun pays only for the rest."""


class BatchCancelled(RuntimeError):
    """Another prompt of the batch failed and `return_exceptions=False`: this one stopped spending."""


class PromptSkipped(RuntimeError):
    """A prompt of `explain_many` whose worst-case cost did not fit the batch's remaining `max_cost`: nothing
    was spent on it."""


class BatchResult(list):
    """The explanations of `explain_many`, in order, plus what the batch cost: `cost` is what the provider
    billed the whole batch (an answer two prompts shared counts once; each explanation's own `cost` is what
    that prompt paid), `skipped` the indices of prompts not started because the dollar cap could not cover them."""

    cost: float = 0.0
    estimated_cost: float = 0.0  # the batch's estimate before any query (`estimate_many` of the admitted prompts)
    skipped: list[int]
    stats: dict[str, Any] | None = None  # the shared runner's counters for the whole batch (api_calls, spend, ...)


class _Meter:
    """A view of a shared Runner that adds up what ONE explanation paid (answers not served from the cache),
    so each explanation of a batch reports its own cost while caps and limits stay shared."""

    def __init__(self, runner: Any, member: Any = None) -> None:
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_member", member)  # a BatchRunner.gather_rounds member: its rounds are merged
        object.__setattr__(self, "paid", 0.0)
        object.__setattr__(self, "sent", 0)
        object.__setattr__(self, "cached", 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("paid", "sent", "cached"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._runner, name, value)

    async def run(self, requests: Sequence[Any], validate: Any = None) -> list[Any]:
        """The runner's answers; this explanation is charged what it paid itself (the runner's ledger: a call
        another prompt of the batch was already sending is that prompt's, counted once)."""
        from providers.runner import Ledger

        ledger = Ledger()
        try:
            if self._member is not None:
                return await self._runner.run(requests, validate, ledger, member=self._member)
            return await self._runner.run(requests, validate, ledger)
        finally:
            self.paid += ledger.paid
            self.sent += ledger.sent
            self.cached += ledger.cached + ledger.shared

    async def send(self, request: Any, validate: Any = None) -> Any:
        return (await self.run([request], validate))[0]


def _make_runner(pre: Preview, adapter: Any, max_cost: float | None, max_queries: int | None = None) -> Any:
    """One runner: disk cache, concurrency and rate limits, retries, and the hard dollar cap.

    The query budget is enforced per explanation by the engine's Oracle (distinct masks); the runner's own
    call cap (`max_queries`, HTTP calls across a batch) is open unless asked for, because one query may be
    several HTTP calls (sampling scorers, retries).
    """
    return _runner_for(pre.mode, pre.cache_dir, adapter, max_cost, pre.prices, pre.limits, max_queries)


def _runner_for(mode: str, cache_dir: str | None, adapter: Any, max_cost: float | None, prices: Any,
                limits: dict[str, Any], max_queries: int | None = None) -> Runner:
    """The runner of `_make_runner` from its settings (the disk cache opens on first use). It also refuses a
    max_cost it could not enforce (an unpriced remote server), and batch mode on a provider without a batch API."""
    from providers.batch import BatchRunner
    from providers.runner import Runner

    cache = os.path.expanduser(cache_dir) if cache_dir else None
    kind = BatchRunner if mode == "batch" else Runner
    return kind(adapter, cache=cache, max_cost=max_cost, prices=prices, max_queries=max_queries, **limits)


@dataclass
class _Session:
    """What `preview` builds for the run: the runner (disk cache, caps, limits, retries) and the prompt's value
    function over a `_Meter` of it, which prices the plan before any spend and then spends it."""

    runner: Runner
    meter: _Meter
    value_function: LLMValueFunction

    @classmethod
    def build(cls, prompt: Any, adapter: Any, scorer: Any, mode: str, cache_dir: str | None, max_cost: float | None,
              prices: Any, limits: dict[str, Any]) -> "_Session":
        from providers.value_function import LLMValueFunction

        runner = _runner_for(mode, cache_dir, adapter, max_cost, prices, limits)
        meter = _Meter(runner)
        return cls(runner, meter, LLMValueFunction(prompt, adapter, scorer, cast("Runner", meter), progress=False))

    @property
    def list_price(self) -> Price:
        """Interactive prices (a batch runner's own price is the Batch API's)."""
        return getattr(self.runner, "list_price", self.runner.price)


def _metadata(pre: Preview, reference: Any, adapter: Any, original_score: float,
              accounts: dict[str, Any]) -> RunMetadata:
    """Original answer and its score, the prompt and where each feature sits in it (for the HTML report),
    provenance, and how the queries were served."""
    d = pre.prompt.to_dict()
    holders = sorted({f["message"] for f in d["features"]})
    starts, parts, pos = {}, [], 0
    for m in holders:
        starts[m] = pos
        parts.append(d["messages"][m]["content"])
        pos += len(parts[-1]) + 2
    return RunMetadata(
        original_answer=reference.text,
        original_score=original_score,
        prompt=d["messages"],
        text="\n\n".join(parts),
        feature_texts=tuple(f["text"] for f in d["features"]),
        feature_spans=tuple((starts[f["message"]] + f["start"], starts[f["message"]] + f["end"]) for f in d["features"]),
        granularity=pre.granularity,
        provider=pre.provider,
        model=pre.model,
        base_url=_public_base_url(pre, adapter),
        scorer=getattr(pre.scorer, "name", str(pre.scorer)),
        labels=pre.labels,
        budget=pre.budget,
        estimated_cost=pre.estimated_cost,
        mode=pre.mode,
        stats=QueryStats(**{k: v for k, v in accounts.items() if k != "paid"}),
    )


def _public_base_url(pre: Preview, adapter: Any) -> str | None:
    """The server the answers came from (the live local server's URL too), without credentials."""
    from providers.redact import public_url

    url = getattr(adapter, "base_url", None) if adapter is not None else None
    return public_url(url) if url else pre.base_url


def _explainer(pre: Preview, scores: Any) -> Any:
    """The engine's Explainer for a previewed plan (not planned again); `scores(masks)` answers its queries."""
    from spex_api.engine.explainer import Explainer
    from spex_api.engine.oracle import accepts_repeat

    # without a way to say "re-ask", a cache would answer the re-ask with the first answer: no pilot then
    pairs = getattr(pre.plan, "n_noise", 0) // 2 if accepts_repeat(scores) else 0
    # a MaskedPrompt's features are spans of its text in reading order: the neighbour-pair family applies
    return Explainer(scores, pre.prompt.n_features, pre.plan.budget, method=pre.method, max_order=pre.max_order,
                     random_state=pre.random_state, feature_names=pre.prompt.feature_names, plan=pre.plan,
                     noise_pairs=pairs, ordered_features=True)


def _accounts(meter: _Meter, scorer: Any) -> dict[str, Any]:
    """What one explanation paid and how its queries were served (`scorer`: the run's bound scorer)."""
    return {"paid": float(meter.paid), "queries_sent": meter.sent, "cache_hits": meter.cached,
            "bound_hits": int(getattr(scorer, "bound_hits", 0))}


def _finish(pre: Preview, expl: Explanation, reference: Any, original_score: float, accounts: dict[str, Any],
            adapter: Any = None) -> Explanation:
    """The fitted explanation with the original answer counted, its cost and its RunMetadata (`adapter`: the
    one that answered)."""
    return dataclasses.replace(expl, queries_used=expl.queries_used + REFERENCE_QUERIES, cost=accounts["paid"],
                               metadata=_metadata(pre, reference, adapter, original_score, accounts))


def _run_one(pre: Preview, adapter: Adapter, runner: Runner, io: BackgroundLoop, progress: bool,
             session: _Session | None = None, member: Any = None) -> Explanation:
    """Original answer, then the planned queries; returns the Explanation with cost and metadata. `session`: the
    value function `preview` built over this runner (else one is built here, over the runner it is given);
    `member`: its rounds merged with the other prompts' in batch mode (explain_many)."""
    from providers.value_function import LLMValueFunction

    if session is not None and session.runner is runner and member is None:
        meter, vf = session.meter, session.value_function
        vf.progress = progress
    else:
        meter = _Meter(runner, member)
        vf = LLMValueFunction(pre.prompt, adapter, pre.scorer, cast("Runner", meter), progress=progress)  # a Runner view
    explainer = _explainer(pre, lambda masks, repeat=0: io.run(vf(masks, repeat=repeat)))
    reference = io.run(vf.reference())
    expl = explainer.explain()
    # vf.scorer: the scorer bound to this prompt's original answer
    original_score = float(vf.scorer.score_many([reference])[0])
    if pre.verify_removal:
        from spex_api.engine.removal import check_removal

        expl = check_removal(expl, lambda masks: io.run(vf(masks)), pre.verify_removal, full_score=original_score)
    return _finish(pre, expl, reference, original_score, _accounts(meter, vf.scorer), adapter)


def _confirm(pre: Preview, confirm: bool | None, console: Any, estimate: float | None = None) -> None:
    """Ask before spending real money when running interactively (or when asked to)."""
    estimate = pre.estimated_cost if estimate is None else estimate
    ask = confirm if confirm is not None else (sys.stdin.isatty() and estimate > 0)
    if not ask:
        return
    from rich.prompt import Confirm

    if not Confirm.ask("Spend these queries?", console=console, default=False):
        raise SpendRefused("cancelled before any query was sent")


def explain(
    prompt: Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    features: str = "words",
    template: str | None = None,
    system: str | None = None,
    scorer: Any = "auto",
    labels: Sequence[str] | None = None,
    budget: int = 1000,
    max_cost: float | None = None,
    method: str = "auto",
    max_order: int = 5,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    random_state: int = 0,
    raw_completion: bool | None = None,
    prices: Any = None,
    mode: str = "interactive",
    timeout: float = DEFAULT_TIMEOUT,
    max_attempts: int = 6,
    concurrency: int = 8,
    rpm: float | None = None,
    tpm: float | None = None,
    noise_pairs: int | str = "auto",
    verify_removal: int = 0,
    confirm: bool | None = None,
    progress: bool = True,
) -> Explanation:
    """Explain why the model answers `prompt` as it does: ranked feature interactions of its score.

    `budget` caps the queries (the original answer included), `max_cost` the dollars. With no provider,
    no base_url and no OPENAI_API_KEY the local Gemma server is started for the call and stopped after.
    Before any spend the plan and estimated cost are shown (and confirmed when interactive or
    `confirm=True`); then the run shows a progress bar. Returns a `spex_api.engine.explanation.Explanation`
    with faithfulness, queries_used, cost (dollars) and metadata (a `RunMetadata`: original answer, feature
    texts, prompt, provider, model, scorer). `raw_completion`, `prices`, `mode` ("batch": provider Batch APIs at half price,
    up to 24 h per round), `timeout`, `max_attempts`, `concurrency`, `rpm`, `tpm`, `noise_pairs` (repeat-noise
    estimate and R² ceiling), `verify_removal` (re-ask with the top features masked): see `preview`. Ctrl-C
    stops sending, waits for the answers in flight to reach the cache, and raises.
    """
    pre = preview(
        prompt, provider=provider, model=model, base_url=base_url, api_key=api_key, features=features,
        template=template, system=system, scorer=scorer, labels=labels, budget=budget, max_cost=max_cost,
        method=method, max_order=max_order, cache_dir=cache_dir, random_state=random_state,
        raw_completion=raw_completion, prices=prices, mode=mode, timeout=timeout, max_attempts=max_attempts,
        concurrency=concurrency, rpm=rpm, tpm=tpm, noise_pairs=noise_pairs, verify_removal=verify_removal,
    )
    return run(pre, confirm=confirm, progress=progress)


def run(pre: Preview, *, confirm: bool | None = None, progress: bool = True) -> Explanation:
    """Spend the previewed plan: show it, confirm if needed, query, fit. See `explain`."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    console.print(pre.renderable())
    _confirm(pre, confirm, console)
    with ExitStack() as stack:
        starts_server = pre.local and not pre.base_url
        adapter = _live_adapter(pre, stack, console)
        session = pre._take_session(adapter)
        runner = session.runner if session is not None else _make_runner(pre, adapter, pre.max_cost)
        if starts_server:
            # the scorer binds again against the server started now (its tokenizer can set max_tokens)
            session = None
        io = BackgroundLoop()
        stack.callback(io.close)
        try:
            return _run_one(pre, adapter, runner, io, progress, session)
        except KeyboardInterrupt:
            io.settle(runner, Interrupted("interrupted"))  # paid answers in flight reach the cache first
            raise


def _live_adapter(pre: Preview, stack: ExitStack, console: Any) -> Adapter:
    """The preview's adapter; for the local provider without a base_url, pointed at a llama-server started
    now (no client exists before the first call, so nothing holds the placeholder URL) and the scorer checked
    again against it (single-token labels, by its /tokenize)."""
    adapter = _preview_adapter(pre)  # an unpickled Preview: its public URL, and the key from the environment
    if not pre.local or pre.base_url:
        return adapter
    from providers.local import LocalServer

    with console.status("starting the local model server (llama-server + Gemma-3-270M)..."):
        server = stack.enter_context(LocalServer())
    adapter.base_url = server.base_url
    pre.scorer.validate(adapter)
    return adapter


def _timeout(pre: Preview) -> float:
    return float(pre.limits.get("timeout", DEFAULT_TIMEOUT))


def explain_many(
    prompts: Sequence[Any],
    *,
    budget: int = 1000,
    max_cost: float | None = None,
    concurrency: int = 4,
    query_concurrency: int = 8,
    return_exceptions: bool = False,
    confirm: bool | None = None,
    progress: bool = True,
    backend: str = "threads",
    max_queries: int | None = None,
    ray_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BatchResult:
    """Explain many prompts through ONE runner: one rate limiter, one disk cache and one dollar cap
    (`max_cost`) across the whole batch; `budget` caps the queries of each prompt; `concurrency` prompts run
    at once, `query_concurrency` API calls are in flight across them. Other keyword arguments are those of
    `explain` (`timeout`, `max_attempts`, `rpm`, `tpm` apply to the shared runner); a Scorer object passed as
    `scorer` is shared unchanged (each prompt binds its own copy, with its own original answer).

    Every prompt is validated and planned before anything is sent. Under `max_cost`, prompts are admitted in
    order while the cap covers their worst-case cost (every prompt token uncached, every answer at max_tokens),
    so a cap that covers k whole prompts completes k rather than starting all and finishing none; the others
    are reported before any spend: with `return_exceptions=True` each yields a `PromptSkipped`, otherwise
    `PromptSkipped` is raised and nothing is sent. With `return_exceptions=False` the first failure stops the
    batch: the other prompts send nothing more (answers already in flight still reach the cache) and the
    error is raised; with True a failed prompt yields its exception and the others go on. Paid answers stay
    cached, so rerunning the batch pays only for what is missing. Returns a `BatchResult` (a list, plus the
    batch's billed `cost`: an answer shared by two prompts counts once; and the `skipped` indices).
    `max_queries` caps the HTTP calls of the whole batch. `backend="threads"` runs `concurrency` explanations
    in this process; `backend="ray"` runs each explanation's engine work as a Ray task (`ray_options`: Ray
    task options such as num_cpus) while one gateway actor sends every query, so the limits, caps and cache
    hold across the cluster (see `spex_api.distributed`; needs `pip install "spex-api[ray]"`).
    """
    from rich.console import Console

    from spex_api.progress import PROMPT, BatchProgress, label_for

    if isinstance(prompts, str):
        raise TypeError("explain_many takes a list of prompts; use explain for one")
    if backend not in ("threads", "ray"):
        raise ValueError(f"backend must be 'threads' or 'ray', got {backend!r}")
    if backend == "ray":
        from spex_api.distributed import require_ray

        require_ray()
    elif ray_options:
        raise ValueError("ray_options need backend='ray'")
    if isinstance(concurrency, bool) or not isinstance(concurrency, (int, np.integer)) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1 (prompts at once), got {concurrency!r}")
    def plan(prompt: Any) -> Preview:
        return preview(prompt, budget=budget, max_cost=max_cost, concurrency=query_concurrency, **kwargs)

    with ExitStack() as stack:
        pres = [plan(p) for p in prompts[:1]]  # the first prompt checks the settings every prompt shares
        gateway = None
        if backend == "ray" and pres:
            from spex_api.distributed import ray_gateway

            gateway = stack.enter_context(ray_gateway())  # it starts up while the other prompts are planned
        pres += [plan(p) for p in prompts[1:]]
        result = BatchResult([None] * len(pres))
        skipped = _admit(pres, max_cost)
        result.skipped = sorted(skipped)
        if skipped:
            why = "; ".join(skipped.values())
            log.warning("explain_many: %d of %d prompts do not fit max_cost and are skipped before any spend: %s",
                        len(skipped), len(pres), why)
            if not return_exceptions:
                raise PromptSkipped(f"{len(skipped)} of {len(pres)} prompts cannot fit max_cost=${max_cost:.4f} at "
                                    f"their worst case ({why}); nothing was sent. Raise max_cost, lower the budget, or "
                                    "pass return_exceptions=True to run the prompts that fit")
            for i, why_i in skipped.items():
                result[i] = PromptSkipped(f"skipped before any spend: {why_i}")
        admitted = [i for i in range(len(pres)) if i not in skipped]
        if not admitted:
            return result
        console = Console(stderr=True, quiet=not progress)
        total_q = sum(pres[i].n_queries for i in admitted)
        est = estimate_many([pres[i] for i in admitted])
        result.estimated_cost = est
        console.print(pres[admitted[0]].renderable())
        console.print(
            f"batch: {len(admitted)} prompts, at most {total_q} queries, "
            + f"about ${est:.4f} before cache hits"
            + (f", hard cap ${max_cost:.2f} across the batch" if max_cost is not None else "")
            + (f"; skipped (cap too small for their worst case): prompts {result.skipped}" if skipped else "")
        )
        _confirm(pres[admitted[0]], confirm, console, est)
        adapter = _live_adapter(pres[0], stack, console)
        tracker = stack.enter_context(BatchProgress(
            [label_for(p) for p in prompts], [p.n_queries for p in pres], console, enabled=progress))
        for i, why_i in skipped.items():
            tracker.skip(i, why_i)
        if backend == "ray":
            from spex_api.distributed import explain_on_ray

            done, result.stats = explain_on_ray(pres, admitted, adapter, gateway, max_cost, max_queries, tracker,
                                                return_exceptions=return_exceptions, ray_options=ray_options)
            for i, expl in done.items():
                result[i] = expl
            result.cost = float(result.stats["spend"])
            return result
        runner = _make_runner(pres[0], adapter, max_cost, max_queries)
        io = BackgroundLoop()
        stack.callback(io.close)
        runner.on_progress = tracker.on_progress
        merged = pres[0].mode == "batch"  # every prompt at once, each round of all of them one batch
        if merged:
            io.loop.call_soon_threadsafe(runner.gather_rounds, list(admitted))
        failures: list[BaseException] = []
        lock = threading.Lock()

        def one(i: int) -> Any:
            PROMPT.set(i)
            tracker.start(i)
            try:
                expl = _run_one(pres[i], adapter, runner, io, progress=False, member=i if merged else None)
                tracker.done(i, expl)
                return expl
            except Exception as exc:  # noqa: BLE001 - handed back to the caller on request
                tracker.failed(i, exc)
                if return_exceptions:
                    return exc
                with lock:
                    failures.append(exc)
                    if len(failures) == 1:  # stop the other prompts now: nothing more is sent for them
                        log.warning("explain_many: prompt %d failed (%s); stopping the batch", i, exc)
                        io.loop.call_soon_threadsafe(runner.stop, BatchCancelled(
                            f"stopped because prompt {i} failed: {type(exc).__name__}: {exc}"))
                raise
            finally:
                if merged:  # the other prompts' rounds no longer wait for this one
                    io.loop.call_soon_threadsafe(runner.leave, i)

        # batch mode: a prompt waiting for its round's batch holds a thread, not a CPU
        pool = ThreadPoolExecutor(max_workers=len(admitted) if merged else max(1, min(concurrency, len(admitted))))
        futures = {i: pool.submit(one, i) for i in admitted}
        try:
            wait(list(futures.values()), return_when=FIRST_EXCEPTION)
            if failures:
                for f in futures.values():
                    f.cancel()  # prompts not started never start
            wait(list(futures.values()))
        except KeyboardInterrupt:
            for f in futures.values():
                f.cancel()
            io.settle(runner, Interrupted("interrupted"))  # paid answers in flight reach the cache first
            raise
        finally:
            pool.shutdown(wait=True)
        if failures:
            raise failures[0]
        for i, f in futures.items():
            result[i] = f.result()
        result.cost = float(runner.stats.spend)
        result.stats = runner.stats.as_dict()
        log.info("explain_many: %d prompts, $%.6f billed in all (%s per prompt)", len(admitted), result.cost,
                 ", ".join(f"${getattr(result[i], 'cost', 0.0):.6f}" for i in admitted))
        return result


def _admit(pres: Sequence[Preview], max_cost: float | None) -> dict[int, str]:
    """Prompts (index: why) whose worst-case cost does not fit what `max_cost` leaves after the prompts before
    them that do fit: admitting them could leave every prompt half done when the cap runs out."""
    if max_cost is None:
        return {}
    left, skipped = float(max_cost), {}
    for i, p in enumerate(pres):
        if p.worst_case_cost <= left + 1e-12:
            left -= p.worst_case_cost
        else:
            skipped[i] = f"prompt {i} may cost up to ${p.worst_case_cost:.4f}, ${max(left, 0.0):.4f} is left"
    return skipped
