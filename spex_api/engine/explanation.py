"""The engine's result: a sparse Fourier surrogate of the value function plus how it was obtained.

An `Explanation` predicts the score of any mask, ranks interactions under any supported index
(computed over the sparse support only), and round-trips through JSON so a paid-for analysis is
never lost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypedDict

import numpy as np

from spex_api.engine.diagnostics import Diagnostics
from spex_api.engine.fourier import Key, SparseFourier
from spex_api.engine.indices import SparseMobius, canonical_index, fourier_to_mobius, interaction_index
from spex_api.engine.metadata import RunMetadata
from spex_api.engine.plan import Plan

FORMAT_VERSION = 1
# What a saved explanation may claim before anything is allocated for it: the report works per feature, and
# the Möbius transform visits every subset of every Fourier key (2^|key| each).
MAX_FEATURES = 1_000_000
MAX_SUBSETS = 2**22

# Our index names → shapiq's (shapiq has no Fourier index).
_SHAPIQ_INDEX = {
    "mobius": "Moebius",
    "banzhaf": "BV",
    "shapley": "SV",
    "bii": "BII",
    "sii": "SII",
    "k-sii": "k-SII",
    "fbii": "FBII",
    "fsii": "FSII",
    "stii": "STII",
}


class Interaction(NamedTuple):
    """One ranked interaction: feature indices, index value, feature names."""

    features: tuple[int, ...]
    value: float
    names: tuple[str, ...]


def _jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays, tuples and tuple-keyed dicts into plain, strict JSON values
    (NaN and ±Infinity become null: they are not JSON, and other parsers reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        if any(isinstance(k, tuple) for k in obj):
            return {"__tuple_keys__": [[list(k), _jsonable(v)] for k, v in obj.items()]}
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _jsonable(float(obj))
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return obj


def _unjsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple_keys__"}:
            return {tuple(k): _unjsonable(v) for k, v in obj["__tuple_keys__"]}
        return {k: _unjsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unjsonable(v) for v in obj]
    return obj


def _restore_plan(data: Any) -> Any:
    """Rebuild a Plan from its dict; a plan from another version keeps its fields as a dict."""
    if not isinstance(data, dict):
        return data
    try:
        return Plan.from_dict(data)
    except (TypeError, ValueError, KeyError):
        return data  # a plan from another version: keep its fields rather than lose the result


def _restore_metadata(data: Any) -> Any:
    """A run's metadata (it has the original answer) as a RunMetadata; any other dict as it was saved."""
    if isinstance(data, dict) and "original_answer" in data:
        try:
            return RunMetadata.from_dict(data)
        except (TypeError, ValueError):
            return data  # metadata from another version: keep its fields rather than lose the result
    return data


def _restore_diagnostics(data: Any, method: str) -> Diagnostics | None:
    """The saved Diagnostics; a malformed record is a ValueError naming it (an older file's dict: `legacy`)."""
    if not data:
        return None
    try:
        return Diagnostics.from_dict(_unjsonable(data), method)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"diagnostics record is malformed ({type(exc).__name__}: {exc})") from None


_FAITHFULNESS_KINDS = {"holdout_r2": "held-out R²", "cv_r2": "cross-validated R²", "all_masks": "R² on all masks"}


@dataclass(frozen=True)
class NoiseEstimate:
    """Repeat noise of the value function, measured by asking the same masks twice.

    noise_sd is the per-answer noise sd (sqrt of half the mean squared difference of the pairs);
    score_sd the sd of the scores over the explanation's masks; r2_ceiling = 1 − noise_sd²/score_sd²
    (clipped to [0, 1]) is the R² a perfect surrogate would reach against one noisy answer per mask.
    """

    n_pairs: int
    noise_sd: float
    score_sd: float
    r2_ceiling: float

    @classmethod
    def from_pairs(cls, first: np.ndarray, second: np.ndarray, scores: np.ndarray) -> "NoiseEstimate":
        """Estimate from two answers to the same masks and the scores the surrogate is judged on."""
        first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
        if first.shape != second.shape or first.ndim != 1 or first.size == 0:
            raise ValueError(f"need two equal, non-empty 1-d answer arrays, got {first.shape} and {second.shape}")
        noise_var = float(np.mean((first - second) ** 2) / 2.0)
        score_var = float(np.var(np.asarray(scores, dtype=float)))
        ceiling = 1.0 - noise_var / score_var if score_var > 0 else (1.0 if noise_var == 0 else 0.0)
        return cls(int(first.size), float(np.sqrt(noise_var)), float(np.sqrt(score_var)),
                   float(min(1.0, max(0.0, ceiling))))

    def share(self, r2: float | None) -> float | None:
        """A faithfulness R² as a share of the ceiling (None when either is unknown or the ceiling is 0)."""
        if r2 is None or self.r2_ceiling <= 0:
            return None
        return float(r2) / self.r2_ceiling

    def to_dict(self) -> dict[str, Any]:
        return {"n_pairs": self.n_pairs, "noise_sd": self.noise_sd, "score_sd": self.score_sd,
                "r2_ceiling": self.r2_ceiling}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseEstimate":
        return cls(int(data["n_pairs"]), float(data["noise_sd"]), float(data["score_sd"]),
                   float(data["r2_ceiling"]))


