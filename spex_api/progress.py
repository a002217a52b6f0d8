"""Progress of a batch of explanations: one live table (status, queries, cache hits, spend, ETA per prompt) while
`explain_many` runs, and a summary table when it ends. Quiet (nothing drawn) for scripts.

Every answer the shared runner resolves is credited to the prompt that asked for it: the prompt's worker thread
sets `PROMPT` and the SDK's background loop carries it into the coroutines it runs for that thread, so the
runner's `on_progress` callback (called once per resolved request, on the loop) knows whose answer it was.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from spex_api.report._common import run_metadata, top_rows

PROMPT: contextvars.ContextVar[int | None] = contextvars.ContextVar("spex_api_batch_prompt", default=None)


@dataclass
class _Row:
    label: str
    planned: int
    status: str = "queued"
    answered: int = 0
    cached: int = 0
    spend: float = 0.0
    started: float | None = None
    ended: float | None = None
    note: str = ""
    expl: Any = None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


_STYLE = {"queued": "dim", "running": "cyan", "done": "green", "failed": "red", "skipped": "yellow"}


class BatchProgress:
    """Live table of a batch of prompts, then a summary table; `enabled=False` draws nothing (quiet mode).

    labels: one short text per prompt; planned: the most queries each may send (its plan's total + the
    original answer). Use as a context manager; hand `on_progress` to the runner and call `start`, `done`,
    `failed` (or `skip`) per prompt from its worker.
    """

    def __init__(self, labels: Sequence[str], planned: Sequence[int], console: Console | None = None,
                 enabled: bool = True, refresh_per_second: float = 2.0) -> None:
        self.rows = [_Row(str(label), int(n)) for label, n in zip(labels, planned)]
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._lock = threading.Lock()
        self._last_spend = self._last_hits = 0.0
        self._t0 = time.monotonic()
        self._live = Live(console=self.console, refresh_per_second=refresh_per_second, transient=True,
                          get_renderable=self.table) if enabled else None

    def __enter__(self) -> "BatchProgress":
        self._t0 = time.monotonic()
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self.console.print(self.summary())

    # ---- events ------------------------------------------------------------------------------------
    def on_progress(self, stats: Any) -> None:
        """Runner callback (one resolved request): credit it, its cache hit and its spend to the asking prompt."""
        with self._lock:
            spend, hits = float(stats.spend), float(stats.cache_hits)
            d_spend, d_hits = spend - self._last_spend, hits - self._last_hits
            self._last_spend, self._last_hits = spend, hits
            i = PROMPT.get()
            if i is None or not 0 <= i < len(self.rows):
                return
            row = self.rows[i]
            row.answered += 1
            row.cached += int(d_hits)
            row.spend += d_spend

    def start(self, i: int) -> None:
        with self._lock:
            self.rows[i].status, self.rows[i].started = "running", time.monotonic()

    def done(self, i: int, expl: Any) -> None:
        """A finished explanation: its own exact figures replace the live estimates."""
        with self._lock:
            row = self.rows[i]
            row.status, row.ended, row.expl = "done", time.monotonic(), expl
            row.answered = int(getattr(expl, "queries_used", row.answered))
            if getattr(expl, "cost", None) is not None:
                row.spend = float(expl.cost)
            if getattr(expl, "metadata", None):  # a run's record: how many answers the cache served
                row.cached = run_metadata(expl).stats.cache_hits

    def failed(self, i: int, exc: BaseException) -> None:
        with self._lock:
            row = self.rows[i]
            row.status, row.ended, row.note = "failed", time.monotonic(), f"{type(exc).__name__}: {exc}"

    def skip(self, i: int, why: str) -> None:
        with self._lock:
            self.rows[i].status, self.rows[i].note = "skipped", why

    # ---- tables ------------------------------------------------------------------------------------
    def _eta(self, row: _Row, now: float) -> float | None:
        if row.status != "running" or row.started is None or row.answered == 0:
            return None
        return (now - row.started) * max(row.planned - row.answered, 0) / row.answered

    def _batch_eta(self, now: float) -> float | None:
        """Time left for the whole batch at the answer rate so far (None until something was answered)."""
        answered = sum(r.answered for r in self.rows)
        left = sum(max(r.planned - r.answered, 0) for r in self.rows if r.status in ("queued", "running"))
        elapsed = now - self._t0
        if not left:
            return 0.0
        return None if answered == 0 or elapsed <= 0 else left * elapsed / answered

    def table(self) -> Table:
        """The live table: one row per prompt and a totals row."""
        now = time.monotonic()
        with self._lock:
            t = Table(title="spex-api batch", title_justify="left", show_footer=True, expand=False)
            t.add_column("#", justify="right", style="dim", footer="Σ", no_wrap=True)
            t.add_column("prompt", max_width=40 if self.console.width >= 110 else 22, no_wrap=True,
                         overflow="ellipsis")
            t.add_column("status", no_wrap=True, footer=self._counts())
            t.add_column("queries", justify="right", no_wrap=True, min_width=7,
                         footer=f"{sum(r.answered for r in self.rows)}/{sum(r.planned for r in self.rows)}")
            t.add_column("cached", justify="right", no_wrap=True, min_width=6, footer=str(sum(r.cached for r in self.rows)))
            t.add_column("spend", justify="right", no_wrap=True, min_width=5, footer=f"${sum(r.spend for r in self.rows):.4f}")
            t.add_column("ETA", justify="right", no_wrap=True, min_width=3, footer=_clock(self._batch_eta(now)))
            for i, r in enumerate(self.rows):
                status = Text(r.status, style=_STYLE[r.status])
                t.add_row(str(i), escape(r.label), status, f"{r.answered}/{r.planned}", str(r.cached),
                          f"${r.spend:.4f}", "done" if r.status == "done" else _clock(self._eta(r, now)))
        return t

    def _counts(self) -> str:
        counts = {s: sum(r.status == s for r in self.rows) for s in _STYLE}
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)

    def summary(self) -> Group:
        """The end-of-batch table (method, queries, cost, faithfulness and, on a wide console, the strongest
        interaction per prompt), then why each failed or skipped prompt did not finish."""
        wide = self.console.width >= 110
        with self._lock:
            t = Table(title="spex-api batch summary", title_justify="left", show_footer=True, expand=False,
                      pad_edge=False)
            t.add_column("#", justify="right", style="dim", footer="Σ", no_wrap=True)
            t.add_column("prompt", max_width=26 if wide else 16, no_wrap=True, overflow="ellipsis")
            t.add_column("result", no_wrap=True, min_width=11 if wide else 0, max_width=None if wide else 10,
                         footer=self._counts())
            for name, width, footer in (("queries", 7, str(sum(r.answered for r in self.rows))),
                                        ("cached", 6, str(sum(r.cached for r in self.rows))),
                                        ("cost", 7, f"${sum(r.spend for r in self.rows):.4f}"), ("R²", 5, "")):
                t.add_column(name, justify="right", no_wrap=True, min_width=width, footer=footer)
            if wide:
                t.add_column("time", justify="right", no_wrap=True, min_width=5,
                             footer=_clock(time.monotonic() - self._t0))
                t.add_column("strongest interaction", max_width=30, no_wrap=True, overflow="ellipsis")
            notes = []
            for i, r in enumerate(self.rows):
                took = _clock(r.ended - r.started) if r.ended is not None and r.started is not None else "–"
                if r.status == "done" and r.expl is not None:
                    r2 = "–" if r.expl.faithfulness is None else f"{r.expl.faithfulness:.2f}"
                    cells: list[Text | str] = [Text(r.expl.method, style="green"), str(r.answered), str(r.cached),
                                               f"${r.spend:.4f}", r2]
                    cells += [took, escape(_strongest(r.expl))] if wide else []
                else:
                    cells = [Text(r.status, style=_STYLE[r.status]), str(r.answered), str(r.cached),
                             f"${r.spend:.4f}", "–"]
                    cells += [took, ""] if wide else []
                    if r.note:
                        notes.append(Text(f"prompt {i} {r.status}: {r.note}", style=_STYLE[r.status]))
                t.add_row(str(i), escape(r.label), *cells)
        return Group(t, *notes)


def _strongest(expl: Any) -> str:
    """The largest Möbius interaction as 'a × b  +0.123'."""
    rows = top_rows(expl, 1)
    return f"{rows[0].label(width=16)}  {rows[0].value:+.3f}" if rows else ""


def label_for(prompt: Any, width: int = 60) -> str:
    """A one-line label of a prompt (its text, or its masked features' text)."""
    text = prompt if isinstance(prompt, str) else " ".join(getattr(prompt, "feature_names", []) or [repr(prompt)])
    return " ".join(str(text).split())[:width]
