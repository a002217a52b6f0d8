"""Masked prompts: fixed instructions plus maskable content split into named features.

A `MaskedPrompt` is a list of chat messages whose contents are sequences of *slots*: fixed text or a
feature. Each feature owns its text and the whitespace that follows it, so a masked feature is either
dropped whole (``mask_style="remove"``) or replaced by ``placeholder`` plus that whitespace
(``mask_style="placeholder"``). Consecutive masked features each get their own placeholder
(``"the [UNK] [UNK] sat"``): the model sees how much was hidden, and every mask maps to one rendering.
With ``remove``, text outside features (template, gaps between spans) stays as is, so removing the last
word can leave the previous word's trailing space.

Masks follow the engine contract: a boolean vector of length ``n_features``, True = feature kept.
Rendering many masks is vectorised (one ``np.where`` over an object matrix, one join per row).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence, cast

import numpy as np

from providers.types import Message
from spex_api.engine.masks import as_masks

Granularity = Literal["words", "sentences", "paragraphs", "whole"]
MaskStyle = Literal["placeholder", "remove"]

_SPLITTERS: dict[str, re.Pattern[str]] = {
    # A feature = the unit plus the whitespace after it; leading whitespace stays fixed.
    "words": re.compile(r"\S+\s*"),
    # A sentence ends at . ! ? (optionally followed by closing quotes/brackets) and then whitespace, or at a
    # blank line. Deliberately simple and dependency-free; pass spans for anything smarter.
    "sentences": re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s|$)|(?=\n\s*\n)|$)\s*", re.S),
    "paragraphs": re.compile(r"\S.*?(?:(?=\n[ \t]*\n)|$)\s*", re.S),
    "whole": re.compile(r"\S.*", re.S),
}
_NAME_CHARS = 32


class PromptError(ValueError):
    """Bad prompt or mask, raised before any query is spent."""


@dataclass(frozen=True)
class Feature:
    """One maskable unit: its report name, its text (without trailing whitespace) and where it sits."""

    index: int
    name: str
    text: str
    message: int  # index of the message that holds it
    start: int  # character offsets inside that message's unmasked content
    end: int


@dataclass(frozen=True)
class Maskable:
    """A maskable segment inside a message built with `MaskedPrompt.from_messages`.

    ``granularity="whole"`` makes the segment one feature (e.g. a retrieved document) named ``name``.
    """

    text: str
    granularity: Granularity = "words"
    name: str | None = None


def _split(text: str, granularity: str) -> list[tuple[int, int, int]]:
    """(start, end_of_unit, end_with_whitespace) for each unit of `text`."""
    if granularity not in _SPLITTERS:
        raise PromptError(f"unknown granularity {granularity!r}; use one of {sorted(_SPLITTERS)}")
    out = []
    for m in _SPLITTERS[granularity].finditer(text):
        unit = m.group(0)
        stripped = unit.rstrip()
        if stripped:
            out.append((m.start(), m.start() + len(stripped), m.end()))
    return out


def _base_name(text: str, granularity: str) -> str:
    """Readable name: a word without surrounding punctuation; longer units cut to ~32 characters."""
    if granularity == "words":
        core = text.strip("\"'`.,;:!?()[]{}<>")
        return core or text
    flat = " ".join(text.split())
    return flat if len(flat) <= _NAME_CHARS else flat[: _NAME_CHARS - 1].rstrip() + "…"


def _disambiguate(names: Sequence[str]) -> list[str]:
    """Repeated names get #2, #3, ... in order of appearance ("bank", "bank#2"); the first keeps its name."""
    totals = Counter(names)
    seen: Counter[str] = Counter()
    used = set(names)
    out = []
    for name in names:
        seen[name] += 1
        if totals[name] == 1 or seen[name] == 1:
            out.append(name)
            continue
        k = seen[name]
        candidate = f"{name}#{k}"
        while candidate in used:
            k += 1
            candidate = f"{name}#{k}"
        used.add(candidate)
        out.append(candidate)
    return out