class RemovalStep(TypedDict):
    """One step of a removal check: the features masked so far, and the score change predicted and measured."""

    removed: list[int]
    predicted: float
    measured: float


@dataclass(frozen=True)
class RemovalCheck:
    """Verified removal (Rem(r)): the model re-asked with the top-1..r features masked.

    Features are ranked by the explanation's own `ranking_index` (largest value first, i.e. the
    features that raise the score most); step j masks the top j+1 of them, all others kept. predicted
    and measured are changes of score relative to the full prompt (all features kept): surrogate vs
    the model's actual answer.
    """

    ranking_index: str
    steps: list[RemovalStep]

    def to_dict(self) -> dict[str, Any]:
        return {"ranking_index": self.ranking_index,
                "steps": [{"removed": [int(i) for i in s["removed"]], "predicted": float(s["predicted"]),
                           "measured": float(s["measured"])} for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RemovalCheck":
        steps = [RemovalStep(removed=[int(i) for i in s["removed"]], predicted=float(s["predicted"]),
                             measured=float(s["measured"])) for s in data["steps"]]
        return cls(str(data["ranking_index"]), steps)


def _show(value: Any) -> str:
    text = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_num(v: Any) -> bool:
    """A JSON number that is a float (JSON integers are unbounded; a float holds at most ~1.8e308)."""
    return isinstance(v, float) or (_is_int(v) and abs(v) < 2**1023)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(ok: bool, field_name: str, what: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"{field_name} must be {what}, got {_show(got)}")


_META_TYPES: dict[str, tuple[type | Callable[[Any], bool], str]] = {  # metadata fields the reports read, and the JSON types they must have
    **dict.fromkeys(("original_answer", "text", "provider", "model", "scorer", "base_url", "granularity"),
                    (str, "a string")),
    **dict.fromkeys(("original_score", "estimated_cost"), (_is_num, "a number")),
    "budget": (_is_int, "an integer"),
}


def _check_saved(data: Any) -> None:
    """Types and sizes of a saved explanation, checked before anything is built from it (hostile files included)."""
    _need(isinstance(data, dict), "a saved explanation", "a JSON object", data)
    version = data.get("format_version", FORMAT_VERSION)
    _need(_is_int(version), "format_version", "an integer", version)
    if version > FORMAT_VERSION:
        raise ValueError(f"explanation format {version} is newer than this spex-api ({FORMAT_VERSION})")
    n = data.get("n")
    _need(_is_int(n) and 1 <= n <= MAX_FEATURES, "n", f"an integer number of features in [1, {MAX_FEATURES:,}]", n)
    _need(isinstance(data.get("method"), str), "method", "a string", data.get("method"))
    q = data.get("queries_used")
    _need(_is_int(q) and q >= 0, "queries_used", "an integer >= 0", q)
    four = data.get("fourier")
    _need(isinstance(four, dict) and isinstance(four.get("keys"), list) and isinstance(four.get("values"), list)
          and len(four["keys"]) == len(four["values"]), "fourier", "{keys: [...], values: [...]} of equal length",
          four)
    subsets = 0
    for key in four["keys"]:
        _need(isinstance(key, list) and all(_is_int(i) and 0 <= i < n for i in key), "each fourier key",
              f"a list of feature indices in [0, {n})", key)
        subsets += 2 ** min(len(key), 64)
    if subsets > MAX_SUBSETS:
        raise ValueError(f"the fourier keys span {subsets:,} subsets (at most {MAX_SUBSETS:,}): not an explanation "
                         "this version can rank")
    _need(all(v is None or _is_num(v) for v in four["values"]), "fourier values", "numbers", four["values"])
    for name in ("faithfulness", "cost"):
        _need(data.get(name) is None or _is_num(data[name]), name, "a number or null", data.get(name))
    names = data.get("feature_names")
    _need(names is None or (isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names)),
          "feature_names", f"null or a list of {n} strings", names)
    for name in ("metadata", "diagnostics", "faithfulness_detail", "noise", "removal"):
        _need(data.get(name) is None or isinstance(data[name], dict), name, "an object or null", data.get(name))
    meta = data.get("metadata") or {}
    for name, (kind, what) in _META_TYPES.items():
        v = meta.get(name)
        _need(v is None or (isinstance(v, kind) if isinstance(kind, type) else kind(v)), f"metadata.{name}",
              f"{what} or null", v)
    texts = meta.get("feature_texts")
    _need(texts is None or (isinstance(texts, list) and all(isinstance(t, str) for t in texts)),
          "metadata.feature_texts", "null or a list of strings", texts)
    spans = meta.get("feature_spans")
    _need(spans is None or (isinstance(spans, list) and all(
        isinstance(s, list) and len(s) == 2 and all(_is_int(i) and i >= 0 for i in s) for s in spans)),
        "metadata.feature_spans", "null or a list of [start, end] character offsets", spans)
    labels = meta.get("labels")
    _need(labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
          "metadata.labels", "null or a list of strings", labels)


@dataclass
class Explanation:
    """Sparse Fourier explanation of a value function, with provenance and faithfulness."""

    fourier: SparseFourier
    method: str
    queries_used: int
    plan: Any = None
    faithfulness: float | None = None
    faithfulness_detail: dict = field(default_factory=dict)
    feature_names: list[str] | None = None
    cost: float | None = None
    metadata: RunMetadata | dict[str, Any] = field(default_factory=dict)  # RunMetadata for runs on a model
    diagnostics: Diagnostics | None = None  # how the fit was obtained (every estimator records one)
    noise: NoiseEstimate | None = None
    removal: RemovalCheck | None = None

    def __post_init__(self) -> None:
        if self.feature_names is not None:
            self.feature_names = [str(name) for name in self.feature_names]
            if len(self.feature_names) != self.fourier.n:
                raise ValueError(f"{len(self.feature_names)} feature names for n={self.fourier.n} features")
        self._mobius: SparseMobius | None = None
        self._index_cache: dict[tuple[str, int | None], dict[Key, float]] = {}

    @property
    def n(self) -> int:
        return self.fourier.n

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Surrogate score of each mask (rows of a (N, n) bool array, True = kept)."""
        return self.fourier.predict(masks)

    @property
    def mobius(self) -> SparseMobius:
        """Möbius coefficients over every subset of the Fourier support."""
        if self._mobius is None:
            self._mobius = fourier_to_mobius(self.fourier)
        return self._mobius

    def values(self, index: str = "fourier", order: int | None = None) -> dict[Key, float]:
        """All values of `index` (including the empty-set baseline where defined) as {tuple: value}."""
        key = (canonical_index(index), order)
        if key not in self._index_cache:
            self._index_cache[key] = interaction_index(self.fourier, key[0], order)
        return dict(self._index_cache[key])

    def _names(self, features: tuple[int, ...]) -> tuple[str, ...]:
        if self.feature_names is None:
            return tuple(f"x{i}" for i in features)
        return tuple(self.feature_names[i] for i in features)

    def interactions(
        self, index: str = "fourier", order: int | None = None, include_empty: bool = False
    ) -> list[Interaction]:
        """Interactions under `index` ranked by |value| (ties: lower order, then feature indices).

        `order` is the index's order for k-sii/fbii/fsii/stii and the largest order shown otherwise
        (see spex_api.engine.indices.interaction_index). The empty set (a baseline, not an interaction) is
        left out unless include_empty.
        """
        table = self.values(index, order)
        items = [(k, v) for k, v in table.items() if include_empty or k]
        items.sort(key=lambda kv: (-abs(kv[1]), len(kv[0]), kv[0]))
        return [Interaction(k, float(v), self._names(k)) for k, v in items]

    def top(self, k: int = 10, index: str = "fourier", order: int | None = None) -> list[Interaction]:
        """The k largest interactions under `index`."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return self.interactions(index, order)[:k]

    @property
    def faithfulness_kind(self) -> str:
        """How `faithfulness` was measured: on a held-out slice, out of fold, or on every mask (exact)."""
        criterion = self.faithfulness_detail.get("criterion")
        return _FAITHFULNESS_KINDS.get(criterion, "held-out R²") if isinstance(criterion, str) else "held-out R²"

    def summary(self, k: int = 10, index: str = "fourier") -> str:
        """Short human-readable report: method, queries, faithfulness and the top interactions."""
        faith = "n/a" if self.faithfulness is None else f"{self.faithfulness:.3f}"
        lines = [
            f"{self.method} explanation of {self.n} features: {len(self.fourier)} Fourier coefficients "
            f"(degree {self.fourier.degree}), {self.queries_used} queries, {self.faithfulness_kind} {faith}"
            + ("" if self.cost is None else f", cost ${self.cost:.4f}"),
        ]
        if self.noise is not None:
            share = self.faithfulness_share
            lines.append(
                f"repeat noise sd {self.noise.noise_sd:.3g} vs score sd {self.noise.score_sd:.3g} "
                f"({self.noise.n_pairs} repeated masks): R² ceiling {self.noise.r2_ceiling:.3f}"
                + ("" if share is None else f", faithfulness {share:.0%} of it")
            )
        lines.append(f"top {k} by {canonical_index(index)}:")
        for item in self.top(k, index):
            lines.append(f"  {item.value:+.4f}  {' × '.join(item.names)}")
        if self.removal is not None:
            lines.append(f"removal check (top features by {self.removal.ranking_index} masked):")
            for step in self.removal.steps:
                names = ", ".join(self._names(tuple(step["removed"][-1:])))
                lines.append(f"  -{len(step['removed'])} (+{names}): predicted {step['predicted']:+.4f}, "
                             f"measured {step['measured']:+.4f}")
        return "\n".join(lines)

    @property
    def faithfulness_share(self) -> float | None:
        """Faithfulness as a share of the measured noise ceiling (None without a noise estimate)."""
        return None if self.noise is None else self.noise.share(self.faithfulness)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (keys as lists)."""
        plan = self.plan
        if plan is not None and hasattr(plan, "to_dict"):
            plan = plan.to_dict()
        return {
            "format_version": FORMAT_VERSION,
            "n": self.n,
            "method": self.method,
            "queries_used": int(self.queries_used),
            "fourier": {
                "keys": [list(k) for k in self.fourier.keys],
                "values": _jsonable(self.fourier.values.tolist()),  # a non-finite coefficient: null
            },
            "plan": _jsonable(plan),
            "faithfulness": None if self.faithfulness is None else _jsonable(float(self.faithfulness)),
            "faithfulness_detail": _jsonable(self.faithfulness_detail),
            "feature_names": self.feature_names,
            "cost": None if self.cost is None else _jsonable(float(self.cost)),
            "metadata": _jsonable(self.metadata),
            "diagnostics": _jsonable(self.diagnostics),
            "noise": _jsonable(self.noise),
            "removal": _jsonable(self.removal),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        """Rebuild a saved explanation; anything malformed or oversized is a ValueError naming the field."""
        _check_saved(data)
        coefficients = data["fourier"]
        values = np.array([math.nan if v is None else v for v in coefficients["values"]], dtype=float)
        fourier = SparseFourier(int(data["n"]), [tuple(k) for k in coefficients["keys"]], values)
        try:
            noise = None if data.get("noise") is None else NoiseEstimate.from_dict(data["noise"])
            removal = None if data.get("removal") is None else RemovalCheck.from_dict(data["removal"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"noise/removal record is malformed ({type(exc).__name__}: {exc})") from None
        return cls(
            fourier=fourier,
            method=data["method"],
            queries_used=int(data["queries_used"]),
            plan=_restore_plan(_unjsonable(data.get("plan"))),
            faithfulness=data.get("faithfulness"),
            faithfulness_detail=_unjsonable(data.get("faithfulness_detail") or {}),
            feature_names=data.get("feature_names"),
            cost=data.get("cost"),
            metadata=_restore_metadata(_unjsonable(data.get("metadata") or {})),
            diagnostics=_restore_diagnostics(data.get("diagnostics"), data["method"]),
            noise=noise,
            removal=removal,
        )

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no NaN or Infinity: non-finite numbers are written as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the JSON form to path (atomically: a crash never leaves a half-written file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- interop -------------------------------------------------------------------------------

    def to_shapiq(self, index: str = "k-SII", order: int | None = None):
        """The interactions as shapiq.InteractionValues (only the sparse support is listed)."""
        try:
            from shapiq import InteractionValues
        except ImportError as exc:
            raise ImportError("to_shapiq needs shapiq: pip install shapiq") from exc
        name = canonical_index(index)
        if name not in _SHAPIQ_INDEX:
            raise ValueError(f"shapiq has no {name!r} index; choose one of {', '.join(_SHAPIQ_INDEX)}")
        table = self.values(name, order)
        max_order = 1 if name in ("banzhaf", "shapley") else max(
            (len(k) for k in table), default=1
        )
        if order is not None:
            max_order = int(order)
        baseline = float(self.fourier.predict(np.zeros((1, self.n), dtype=bool))[0])
        if name in ("mobius", "shapley", "k-sii", "fsii", "stii"):
            table.setdefault((), baseline)
        keys = list(table)
        lookup = {k: i for i, k in enumerate(keys)}
        return InteractionValues(
            np.array([table[k] for k in keys], dtype=float),
            index=_SHAPIQ_INDEX[name],
            max_order=max(max_order, 1),
            n_players=self.n,
            min_order=0 if () in table else 1,
            interaction_lookup=lookup,
            estimated=True,
            estimation_budget=int(self.queries_used),
            baseline_value=baseline,
        )
