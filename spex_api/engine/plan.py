"""The Plan record: what an explanation will spend, decided before any query (a leaf module).

Kept apart from the planner so that explanations can carry and restore a Plan without importing the
planner, which sizes designs for the algorithms that import explanations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Plan:
    """What an explanation will spend, decided before any query.

    method: "spex", "proxyspex" or "exhaustive" (resolved; `requested` keeps what the caller asked for).
    b, t: SPEX subsampling dimension and BCH correction capacity (None for ProxySPEX).
    n_queries: training queries (exact SPEX design size, or ProxySPEX's sample count).
    n_holdout: uniform random masks held out to measure faithfulness (0 = no measurement).
    total: n_queries + n_holdout + n_noise, the most queries the run can send (<= budget).
    n_noise: queries of the repeat-noise pilot (n_noise/2 uniform masks, each asked twice; 0 = no noise estimate).
    rounds: training queries per adaptive round (ProxySPEX only; each round's masks are chosen from the answers
        of the rounds before, and sum(rounds) = n_queries); empty = the non-adaptive design, asked at once.
    """

    method: str
    n: int
    budget: int
    max_order: int
    n_queries: int
    n_holdout: int
    total: int
    reason: str
    requested: str = "auto"
    b: int | None = None
    t: int | None = None
    n_noise: int = 0
    rounds: tuple[int, ...] = ()

    @property
    def adaptive(self) -> bool:
        """Whether the training design is asked in several rounds, each chosen from the answers before it."""
        return len(self.rounds) > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        if "rounds" in kept:  # a JSON list
            kept["rounds"] = tuple(int(r) for r in kept["rounds"])
        return cls(**kept)

    def describe(self) -> str:
        """Human-readable summary for the CLI."""
        b = self.b or 0  # set for SPEX plans, the only ones that print it
        if self.method == "spex":
            algo = f"SPEX, b={b} ({2 ** b} bins x 3 groups), BCH t={self.t}"
        elif self.method == "exhaustive":
            algo = f"exact transform of all {self.n_queries} masks"
        elif self.adaptive:
            later = " + ".join(str(r) for r in self.rounds[1:])
            algo = (f"ProxySPEX on {self.n_queries} masks in {len(self.rounds)} adaptive rounds ({self.rounds[0]} "
                    f"uniform, then {later} concentrated on the features the earlier answers found active)")
        else:
            algo = f"ProxySPEX on {self.n_queries} uniform random masks"
        holdout = f"{self.n_holdout} held-out masks" if self.n_holdout else "no held-out slice (faithfulness via CV)"
        if self.n_noise:
            holdout += f" + {self.n_noise} for the repeat-noise estimate ({self.n_noise // 2} masks asked twice)"
        unspent = ""
        if self.total < self.budget and self.method == "spex":
            unspent = f" ({self.budget - self.total} left unspent: b={b + 1} would need {2 * self.n_queries})"
        return (
            f"{algo}\n"
            f"queries: {self.n_queries} training + {holdout} = at most {self.total} of budget {self.budget}{unspent}\n"
            f"features: {self.n}, max order {self.max_order}\n"
            f"why: {self.reason}"
        )