class MaskedPrompt:
    """Chat messages with maskable features; renders a mask (True = kept) to messages.

    Build with `from_text`, `from_spans` or `from_messages`. Attributes: ``n_features``, ``features``,
    ``feature_names``, ``mask_style``, ``placeholder``.
    """

    def __init__(
        self,
        roles: Sequence[str],
        slots: Sequence[Sequence[str | int]],
        features: Sequence[Feature],
        feature_texts: Sequence[str],
        mask_style: MaskStyle = "placeholder",
        placeholder: str = "[UNK]",
    ) -> None:
        """Low-level constructor: per message, a slot list of fixed strings and feature indices.

        ``feature_texts[i]`` is feature i's text including its trailing whitespace.
        Prefer the ``from_*`` constructors.
        """
        if mask_style not in ("placeholder", "remove"):
            raise PromptError(f"mask_style must be 'placeholder' or 'remove', got {mask_style!r}")
        if not isinstance(placeholder, str):
            raise PromptError("placeholder must be a string")
        if len(roles) != len(slots):
            raise PromptError("one slot list per message is required")
        if not roles:
            raise PromptError("a prompt needs at least one message")
        if not features:
            raise PromptError("the prompt has zero maskable features: nothing to explain")
        if "".join(feature_texts).strip() == "":
            raise PromptError("all maskable content is empty")
        used = sorted(s for msg in slots for s in msg if isinstance(s, (int, np.integer)))
        if used != list(range(len(features))):
            raise PromptError("each feature must appear exactly once in the slots")
        self.mask_style: MaskStyle = mask_style
        self.placeholder = placeholder
        self.roles: tuple[str, ...] = tuple(roles)
        self._slots = tuple(tuple(s) for s in slots)
        self.features: tuple[Feature, ...] = tuple(features)
        self._kept = np.array(list(feature_texts), dtype=object)
        trailing = [t[len(t.rstrip()):] for t in feature_texts]
        masked = [placeholder + w if mask_style == "placeholder" else "" for w in trailing]
        self._masked = np.array(masked, dtype=object)
        # Per message: constant text, or fixed strings and runs (a, b) of consecutive feature columns.
        self._plans: list[str | list[str | tuple[int, int]]] = []
        for msg in self._slots:
            plan: list[str | tuple[int, int]] = []
            for item in msg:
                if isinstance(item, str):
                    last = plan[-1] if plan else None
                    if item and isinstance(last, str):
                        plan[-1] = last + item  # adjacent fixed text joins into one piece
                    elif item:
                        plan.append(item)
                elif plan and isinstance(plan[-1], tuple) and plan[-1][1] == int(item):
                    plan[-1] = (plan[-1][0], int(item) + 1)
                else:
                    plan.append((int(item), int(item) + 1))
            self._plans.append("".join(plan) if all(isinstance(p, str) for p in plan) else plan)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_text(
        cls,
        text: str,
        granularity: Granularity = "words",
        template: str | None = None,
        system: str | None = None,
        mask_style: MaskStyle = "placeholder",
        placeholder: str = "[UNK]",
    ) -> "MaskedPrompt":
        """Split `text` into features by words, sentences or paragraphs.

        ``template`` holds the fixed parts (instructions, question) with one ``{content}`` where the
        maskable text goes, e.g. ``"Review: {content}\\nIs it positive? Answer True or False."``.
        ``system`` adds a fixed system message.
        """
        if not isinstance(text, str) or not text.strip():
            raise PromptError("empty prompt: text has no content to mask")
        units = _split(text, granularity)
        spans = [(a, c) for a, _, c in units]
        return cls._from_char_spans(text, spans, None, granularity, template, system, mask_style, placeholder)

    @classmethod
    def from_spans(
        cls,
        text: str,
        spans: Sequence[tuple[int, int]],
        names: Sequence[str] | None = None,
        template: str | None = None,
        system: str | None = None,
        mask_style: MaskStyle = "placeholder",
        placeholder: str = "[UNK]",
    ) -> "MaskedPrompt":
        """Caller-chosen features: sorted, non-overlapping character spans of `text`; the rest stays fixed."""
        if not isinstance(text, str) or not text.strip():
            raise PromptError("empty prompt: text has no content to mask")
        spans = [(int(a), int(b)) for a, b in spans]
        if not spans:
            raise PromptError("zero spans given: nothing to explain")
        prev = 0
        for a, b in spans:
            if not (prev <= a < b <= len(text)):
                raise PromptError(f"span ({a}, {b}) is empty, out of range, unsorted or overlapping")
            prev = b
        if names is not None and len(names) != len(spans):
            raise PromptError(f"{len(names)} names for {len(spans)} spans")
        return cls._from_char_spans(text, spans, names, "spans", template, system, mask_style, placeholder)

    @classmethod
    def _from_char_spans(
        cls,
        text: str,
        spans: Sequence[tuple[int, int]],
        names: Sequence[str] | None,
        granularity: str,
        template: str | None,
        system: str | None,
        mask_style: MaskStyle,
        placeholder: str,
    ) -> "MaskedPrompt":
        before, after = _split_template(template)
        roles: list[str] = []
        slots: list[list[str | int]] = []
        if system is not None:
            roles.append("system")
            slots.append([system])
        msg = len(roles)
        body: list[str | int] = [before]
        feats: list[tuple[int, int, int, str]] = []
        texts: list[str] = []
        base: list[str] = []
        _add_features(body, text, spans, granularity, msg, len(before), None, feats, texts, base)
        body.append(after)
        roles.append("user")
        slots.append(body)
        final = _disambiguate(list(names) if names is not None else base)
        features = [Feature(i, final[i], t, m, s, e) for i, (m, s, e, t) in enumerate(feats)]
        return cls(roles, slots, features, texts, mask_style, placeholder)

    @classmethod
    def from_messages(
        cls,
        messages: Iterable[Message | dict[str, Any]],
        maskable: Iterable[int] = (),
        granularity: Granularity = "words",
        mask_style: MaskStyle = "placeholder",
        placeholder: str = "[UNK]",
    ) -> "MaskedPrompt":
        """A chat where only marked messages or segments are maskable.

        A message is maskable when its index is in ``maskable`` or its dict has ``"maskable": True``
        (split by ``granularity``). Alternatively its content may be a list of plain strings (fixed) and
        `Maskable` segments, each split by its own granularity. Everything else is fixed.
        """
        roles: list[str] = []
        slots: list[list[str | int]] = []
        feats: list[tuple[int, int, int, str]] = []
        texts: list[str] = []
        base: list[str] = []
        marked = set(int(i) for i in maskable)
        msgs = list(messages)
        if not msgs:
            raise PromptError("empty prompt: no messages")
        for mi, m in enumerate(msgs):
            role: Any
            content: Any
            if isinstance(m, Message):
                role, content, flag = m.role, m.content, False
            elif isinstance(m, dict):
                role, content, flag = m.get("role"), m.get("content"), bool(m.get("maskable", False))
            else:
                raise PromptError(f"message {mi} must be a Message or a dict, got {type(m).__name__}")
            if role not in ("system", "user", "assistant"):
                raise PromptError(f"message {mi} has role {role!r}; use system, user or assistant")
            if isinstance(content, str):
                segments: list[str | Maskable] = [Maskable(content, granularity)] if (flag or mi in marked) else [content]
            elif isinstance(content, (list, tuple)):
                segments = list(content)
            else:
                raise PromptError(f"message {mi} content must be a string or a list of strings/Maskable")
            body: list[str | int] = []
            offset = 0
            for seg in segments:
                if isinstance(seg, str):
                    body.append(seg)
                    offset += len(seg)
                    continue
                if not isinstance(seg, Maskable):
                    raise PromptError(f"message {mi}: segment {seg!r} is neither a string nor Maskable")
                units = [(a, c) for a, _, c in _split(seg.text, seg.granularity)]
                names = [seg.name] if seg.granularity == "whole" and seg.name and units else None
                _add_features(body, seg.text, units, seg.granularity, mi, offset, names, feats, texts, base)
                offset += len(seg.text)
            roles.append(role)
            slots.append(body)
        if bad := marked - set(range(len(msgs))):
            raise PromptError(f"maskable indices {sorted(bad)} are not messages (0..{len(msgs) - 1})")
        if not feats:
            raise PromptError("the prompt has zero maskable features: mark a message or add Maskable segments")
        final = _disambiguate(base)
        features = [Feature(i, final[i], t, m, s, e) for i, (m, s, e, t) in enumerate(feats)]
        return cls(roles, slots, features, texts, mask_style, placeholder)

    # ------------------------------------------------------------------ properties
    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def __repr__(self) -> str:
        return (
            f"MaskedPrompt(n_features={self.n_features}, messages={len(self.roles)}, "
            f"mask_style={self.mask_style!r}, placeholder={self.placeholder!r})"
        )

    # ------------------------------------------------------------------ rendering
    def _check(self, masks: Any) -> np.ndarray:
        return as_masks(masks, self.n_features, PromptError)

    def render_many(self, masks: Any) -> list[tuple[Message, ...]]:
        """Render an (N, n) mask matrix to N message tuples; vectorised over masks."""
        m = self._check(masks)
        rows = np.where(m, self._kept[None, :], self._masked[None, :]).tolist()  # (N, n) texts
        per_message: list[list[str]] = []
        for plan in self._plans:
            if isinstance(plan, str):
                per_message.append([plan] * len(rows))
            elif len(plan) <= 3 and sum(isinstance(p, tuple) for p in plan) == 1:  # [pre,] run [, post]
                k = next(i for i, p in enumerate(plan) if isinstance(p, tuple))
                pre, post = "".join(plan[:k]), "".join(plan[k + 1 :])  # type: ignore[arg-type]
                a, b = cast("tuple[int, int]", plan[k])
                per_message.append([pre + "".join(r[a:b]) + post for r in rows])
            else:
                per_message.append(
                    ["".join([p if isinstance(p, str) else "".join(r[p[0] : p[1]]) for p in plan]) for r in rows]
                )
        return [
            tuple(Message(role, contents[i]) for role, contents in zip(self.roles, per_message))
            for i in range(len(rows))
        ]

    def render(self, mask: Any) -> tuple[Message, ...]:
        """Messages for one mask (True = feature kept)."""
        m = self._check(mask)
        if len(m) != 1:
            raise PromptError("render takes one mask; use render_many for a batch")
        return self.render_many(m)[0]

    def render_text(self, mask: Any) -> str:
        """The rendered message contents joined by blank lines (for one user message: exactly its content)."""
        return "\n\n".join(msg.content for msg in self.render(mask))

    def full_mask(self) -> np.ndarray:
        """The all-kept mask (renders the original prompt)."""
        return np.ones(self.n_features, dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for reports: the original messages and the features."""
        return {
            "messages": [{"role": m.role, "content": m.content} for m in self.render(self.full_mask())],
            "features": [
                {"index": f.index, "name": f.name, "text": f.text, "message": f.message, "start": f.start, "end": f.end}
                for f in self.features
            ],
            "mask_style": self.mask_style,
            "placeholder": self.placeholder,
        }


def _add_features(
    body: list[str | int],
    text: str,
    spans: Sequence[tuple[int, int]],
    granularity: str,
    message: int,
    offset: int,
    names: Sequence[str] | None,
    feats: list[tuple[int, int, int, str]],
    texts: list[str],
    base: list[str],
) -> None:
    """Append `text` to a message's slot list: gaps between spans fixed, each span a new feature."""
    pos = 0
    for k, (a, b) in enumerate(spans):
        if a > pos:
            body.append(text[pos:a])
        piece = text[a:b]
        stripped = piece.rstrip()
        if not stripped.strip():
            raise PromptError(f"span ({a}, {b}) holds only whitespace")
        body.append(len(feats))
        feats.append((message, offset + a, offset + a + len(stripped), stripped))
        texts.append(piece)
        base.append(names[k] if names is not None else _base_name(stripped, granularity))
        pos = b
    if pos < len(text):
        body.append(text[pos:])


def _split_template(template: str | None) -> tuple[str, str]:
    """Fixed text before and after ``{content}``; the template must contain it exactly once."""
    if template is None:
        return "", ""
    if not isinstance(template, str) or template.count("{content}") != 1:
        raise PromptError("template must contain '{content}' exactly once (where the maskable text goes)")
    before, after = template.split("{content}")
    return before, after
