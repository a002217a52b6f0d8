"""Matplotlib figure of the top interactions: one signed horizontal bar per interaction."""

from __future__ import annotations

import os
from typing import Any

from spex_api.report._common import DEFAULT_INDEX, fmt_r2, top_rows

POSITIVE, NEGATIVE = "#1a9850", "#d73027"


def plot_interactions(expl: Any, k: int = 10, index: str = DEFAULT_INDEX, ax: Any = None) -> Any:
    """Bar chart of the k strongest interactions, labelled with their feature texts; returns the Figure."""
    rows = top_rows(expl, k, index)
    if ax is None:
        import matplotlib.pyplot as plt  # picks a non-GUI backend on headless machines

        fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(rows), 1) + 1.4))
    else:
        fig = ax.figure
    labels = [r.label(width=28) for r in rows][::-1]
    values = [r.value for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=[POSITIVE if v > 0 else NEGATIVE for v in values])
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_xlabel(f"{index} value (effect of keeping the features together)")
    model = (expl.metadata or {}).get("model")
    ax.set_title(f"Top interactions{f' · {model}' if model else ''} · {expl.method}, "
                 f"{expl.queries_used} queries, R² {fmt_r2(expl.faithfulness)}", fontsize=10)
    fig.tight_layout()
    return fig


def save_plot(expl: Any, path: str | os.PathLike, k: int = 10, index: str = DEFAULT_INDEX) -> str:
    """Write the figure to `path` (png/pdf/svg by extension) and return the path."""
    import matplotlib.pyplot as plt

    fig = plot_interactions(expl, k, index)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return os.fspath(path)
