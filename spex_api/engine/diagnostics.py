"""How a fit was obtained: one typed record for every estimator (a leaf module).

`Diagnostics` holds what every method reports (answers used, coefficients, R² and CV error, timing, the
chosen hyper-parameters, why this fit was returned) and, in `details`, what only one algorithm has (SPEX's
design and peeling, ProxySPEX's LightGBM grid and refit gate, the hierarchical Lasso's stages). The
Explainer returns the chosen fit's record with the fits it was compared against in `others`. It
serialises to a plain JSON dict and back (`to_dict` / `from_dict`); a dict saved by a version before this
record is kept as saved in `legacy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Union

from spex_api.engine.metadata import Fields


def _num(value: Any) -> float | None:
    """A JSON number as float; null (how non-finite numbers are saved) and absence as None."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class SpexRefit(Fields):
    """SPEX's least-squares refit over support + {} + singletons, screened by a CV'd |t| threshold z."""

    candidates: int
    all_singletons: bool
    z: float
    cv_mse_by_z: dict[str, float]
    peeled_train_mse: float
    kept: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpexRefit":
        return cls(int(data["candidates"]), bool(data["all_singletons"]), float(data["z"]),
                   {str(k): float(v) for k, v in data["cv_mse_by_z"].items()}, float(data["peeled_train_mse"]),
                   int(data["kept"]))


@dataclass(frozen=True)
class SpexDetails(Fields):
    """SPEX's design (b, t, parity length P, groups, bins), its masks, and how peeling went."""

    b: int
    t: int
    P: int
    n_groups: int
    bins: int
    design_size: int  # rows of the design before de-duplication (rows_used counts the distinct ones)
    decoder: str
    peeling_rounds: int
    decode_attempts: int
    bin_noise_sd: float | None
    decoded: int
    cpu_seconds_engine: float | None = None  # cpu_seconds less the time spent answering queries
    refit: SpexRefit | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpexDetails":
        refit = data.get("refit")
        return cls(b=int(data["b"]), t=int(data["t"]), P=int(data["P"]), n_groups=int(data["n_groups"]),
                   bins=int(data["bins"]), design_size=int(data["design_size"]), decoder=str(data["decoder"]),
                   peeling_rounds=int(data["peeling_rounds"]), decode_attempts=int(data["decode_attempts"]),
                   bin_noise_sd=_num(data.get("bin_noise_sd")), decoded=int(data["decoded"]),
                   cpu_seconds_engine=_num(data.get("cpu_seconds_engine")),
                   refit=None if refit is None else SpexRefit.from_dict(refit))


@dataclass(frozen=True)
class GridPoint(Fields):
    """One LightGBM configuration of ProxySPEX's search: rounds by early stopping, and its CV error."""

    max_depth: int
    learning_rate: float
    rounds: int
    cv_mse: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GridPoint":
        return cls(int(data["max_depth"]), float(data["learning_rate"]), int(data["rounds"]), float(data["cv_mse"]))


@dataclass(frozen=True)
class ResidualPass(Fields):
    """One candidate pass of ProxySPEX's refit (a tree on the residual, or hierarchical growth): terms
    offered, the refit's CV error with them, and whether they stayed."""

    new_terms: int
    cv_mse: float
    kept: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResidualPass":
        return cls(int(data["new_terms"]), float(data["cv_mse"]), bool(data["kept"]))


@dataclass(frozen=True)
class ProxyRefit(Fields):
    """ProxySPEX's Lasso refit on the selected candidates and the gate that keeps it (used) or not."""

    used: bool
    cv_mse: float
    oof_mse: float  # the error the gate compares with the proxy's (out of fold when the folds cover every answer)
    alpha: float
    n_nonzero: int
    residual_passes: tuple[ResidualPass, ...] = ()
    growth: tuple[ResidualPass, ...] = ()  # hierarchical growth rounds (grow_candidates), after the residual passes
    screen_z: float | None = None  # |t| threshold of the least-squares screen replacing the Lasso (None: no screen)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxyRefit":
        return cls(bool(data["used"]), float(data["cv_mse"]), float(data["oof_mse"]), float(data["alpha"]),
                   int(data["n_nonzero"]), tuple(ResidualPass.from_dict(p) for p in data.get("residual_passes", ())),
                   tuple(ResidualPass.from_dict(p) for p in data.get("growth", ())), _num(data.get("screen_z")))


@dataclass(frozen=True)
class ProxySpexDetails(Fields):
    """ProxySPEX's LightGBM search, the terms extracted per depth, the candidates and the refit gate."""

    grid: tuple[GridPoint, ...]
    n_extracted: dict[int, int]  # tree depth -> Fourier terms extracted from that depth's full-data model
    n_candidates: int
    lightgbm_seed: int
    refit: ProxyRefit | None = None  # None when refit=False or there was no candidate
    cpu_seconds_by_stage: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxySpexDetails":
        refit = data.get("refit")
        return cls(tuple(GridPoint.from_dict(g) for g in data["grid"]),
                   {int(k): int(v) for k, v in data["n_extracted"].items()}, int(data["n_candidates"]),
                   int(data["lightgbm_seed"]), None if refit is None else ProxyRefit.from_dict(refit),
                   {str(k): float(v) for k, v in data.get("cpu_seconds_by_stage", {}).items()})


