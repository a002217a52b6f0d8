"""spex-api: explain closed-source LLM answers with sparse feature interactions (SPEX, ProxySPEX)."""

from spex_api.fourier import SparseFourier, r2_score
from spex_api.value_function import BudgetExceededError, Oracle, ValueFunctionError
from spex_api.explanation import Explanation, Interaction

__all__ = ["SparseFourier", "r2_score", "Oracle", "BudgetExceededError", "ValueFunctionError"]
__all__ += ["Explanation", "Interaction"]
from spex_api.spex import SPEX  # noqa: E402
__all__ += ["SPEX"]
from spex_api.explainer import Explainer; from spex_api.planner import Plan  # noqa: E402,E702
__all__ += ["Explainer", "Plan"]
__version__ = "0.1.0"

# Names imported on first use, so `import spex_api` never pulls in providers or their SDKs.
_LAZY = {"explain": "spex_api.sdk", "explain_many": "spex_api.sdk"}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spex_api' has no attribute {name!r}")
