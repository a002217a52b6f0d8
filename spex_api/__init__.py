"""spex-api: explain closed-source LLM answers with sparse feature interactions (SPEX, ProxySPEX)."""

from spex_api.fourier import SparseFourier, r2_score
from spex_api.value_function import BudgetExceededError, Oracle, ValueFunctionError

__all__ = ["SparseFourier", "r2_score", "Oracle", "BudgetExceededError", "ValueFunctionError"]
__version__ = "0.1.0"
