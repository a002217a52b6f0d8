"""Scorers turn one completion into one finite float for the engine.

A configured scorer is immutable, so one instance can serve many runs at once (``explain_many`` hands the
caller's scorer to every prompt). Each run binds it: ``scorer.bind(adapter)`` checks what the scorer needs
from the provider (``requires``; also ``validate(adapter)``) BEFORE any query is spent and returns the
per-run scorer, whose ``request(messages)`` builds the `Request` it can score (max_tokens, top_logprobs,
prompt_logprobs, samples, temperature) and whose ``score(completion)`` returns the float. Scorers that compare
against the unmasked answer are bound again with it, ``scorer.bind(adapter, reference)``, where the reference
answers ``bound.reference_request(full_messages)``; per-run counters (``bound_hits``) live on the bound scorer.

==================  ==========================================  ==========================================
scorer              needs                                       providers
==================  ==========================================  ==========================================
LabelMargin         top_logprobs of generated tokens            OpenAI chat, llama-server, vLLM, Ollama
AnswerLogprob       top_logprobs (first token) /                same; "sequence" needs prompt logprobs
                    prompt_logprobs ("sequence")                (vLLM)
AnswerFrequency     k samples at temperature > 0                all, incl. Anthropic
AnswerSimilarity    the answer text                             all, incl. Anthropic
==================  ==========================================  ==========================================

**Missing label bound.** An API lists only the top-k alternatives of a token. A label absent from that list
has a probability below both the smallest listed probability and the unlisted mass 1 − Σ listed, so we
use ``log(min(p_min, 1 − Σ p))`` — an upper bound on the label's log-probability, never a fixed −100
floor. When the listed mass is numerically 1 (nothing left to bound) the bound is ``log(p_min) +
log(1e-6)``, i.e. a million times below the least likely listed token; the score then reports how far
the listed alternatives rule the label out, and ``bound_hits`` counts how often a bound was used.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import string
from collections import Counter
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from providers.types import Completion, Message, Request, TokenLogprob

_REMAINDER_FLOOR = math.log(1e-6)


class ScorerError(ValueError):
    """The scorer cannot work with this configuration or provider; raised before any spend."""


class ScoringError(RuntimeError):
    """A completion does not contain what the scorer needs (e.g. no logprobs were returned)."""


# ---------------------------------------------------------------------------------------------- helpers
def _capability(adapter: Any, name: str) -> Any:
    """An adapter capability: ``max_top_logprobs`` (None = no logprobs), ``prompt_logprobs``, ``multi_sample``."""
    return getattr(adapter, name, None)


def _max_top_logprobs(adapter: Any) -> int | None:
    value = _capability(adapter, "max_top_logprobs")
    return None if value in (None, False) else int(value)


def _describe(adapter: Any) -> str:
    return f"{getattr(adapter, 'provider', type(adapter).__name__)}:{getattr(adapter, 'model', '?')}"


def _listed(position: TokenLogprob) -> dict[str, float]:
    """The alternatives listed at one position (incl. the chosen token), token -> logprob."""
    out = {tok: float(lp) for tok, lp in position.top}
    out.setdefault(position.token, float(position.logprob))
    return out


def missing_bound(listed_logprobs: Sequence[float]) -> float:
    """Upper bound on the logprob of a token that is NOT among the listed top-k alternatives."""
    lps = [float(x) for x in listed_logprobs]  # ~20 values: plain floats beat numpy's per-call overhead 3-4x
    if not lps:
        return 0.0  # nothing listed: the only safe upper bound is log(1)
    p_min = math.exp(min(lps))
    remainder = 1.0 - math.fsum(math.exp(x) for x in lps)
    if remainder <= 1e-12:
        return math.log(p_min) + _REMAINDER_FLOOR
    return math.log(min(p_min, remainder))


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(math.fsum(math.exp(v - m) for v in values))


def _token_count(tokenizer: Callable[[str], Any] | None, adapter: Any, text: str) -> int | None:
    """Token count from the caller's tokenizer, else tiktoken for OpenAI's own API; None when unknown.

    A `LocalServer` started in this process is found by the adapter's base_url and asked via ``/tokenize``.
    Other adapters only estimate (chars/4), which cannot decide single-token-ness, so the check is skipped
    there unless a tokenizer is passed (e.g. ``LocalServer.tokenize`` for llama-server's ``/tokenize``).
    """
    fn = tokenizer
    if fn is None and getattr(adapter, "provider", None) == "openai":
        from providers.adapters.base import tiktoken_encoding

        if tiktoken_encoding(getattr(adapter, "model", "")) is not None:
            fn = adapter.count_tokens
    if fn is None:
        from providers.local import tokenizer_for

        fn = tokenizer_for(getattr(adapter, "base_url", None))  # a LocalServer we started: its /tokenize
    if fn is None:
        return None
    out = fn(text)
    return int(out) if isinstance(out, (int, np.integer)) else len(out)


_TRUNCATED = ("length", "max_tokens")  # finish reasons of an answer cut off by its token limit (OpenAI, Anthropic)


def _truncated(completion: Completion) -> bool:
    """Whether the provider stopped the answer at max_tokens (finish reason "length" or "max_tokens")."""
    return any(reason in _TRUNCATED for reason in completion.finish_reasons)


_LABEL_CHARS_PER_TOKEN = 3


def _label_token_estimate(label: str) -> int:
    """Generous token count of a label when no tokenizer is known: one per word or per 3 characters, the larger.

    Each whitespace-separated word is at least one token in BPE/SentencePiece vocabularies, and English text
    averages about 4 characters per token, so this rarely undercounts; overcounting only raises max_tokens.
    """
    return max(len(label.split()), math.ceil(len(label) / _LABEL_CHARS_PER_TOKEN))


def _first_logprobs(completion: Completion) -> tuple[TokenLogprob, ...]:
    if not completion.logprobs or not completion.logprobs[0]:
        raise ScoringError(
            "the completion carries no token logprobs; the provider ignored top_logprobs "
            "(use AnswerFrequency or AnswerSimilarity for providers without logprobs)"
        )
    return completion.logprobs[0]


_S = TypeVar("_S", bound="Scorer")


class Scorer:
    """Base class: completion -> finite float. Subclasses set ``name`` and ``requires``.

    Configured scorers are immutable (attributes are fixed once the constructor returns); `bind` returns the
    per-run copy that carries what depends on the adapter (``settings``), the reference answer and counters.
    """

    name: str = "scorer"
    requires: str = ""
    needs_reference: bool = False
    reference: Completion | None = None
    bound_hits: int = 0  # on a bound scorer: how many scores used the missing-label bound
    _bound: bool = False
    _sealed: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Seal instances once the outermost constructor returns, so shared scorers cannot drift."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def sealed_init(self: Scorer, *args: Any, **kw: Any) -> None:
            depth = self.__dict__.get("_init_depth", 0)
            object.__setattr__(self, "_init_depth", depth + 1)
            try:
                init(self, *args, **kw)
            finally:
                object.__setattr__(self, "_init_depth", depth)
            if depth == 0:
                del self.__dict__["_init_depth"]
                object.__setattr__(self, "_sealed", True)

        setattr(cls, "__init__", sealed_init)  # the subclass's own __init__, sealed once it returns

    def __setattr__(self, name: str, value: Any) -> None:
        if self._sealed:
            raise AttributeError(f"{type(self).__name__} is immutable once configured (it may be shared by "
                                 "several runs); per-run state lives in scorer.bind(adapter, reference)")
        object.__setattr__(self, name, value)

    def settings(self, adapter: Any) -> dict[str, Any]:
        """What depends on the adapter (e.g. top_logprobs capped at its maximum); raise `ScorerError` if this
        scorer cannot run on it."""
        return {}

    def validate(self, adapter: Any) -> None:
        """Raise `ScorerError` if this scorer cannot run on `adapter` (called before any spend); changes nothing."""
        self.settings(adapter)

    def accept_reference(self, completion: Completion) -> None:
        """Raise `ScorerError` if this scorer's settings cannot score against `completion` as the reference
        (e.g. it was cut off at max_tokens); `bind` calls it after `check_reference`."""

    def bind(self: _S, adapter: Any, reference: Completion | None = None) -> _S:
        """The per-run scorer for `adapter` (and, for scorers that compare against it, the reference answer)."""
        if reference is not None and not self.needs_reference:
            raise ScorerError(f"{self.name} does not use a reference answer")
        bound = copy.copy(self)
        bound.__dict__.update(self.settings(adapter), _sealed=False, _bound=True, bound_hits=0, reference=None)
        if reference is not None:
            bound.check_reference(reference)
            bound.accept_reference(reference)
            bound.reference = reference
        return bound

    def _require_bound(self) -> Completion | None:
        """The reference answer (None for scorers without one); raises unless bound (to a reference, if used)."""
        if not self._bound:
            raise ScorerError(f"{type(self).__name__} scores only once bound: scorer.bind(adapter"
                              + (", reference)" if self.needs_reference else ")"))
        if self.needs_reference and self.reference is None:
            raise ScorerError("bind the scorer with the reference answer before scoring: "
                              "scorer.bind(adapter, reference)")
        return self.reference

    def request(self, messages: Sequence[Message]) -> Request:
        raise NotImplementedError

    def reference_request(self, messages: Sequence[Message]) -> Request:
        """The request whose answer `bind` takes as the reference (the unmasked prompt's full answer)."""
        raise ScorerError(f"{self.name} does not use a reference answer")

    def score(self, completion: Completion) -> float:
        raise NotImplementedError

    def score_many(self, completions: Sequence[Completion]) -> np.ndarray:
        return np.array([self.score(c) for c in completions], dtype=float)

    def check(self, completion: Completion) -> None:
        """Raise ScoringError unless `completion` scores to a finite float (no side effects: `bound_hits` is
        kept). The runner calls it before caching an answer, so an unscorable answer is never cached."""
        hits = self.bound_hits
        try:
            value = float(self.score(completion))
        finally:
            self.bound_hits = hits
        if not math.isfinite(value):
            raise ScoringError(f"{self.name} scores this answer as {value}, not a finite number")

    def check_reference(self, completion: Completion) -> None:
        """Raise ScoringError when a reference answer lacks what scoring against it needs (checked before it
        is cached); settings problems (a cut-off reference) are left to `accept_reference`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


_BLANK = string.whitespace + "*_`\"'#:"  # what a position may generate before the answer token
_MATCH_MEMO = 100_000  # distinct tokens a label matcher remembers (bounded memory)


class _LabelMatcher:
    """Normalises tokens/answers so that 'True', ' true', 'TRUE' match label 'True' (as configured)."""

    def __init__(self, labels: Sequence[str], case_sensitive: bool, strip: bool) -> None:
        if len(labels) < 2 or any(not isinstance(x, str) or not x.strip() for x in labels):
            raise ScorerError(f"need at least two non-empty labels, got {labels!r}")
        self.case_sensitive, self.strip = case_sensitive, strip
        self.labels = tuple(labels)
        self.keys = tuple(self.norm(x) for x in labels)
        if len(set(self.keys)) != len(self.keys):
            raise ScorerError(f"labels {labels!r} collide after normalisation (case_sensitive={case_sensitive})")
        self._seen: dict[str, int | None] = {}

    def norm(self, s: str) -> str:
        s = s.strip() if self.strip else s
        return s if self.case_sensitive else s.lower()

    def which(self, token: str) -> int | None:
        """Index of the label this token is, else None; remembered per token (answers repeat a small vocabulary,
        and every answer's ~20 listed tokens are matched when it is checked and when it is scored)."""
        try:
            return self._seen[token]
        except KeyError:
            key = self.norm(token)
            found = self.keys.index(key) if key in self.keys else None
            if len(self._seen) < _MATCH_MEMO:
                self._seen[token] = found
            return found


_EDGES = re.compile(r"^[\W_]+|[\W_]+$")  # surrounding whitespace, punctuation and markup (**, _, `)


class _AnswerMatcher:
    """Matches free-text answers to (possibly multi-word) labels, e.g. "**Absolutely not.**" to "Absolutely not".

    Answer and label are normalised alike: case folded (unless ``case_sensitive``), surrounding whitespace and
    punctuation dropped, inner whitespace runs collapsed to one space. An answer counts for a label when it
    starts with it and a non-word character or the end follows; when labels extend one another ("Yes" /
    "Yes and no") the longest matching label wins.
    """

    def __init__(self, labels: Sequence[str], case_sensitive: bool) -> None:
        self.case_sensitive = case_sensitive
        if len(labels) < 2 or any(not isinstance(x, str) for x in labels):
            raise ScorerError(f"need at least two string labels, got {labels!r}")
        keys = [self.norm(x) for x in labels]
        empty = [x for x, k in zip(labels, keys) if not k]
        if empty:
            raise ScorerError(f"labels {empty!r} are empty once whitespace and punctuation are dropped")
        if len(set(keys)) != len(keys):
            raise ScorerError(
                f"labels {labels!r} are equal once case, punctuation and spacing are normalised "
                f"(case_sensitive={case_sensitive}); answers could not tell them apart"
            )
        self.labels = tuple(labels)
        by_length = sorted(range(len(keys)), key=lambda i: -len(keys[i]))
        self._patterns = [(i, re.compile(re.escape(keys[i]) + r"(?!\w)")) for i in by_length]

    def norm(self, text: str) -> str:
        text = " ".join(_EDGES.sub("", text).split())
        return text if self.case_sensitive else text.casefold()

    def which(self, answer: str) -> int | None:
        """Index of the longest label the answer starts with (at a word boundary), else None."""
        key = self.norm(answer)
        return next((i for i, pattern in self._patterns if pattern.match(key)), None)


# ---------------------------------------------------------------------------------------------- scorers
class LabelMargin(Scorer):
    """logprob(labels[0]) − logprob(labels[1]) at the answer token, from ``top_logprobs``.

    All listed token variants of a label (leading space, case if ``case_sensitive=False``) are summed
    in probability space. A label missing from the list gets the upper bound described in the module
    doc. With ``max_tokens > 1`` the first generated position whose alternatives contain a label (skipping
    whitespace/markup tokens) is scored. Labels must be single tokens: checked in `validate` with
    ``tokenizer`` (a callable text -> tokens or count), else tiktoken for OpenAI's own API, else the
    ``/tokenize`` endpoint of a `LocalServer` running in this process at the adapter's base_url; other
    servers' adapters only estimate token counts, so without a ``tokenizer`` the check is skipped there.
    ``raw_completion=True`` sends the rendered text to the legacy completions endpoint without a chat
    template — for base models prompted few-shot ("...\nAnswer:"), whose next token is then the label.
    """

    name = "label_margin"
    requires = "top_logprobs"

    def __init__(
        self,
        labels: Sequence[str] = ("True", "False"),
        top_logprobs: int = 20,
        max_tokens: int = 1,
        case_sensitive: bool = False,
        strip: bool = True,
        tokenizer: Callable[[str], Any] | None = None,
        raw_completion: bool = False,
    ) -> None:
        self.matcher = _LabelMatcher(labels, case_sensitive, strip)
        if len(labels) != 2:
            raise ScorerError("LabelMargin compares exactly two labels")
        if not 1 <= int(top_logprobs) <= 20:
            raise ScorerError(f"top_logprobs must be in 1..20 (the OpenAI limit), got {top_logprobs}")
        if int(max_tokens) < 1:
            raise ScorerError(f"max_tokens={max_tokens} is too small: LabelMargin reads the first generated token")
        self.labels = tuple(labels)
        self.top_logprobs = int(top_logprobs)
        self.max_tokens = int(max_tokens)
        self.tokenizer = tokenizer
        self.raw_completion = bool(raw_completion)
        self._k = self.top_logprobs

    def settings(self, adapter: Any) -> dict[str, Any]:
        cap = _max_top_logprobs(adapter)
        if cap is None:
            raise ScorerError(
                f"LabelMargin needs top_logprobs, which {_describe(adapter)} does not return; "
                "use AnswerFrequency or AnswerSimilarity"
            )
        for label in self.labels:
            n = _token_count(self.tokenizer, adapter, label)
            if n is not None and n != 1:
                raise ScorerError(
                    f"label {label!r} is {n} tokens for {_describe(adapter)}; LabelMargin needs single-token "
                    "labels (pick e.g. 'Yes'/'No', or use AnswerFrequency)"
                )
        return {"_k": min(self.top_logprobs, cap)}

    def request(self, messages: Sequence[Message]) -> Request:
        return Request(
            tuple(messages), max_tokens=self.max_tokens, temperature=0.0, top_logprobs=self._k,
            raw_completion=self.raw_completion,
        )

    def label_logprobs(self, completion: Completion) -> tuple[float, float, bool]:
        """(logprob label0, logprob label1, whether a bound was used) at the scored position."""
        positions = _first_logprobs(completion)
        listed = None
        for pos in positions:
            here = _listed(pos)
            # the first position listing a label, or a real (non-label) token generated first: score it
            if any(self.matcher.which(t) is not None for t in here) or pos.token.strip(_BLANK):
                listed = here
                break
        if listed is None:
            listed = _listed(positions[0])
        found: list[list[float]] = [[], []]
        for tok, lp in listed.items():
            i = self.matcher.which(tok)
            if i is not None:
                found[i].append(lp)
        bound = missing_bound(list(listed.values()))
        values = [_logsumexp(f) if f else bound for f in found]
        return values[0], values[1], not (found[0] and found[1])

    def score(self, completion: Completion) -> float:
        self._require_bound()
        a, b, bounded = self.label_logprobs(completion)
        self.bound_hits += bounded
        return a - b


class AnswerLogprob(Scorer):
    """Log-probability of the original (unmasked) answer under the masked prompt.

    ``mode="first_token"``: logprob of the reference's first token at the first generated position
    (top_logprobs; bound if unlisted). ``mode="sequence"``: teacher forcing — the reference answer is
    appended as an assistant message and the server scores the prompt tokens (``prompt_logprobs``,
    vLLM); the score is the sum over the answer's tokens. Scores once bound with the reference answer.
    """

    name = "answer_logprob"
    requires = "top_logprobs (first_token) or prompt_logprobs (sequence)"
    needs_reference = True

    def __init__(
        self,
        mode: str = "first_token",
        top_logprobs: int = 20,
        reference_max_tokens: int = 64,
    ) -> None:
        if mode not in ("first_token", "sequence"):
            raise ScorerError(f"mode must be 'first_token' or 'sequence', got {mode!r}")
        if not 1 <= int(top_logprobs) <= 20:
            raise ScorerError(f"top_logprobs must be in 1..20, got {top_logprobs}")
        if int(reference_max_tokens) < 1:
            raise ScorerError("reference_max_tokens must be at least 1")
        self.mode = mode
        self.top_logprobs = int(top_logprobs)
        self.reference_max_tokens = int(reference_max_tokens)
        self._k = self.top_logprobs

    def settings(self, adapter: Any) -> dict[str, Any]:
        if self.mode == "sequence":
            if not _capability(adapter, "prompt_logprobs"):
                raise ScorerError(
                    f"AnswerLogprob(mode='sequence') needs prompt logprobs (teacher forcing, e.g. vLLM); "
                    f"{_describe(adapter)} does not offer them — use mode='first_token'"
                )
            return {}
        cap = _max_top_logprobs(adapter)
        if cap is None:
            raise ScorerError(f"AnswerLogprob needs top_logprobs, which {_describe(adapter)} does not return")
        return {"_k": min(self.top_logprobs, cap)}

    def reference_request(self, messages: Sequence[Message]) -> Request:
        return Request(
            tuple(messages), max_tokens=self.reference_max_tokens, temperature=0.0, top_logprobs=self._k
        )

    def check_reference(self, completion: Completion) -> None:
        if self.mode == "first_token":
            first = _first_logprobs(completion)[0]
            if not math.isfinite(first.logprob):
                raise ScoringError(f"the reference's first-token logprob is {first.logprob}, not finite")

    def accept_reference(self, completion: Completion) -> None:
        """Refuse the unmasked answer (before any masked query) when it is empty or, for teacher
        forcing, cut off at reference_max_tokens (the sequence score would be that of a truncated answer)."""
        if not completion.text.strip():
            raise ScorerError("the reference answer is empty; nothing to score against")
        if self.mode == "first_token":
            _first_logprobs(completion)
        elif _truncated(completion):
            raise ScorerError(
                f"the reference answer was cut off at reference_max_tokens={self.reference_max_tokens} "
                f"(finish_reason={completion.finish_reasons[0]!r}); teacher forcing would score a truncated "
                "answer — raise reference_max_tokens"
            )

    def request(self, messages: Sequence[Message]) -> Request:
        if self.mode == "first_token":
            return Request(tuple(messages), max_tokens=1, temperature=0.0, top_logprobs=self._k)
        # Teacher forcing sends the reference answer itself. Until bound with it this returns the request's
        # shape only (for capability checks such as Adapter.check); score() refuses until a reference is set.
        forced = () if self.reference is None else (Message("assistant", self.reference.text),)
        return Request(tuple(messages) + forced, max_tokens=1, temperature=0.0, prompt_logprobs=1)

    def score(self, completion: Completion) -> float:
        ref = self._require_bound()
        assert ref is not None  # needs_reference: _require_bound refuses to score without it
        if self.mode == "first_token":
            target = _first_logprobs(ref)[0].token
            listed = _listed(_first_logprobs(completion)[0])
            if target in listed:
                return listed[target]
            self.bound_hits += 1
            return missing_bound(list(listed.values()))
        return self._sequence_logprob(completion, ref)

    @staticmethod
    def _sequence_logprob(completion: Completion, ref: Completion) -> float:
        """Sum of prompt logprobs over the tokens that spell the reference answer (found from the end)."""
        toks = completion.prompt_logprobs
        if not toks:
            raise ScoringError("the completion carries no prompt logprobs; the server ignored prompt_logprobs")
        target = ref.text.strip()
        # the answer is followed by at most a few template tokens (end-of-turn); search those ends
        for end in range(len(toks), max(len(toks) - 8, 0), -1):
            text = ""
            for start in range(end - 1, -1, -1):
                text = toks[start].token + text
                stripped = text.strip()
                if stripped == target:
                    return float(sum(t.logprob for t in toks[start:end]))
                if len(stripped) > len(target):
                    break
        raise ScoringError("could not locate the reference answer's tokens among the prompt logprobs")


def _normalise_words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


class AnswerFrequency(Scorer):
    """Smoothed log-odds that the answer is labels[0] rather than labels[1], over ``samples`` draws.

    Each sampled answer counts for the label it starts with (see `_AnswerMatcher`: case-, punctuation- and
    spacing-insensitive unless ``case_sensitive``; the longest label wins; multi-word labels work); other
    answers count for neither. Score = log(c0 + α) − log(c1 + α), α = ``smoothing`` (0.5: Jeffreys-like), so
    the range is ±log((k + α)/α). Works without logprobs (Anthropic); providers without a native ``n`` send
    ``samples`` calls (adapter's business). ``max_tokens`` must hold every label: `validate` counts label
    tokens with ``tokenizer``, tiktoken (OpenAI) or a running `LocalServer`, else uses a generous estimate
    (one token per word or per 3 characters, the larger). ``max_tokens=None`` picks that many (at least 4).
    """

    name = "answer_frequency"
    requires = "sampling (temperature > 0)"

    def __init__(
        self,
        labels: Sequence[str] = ("True", "False"),
        samples: int = 8,
        smoothing: float = 0.5,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        case_sensitive: bool = False,
        tokenizer: Callable[[str], Any] | None = None,
        stop: Sequence[str] = (),
    ) -> None:
        self.matcher = _AnswerMatcher(labels, case_sensitive)
        if len(labels) != 2:
            raise ScorerError("AnswerFrequency compares exactly two labels")
        if int(samples) < 1:
            raise ScorerError("samples must be at least 1")
        if not smoothing > 0:
            raise ScorerError("smoothing must be > 0 (it keeps the log-odds finite)")
        if int(samples) > 1 and not temperature > 0:
            raise ScorerError("samples > 1 at temperature 0 repeat one answer; set temperature > 0")
        if max_tokens is not None and int(max_tokens) < 1:
            raise ScorerError(f"max_tokens={max_tokens} is too small to hold a label")
        self.labels = tuple(labels)
        self.samples, self.smoothing, self.temperature = int(samples), float(smoothing), float(temperature)
        self.auto_max_tokens = max_tokens is None
        estimate = self._fit(_label_token_estimate(x) for x in self.labels)
        self.max_tokens = estimate if max_tokens is None else int(max_tokens)
        self.tokenizer = tokenizer
        self.stop = tuple(stop)

    @staticmethod
    def _fit(label_tokens: Iterable[int]) -> int:
        """The automatic max_tokens: room for the longest label, and at least 4 (a label plus markup)."""
        return max(4, *label_tokens)

    def settings(self, adapter: Any) -> dict[str, Any]:
        counted = {label: _token_count(self.tokenizer, adapter, label) for label in self.labels}
        needed = {label: n if n is not None else _label_token_estimate(label) for label, n in counted.items()}
        if self.auto_max_tokens:
            return {"max_tokens": self._fit(needed.values())}
        for label, n in needed.items():
            if n > self.max_tokens:
                how = (f"{n} tokens" if counted[label] is not None else
                       f"about {n} tokens: {_describe(adapter)}'s tokenizer is unknown, so one token per word or per "
                       f"{_LABEL_CHARS_PER_TOKEN} characters is assumed; pass tokenizer= for an exact count")
                raise ScorerError(
                    f"max_tokens={self.max_tokens} is too small for label {label!r} ({how}); answers would be cut "
                    "before the label ends and never match it"
                )
        return {}

    def request(self, messages: Sequence[Message]) -> Request:
        return Request(
            tuple(messages), max_tokens=self.max_tokens, temperature=self.temperature, samples=self.samples,
            stop=self.stop,
        )

    def counts(self, completion: Completion) -> tuple[int, int]:
        """(answers for labels[0], answers for labels[1]) among the sampled texts."""
        if not completion.texts:
            raise ScoringError("the completion has no answer text")
        c = Counter(self.matcher.which(text) for text in completion.texts)
        return c[0], c[1]

    def score(self, completion: Completion) -> float:
        self._require_bound()
        c0, c1 = self.counts(completion)
        return math.log(c0 + self.smoothing) - math.log(c1 + self.smoothing)


def token_f1(a: str, b: str) -> float:
    """SQuAD-style bag-of-words F1 between two answers (lower-cased, punctuation dropped)."""
    ta, tb = _normalise_words(a), _normalise_words(b)
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def char_ngram_cosine(a: str, b: str, n: int = 3) -> float:
    """Cosine similarity of character n-gram counts (whitespace collapsed, lower-cased)."""

    def grams(s: str) -> Counter[str]:
        s = " ".join(s.lower().split())
        s = f" {s} "
        return Counter(s[i : i + n] for i in range(max(len(s) - n + 1, 1)))

    ga, gb = grams(a), grams(b)
    dot = sum(v * gb[k] for k, v in ga.items())
    norm = math.sqrt(sum(v * v for v in ga.values()) * sum(v * v for v in gb.values()))
    return dot / norm if norm else 0.0


_SIMILARITIES: dict[str, Callable[[str, str], float]] = {"token_f1": token_f1, "char_ngram": char_ngram_cosine}


class AnswerSimilarity(Scorer):
    """Similarity in [0, 1] of the masked prompt's answer to the original answer (mean over samples).

    ``metric="token_f1"`` (default; bag-of-words F1 after lower-casing and dropping punctuation) or
    ``"char_ngram"`` (cosine of character 3-gram counts; kinder to inflections). No logprobs needed.
    ``stop`` sequences end answers early (e.g. ``("\n",)`` for one-line answers). Settings are checked in the
    constructor; only whether ``max_tokens`` holds the whole reference answer needs that answer, so
    `bind` refuses a reference the provider cut off (before any masked query is sent).
    """

    name = "answer_similarity"
    requires = "answer text"
    needs_reference = True

    def __init__(
        self,
        metric: str = "token_f1",
        max_tokens: int = 128,
        samples: int = 1,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> None:
        if metric not in _SIMILARITIES:
            raise ScorerError(f"metric must be one of {sorted(_SIMILARITIES)}, got {metric!r}")
        if int(max_tokens) < 1:
            raise ScorerError("max_tokens must be at least 1")
        if int(samples) < 1:
            raise ScorerError("samples must be at least 1")
        if int(samples) > 1 and not temperature > 0:
            raise ScorerError("samples > 1 at temperature 0 repeat one answer; set temperature > 0")
        if not temperature >= 0:
            raise ScorerError(f"temperature must be >= 0, got {temperature}")
        if any(not isinstance(x, str) or not x for x in stop):
            raise ScorerError(f"stop sequences must be non-empty strings, got {tuple(stop)!r}")
        self.metric, self.max_tokens = metric, int(max_tokens)
        self.samples, self.temperature = int(samples), float(temperature)
        self.stop = tuple(stop)
        self._sim = _SIMILARITIES[metric]

    def reference_request(self, messages: Sequence[Message]) -> Request:
        return Request(tuple(messages), max_tokens=self.max_tokens, temperature=0.0, stop=self.stop)

    def accept_reference(self, completion: Completion) -> None:
        if not completion.text.strip():
            raise ScorerError("the reference answer is empty; nothing to compare against")
        if _truncated(completion):
            raise ScorerError(
                f"max_tokens={self.max_tokens} is too small: the reference answer was cut off after "
                f"{completion.usage.output_tokens} tokens (finish_reason={completion.finish_reasons[0]!r}); "
                "masked answers would be truncated and look dissimilar — raise max_tokens or add stop sequences"
            )

    def request(self, messages: Sequence[Message]) -> Request:
        return Request(
            tuple(messages), max_tokens=self.max_tokens, temperature=self.temperature, samples=self.samples,
            stop=self.stop,
        )

    def similarities(self, texts: Sequence[str], reference: str) -> np.ndarray:
        """Similarity of each text to the reference (subclasses batch this, e.g. one embedding pass)."""
        return np.array([self._sim(t, reference) for t in texts], dtype=float)

    def score(self, completion: Completion) -> float:
        return float(self.score_many([completion])[0])

    def score_many(self, completions: Sequence[Completion]) -> np.ndarray:
        """Mean similarity over each completion's samples, all texts compared in one `similarities` call."""
        reference = self._require_bound()
        if reference is None:  # needs_reference: _require_bound refuses an unbound reference
            raise ScorerError("bind the scorer with the reference answer before scoring")
        if any(not c.texts for c in completions):
            raise ScoringError("the completion has no answer text")
        sims = self.similarities([t for c in completions for t in c.texts], reference.text)
        ends = np.cumsum([len(c.texts) for c in completions])
        return np.array([sims[e - len(c.texts) : e].mean() for c, e in zip(completions, ends)], dtype=float)
