"""What a run through a model recorded beside the explanation: the original answer, the prompt, provenance.

`RunMetadata` is what `spex_api.explain` attaches as `Explanation.metadata` and what the reports read (typed
attributes). It also reads like the mapping it replaces (``expl.metadata["original_answer"]``) and serialises
to the same JSON keys, so saved explanations and existing scripts keep working. Fields are None when not
recorded (e.g. an explanation loaded from an older file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Fields:
    """A dataclass record that writes itself as a plain JSON dict (nested records and sequences included)."""

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self._names()}


class Record(Fields, Mapping[str, Any]):
    """Read-only mapping view of a dataclass's fields (``record["name"]``, ``.get``, ``in``, ``dict(record)``)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def _plain(value: Any) -> Any:
    if isinstance(value, Fields):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, eq=True)
class QueryStats(Record):
    """How one explanation's queries were served: sent to the model, from the disk cache, label bounds used."""

    queries_sent: int = 0
    cache_hits: int = 0
    bound_hits: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QueryStats":
        return cls(**{k: int(v) for k, v in data.items() if k in cls._names()})


@dataclass(frozen=True, eq=True)
class RunMetadata(Record):
    """The run behind an explanation of a model's answer (see the module doc)."""

    original_answer: str | None = None
    original_score: float | None = None
    prompt: tuple[dict[str, Any], ...] | None = None  # the messages sent, as {"role", "content"} dicts
    text: str | None = None  # the maskable messages joined; feature_spans index into it
    feature_texts: tuple[str, ...] | None = None
    feature_spans: tuple[tuple[int, int], ...] | None = None
    granularity: str | None = None
    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    scorer: str | None = None
    labels: tuple[str, ...] | None = None
    budget: int | None = None
    estimated_cost: float | None = None
    mode: str | None = None  # "interactive" or "batch" (provider Batch APIs)
    stats: QueryStats = field(default_factory=QueryStats)

    def __post_init__(self) -> None:
        # Sequences become tuples so the record stays immutable and compares equal after a JSON round trip.
        for name in ("prompt", "feature_texts", "labels"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.feature_spans is not None:
            object.__setattr__(self, "feature_spans", tuple((int(a), int(b)) for a, b in self.feature_spans))
        if isinstance(self.stats, Mapping) and not isinstance(self.stats, QueryStats):
            object.__setattr__(self, "stats", QueryStats.from_dict(self.stats))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunMetadata":
        """The record from its JSON dict; keys this version does not know are refused (TypeError)."""
        return cls(**data)

    @classmethod
    def of(cls, metadata: Mapping[str, Any] | None) -> "RunMetadata":
        """The record behind any explanation's metadata: itself, or the known keys of a plain dict."""
        if isinstance(metadata, RunMetadata):
            return metadata
        known = {k: v for k, v in (metadata or {}).items() if k in cls._names()}
        try:
            return cls(**known)
        except (TypeError, ValueError):
            return cls()
