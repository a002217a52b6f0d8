"""spex-api: explain closed-source LLM answers with sparse feature interactions (SPEX, ProxySPEX)."""

import logging

from spex_api.engine.fourier import SparseFourier, r2_score
from spex_api.engine.oracle import BudgetExceededError, Oracle, ValueFunctionError

__version__ = "0.1.0"

logging.getLogger("spex_api").addHandler(logging.NullHandler())  # plan refusals; configure logging to see them

# Names imported on first use: `import spex_api` stays light (no scikit-learn, no providers or their SDKs),
# which keeps `spex-api explain --dry-run` fast. `from spex_api import Explainer` works as usual.
_LAZY = {
    "Explanation": "spex_api.engine.explanation",
    "Interaction": "spex_api.engine.explanation",
    "SPEX": "spex_api.engine.spex",
    "Explainer": "spex_api.engine.explainer",
    "Plan": "spex_api.engine.plan",
    "explain": "spex_api.sdk",
    "explain_many": "spex_api.sdk",
}
__all__ = ["SparseFourier", "r2_score", "Oracle", "BudgetExceededError", "ValueFunctionError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spex_api' has no attribute {name!r}")