@dataclass(frozen=True)
class LassoStage(Fields):
    """One stage of the hierarchical Lasso: the order offered, how many columns, its CV error, kept or not."""

    order: int
    columns: int
    cv_mse: float
    kept: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LassoStage":
        return cls(int(data["order"]), int(data["columns"]), float(data["cv_mse"]), bool(data["kept"]))


@dataclass(frozen=True)
class HierarchicalDetails(Fields):
    """The hierarchical Lasso's stages (main effects, pairs, triples), in the order they were tried."""

    stages: tuple[LassoStage, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HierarchicalDetails":
        return cls(tuple(LassoStage.from_dict(s) for s in data.get("stages", ())))


@dataclass(frozen=True)
class NeighbourDetails(Fields):
    """The neighbour-pair Lasso's chosen window and the cross-validated error of every width tried (0: none)."""

    window: int
    cv_mse_by_window: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NeighbourDetails":
        return cls(int(data["window"]), {int(k): float(v) for k, v in data.get("cv_mse_by_window", {}).items()})


Details = Union[SpexDetails, ProxySpexDetails, HierarchicalDetails, NeighbourDetails]
_DETAILS: dict[str, type[Details]] = {
    "spex": SpexDetails, "proxyspex": ProxySpexDetails, "hierarchical": HierarchicalDetails,
    "neighbours": NeighbourDetails}


@dataclass(frozen=True)
class Diagnostics(Fields):
    """How one fit was obtained (see the module doc).

    method: the estimator that made this fit ("spex", "proxyspex", "hierarchical", "neighbours", "kernel", "exhaustive",
        "linear").
    rows_used: distinct answers the fit rests on (SPEX: distinct design masks, asked now or earlier).
    n_coefficients: Fourier coefficients of the fit, the constant included.
    train_r2, cv_r2, cv_mse: on the answers it was fitted on; the CV figures where the method computes them
        (the chosen setting's cross-validated error: LightGBM proxy, SPEX refit, Lasso).
    cpu_seconds: CPU time of the fit (query_cpu_seconds: of asking its design; wall_seconds: both, wall clock).
    params: the hyper-parameters the method chose (ProxySPEX: max_depth, learning_rate, rounds; Lasso: alpha).
    fallback: "linear" when the Explainer returned the linear fit because interactions did not pay.
    reasons: why this fit was returned, in words (the Explainer's selection).
    others: the fits it was compared with on the same answers, by name (linear, the other families).
    details: what only this method reports; legacy: the fields of a record saved before this one existed.
    """

    method: str
    rows_used: int
    n_coefficients: int
    train_r2: float | None = None
    cv_r2: float | None = None
    cv_mse: float | None = None
    cpu_seconds: float | None = None
    query_cpu_seconds: float | None = None
    wall_seconds: float | None = None
    params: dict[str, float | int | str | None] = field(default_factory=dict)
    fallback: str | None = None
    reasons: tuple[str, ...] = ()
    others: dict[str, "Diagnostics"] = field(default_factory=dict)
    details: Details | None = None
    legacy: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], method: str = "unknown") -> "Diagnostics":
        """The record from its JSON dict (`method`: the explanation's, for a dict saved before this record)."""
        if "method" not in data or "rows_used" not in data:
            return cls._legacy(data, method)
        name = str(data["method"])
        details = data.get("details")
        kind = _DETAILS.get(name)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"diagnostics fields {sorted(unknown)} are not known to this version")
        return cls(
            method=name, rows_used=int(data["rows_used"]), n_coefficients=int(data["n_coefficients"]),
            train_r2=_num(data.get("train_r2")), cv_r2=_num(data.get("cv_r2")), cv_mse=_num(data.get("cv_mse")),
            cpu_seconds=_num(data.get("cpu_seconds")), query_cpu_seconds=_num(data.get("query_cpu_seconds")),
            wall_seconds=_num(data.get("wall_seconds")), params=dict(data.get("params") or {}),
            fallback=data.get("fallback"), reasons=tuple(str(r) for r in data.get("reasons") or ()),
            others={str(k): cls.from_dict(v, str(k)) for k, v in (data.get("others") or {}).items()},
            details=None if details is None or kind is None else kind.from_dict(details),
            legacy=data.get("legacy"),
        )

    @classmethod
    def _legacy(cls, data: Mapping[str, Any], method: str) -> "Diagnostics":
        """A per-algorithm dict saved before this record: the common figures it has under their old names, and
        every field as saved in `legacy` (nothing is lost)."""
        rows = next((data[k] for k in ("rows_used", "design_distinct", "n_samples", "n_masks") if k in data), 0)
        return cls(method=method, rows_used=int(rows), n_coefficients=int(data.get("n_coefficients", 0)),
                   train_r2=_num(data.get("train_r2")), cv_r2=_num(data.get("cv_r2")),
                   cpu_seconds=_num(data.get("cpu_seconds")), fallback=data.get("fallback"),
                   reasons=(str(data["note"]),) if "note" in data else (), legacy=dict(data))
