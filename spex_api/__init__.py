"""spex-api: explain closed-source LLM answers with sparse feature interactions (SPEX, ProxySPEX)."""

import logging
from typing import TYPE_CHECKING, Any

from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.oracle import BudgetExceededError, Oracle, ValueFunctionError

__version__ = "0.1.0"  # the one place it is written (pyproject.toml reads it)

logging.getLogger("spex_api").addHandler(logging.NullHandler())  # plan refusals; configure logging to see them

# Names imported on first use: `import spex_api` stays light (no scikit-learn, no providers or their SDKs),
# which keeps `spex-api explain --dry-run` fast. `from spex_api import Explainer` works as usual.
_LAZY = {
    "Explanation": "spex_api.engine.explanation",
    "Interaction": "spex_api.engine.explanation",
    "SPEX": "spex_api.engine.spex",
    "Explainer": "spex_api.engine.explainer",
    "Plan": "spex_api.engine.plan",
    "RunMetadata": "spex_api.engine.metadata",
    "Preview": "spex_api.sdk",
    "explain": "spex_api.sdk",
    "explain_many": "spex_api.sdk",
    "preview": "spex_api.sdk",
    "run": "spex_api.sdk",
}
__all__ = [
    "SparseFourier", "r2_score", "Oracle", "BudgetExceededError", "ValueFunctionError", "Explanation", "Interaction",
    "SPEX", "Explainer", "Plan", "RunMetadata", "Preview", "explain", "explain_many", "preview", "run",
]
assert set(__all__) >= set(_LAZY)


if TYPE_CHECKING:  # type checkers see the real signatures; at run time they load on first use
    from spex_api.engine.explainer import Explainer
    from spex_api.engine.explanation import Explanation, Interaction
    from spex_api.engine.metadata import RunMetadata
    from spex_api.engine.plan import Plan
    from spex_api.engine.spex import SPEX
    from spex_api.sdk import Preview, explain, explain_many, preview, run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spex_api' has no attribute {name!r}")
