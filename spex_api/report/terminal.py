"""Terminal report: a rich table of the top interactions with their words or sentences, sign and size."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rich.markup import escape

from spex_api.report._common import (
    DEFAULT_INDEX, faithfulness_in_words, fmt_cost, fmt_r2, plan_in_words, removal_in_words, removal_rows, shorten,
    summary, top_rows,
)

_BAR = 20  # width of the magnitude bar, in characters


def interactions_table(expl: Any, k: int = 10, index: str = DEFAULT_INDEX, width: int = 48) -> Table:
    """Rich table of the k strongest interactions: rank, order, signed value, bar, feature texts."""
    rows = top_rows(expl, k, index)
    table = Table(title=f"Top {len(rows)} interactions ({index})", title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("order", justify="right")
    table.add_column("effect", justify="right")
    table.add_column("size", no_wrap=True)
    table.add_column("features (kept together)", overflow="fold")
    scale = max((abs(r.value) for r in rows), default=0.0) or 1.0
    for r in rows:
        colour = "green" if r.value > 0 else "red"
        bar = "█" * max(1, round(_BAR * abs(r.value) / scale))
        table.add_row(
            str(r.rank),
            str(r.order),
            Text(f"{r.value:+.3f}", style=colour),
            Text(bar, style=colour),
            Text(" × ".join(f"“{shorten(t, width)}”" for t in r.texts)),  # prompt text: data, never markup
        )
    return table


def header(expl: Any) -> Panel:
    """Answer, model and the plan/cost/faithfulness figures."""
    s = summary(expl)
    lines = []
    if s["answer"] is not None:
        lines.append(f"[bold]answer[/]   {escape(shorten(s['answer'], 100))}")
    if s["model"]:
        lines.append(f"[bold]model[/]    {escape(str(s['provider']))} / {escape(str(s['model']))}   "
                     f"scorer: {escape(str(s['scorer']))}")
    budget = f" of {s['budget']}" if s["budget"] else ""
    lines.append(f"[bold]method[/]   {escape(s['method'])}   queries: {s['queries_used']}{budget}   cost: {fmt_cost(s['cost'])}")
    lines.append(f"[bold]faithful[/] {s['faithfulness_kind']} {fmt_r2(s['faithfulness'])}   features: {s['n']}")
    measured = f"model {s['original_score']:+.3f}   " if s["original_score"] is not None else ""
    lines.append(f"[bold]score[/]    {measured}fit: all kept {s['full']:+.3f}, all masked {s['baseline']:+.3f}")
    words = plan_in_words(expl)
    if words or s["plan_reason"]:
        lines.append(f"[dim]{escape(words or 'plan: ' + s['plan_reason'])}[/]")
    trust = faithfulness_in_words(expl)[1:] + [removal_in_words(expl) or ""]
    lines.extend(f"[dim]{escape(line)}[/]" for line in trust if line)
    return Panel("\n".join(lines), title="spex-api explanation", title_align="left", expand=False, width=120)


def removal_table(expl: Any, width: int = 48) -> Table | None:
    """Verified removal: per step, the feature masked next, the predicted and the measured change of score."""
    rows = removal_rows(expl)
    if not rows:
        return None
    table = Table(title=f"Verified removal (top features by {expl.removal.ranking_index} masked)",
                  title_justify="left", expand=False)
    for name, justify in (("masked", "right"), ("+ feature", "left"), ("predicted", "right"),
                          ("measured", "right"), ("gap", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(str(len(r["removed"])), Text(f"“{shorten(r['last'], width)}”"), f"{r['predicted']:+.3f}",
                      f"{r['measured']:+.3f}", f"{r['measured'] - r['predicted']:+.3f}")
    return table


def print_report(expl: Any, k: int = 10, index: str = DEFAULT_INDEX, console: Console | None = None) -> None:
    """Print the header, the interaction table and the removal check (when one was run) to the terminal."""
    console = console or Console()
    console.print(header(expl))
    console.print(interactions_table(expl, k, index))
    removal = removal_table(expl)
    if removal is not None:
        console.print(removal)
    console.print(
        "[dim]effect > 0: keeping these features together raises the score; < 0: lowers it. "
        "Order 1 is a feature alone, order ≥ 2 the extra effect of the combination.[/]"
    )
