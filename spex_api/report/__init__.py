"""Reports rendered from an Explanation: terminal table (rich), HTML page (jinja2), figure (matplotlib)."""

from spex_api.report.html import render_html, write_html
from spex_api.report.terminal import interactions_table, print_report

__all__ = ["print_report", "interactions_table", "render_html", "write_html", "plot_interactions", "save_plot"]


def __getattr__(name: str):
    # matplotlib is an optional extra: import the plot module only when a figure is asked for.
    if name in ("plot_interactions", "save_plot"):
        from spex_api.report import plot

        return getattr(plot, name)
    raise AttributeError(f"module 'spex_api.report' has no attribute {name!r}")
