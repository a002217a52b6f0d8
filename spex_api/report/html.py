"""HTML report: the prompt with every feature highlighted by its attribution, the top interactions linked
to the highlighted text, and the plan/cost/faithfulness block. One self-contained file, no network."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape

from spex_api.report._common import DEFAULT_INDEX, attributions, feature_texts, fmt_cost, fmt_r2, summary, top_rows

POSITIVE = (26, 152, 80)  # keeps the score up
NEGATIVE = (215, 48, 39)  # pulls the score down

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>spex-api explanation{% if s.model %} · {{ s.model }}{% endif %}</title>
<style>
 body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 980px; color: #222; padding: 0 16px; }
 h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 24px 0 8px; }
 .facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; background: #f6f7f9; border: 1px solid #dde; border-radius: 6px; padding: 10px 14px; }
 .facts dt { font-weight: 600; } .facts dd { margin: 0; }
 .prompt { white-space: pre-wrap; border: 1px solid #dde; border-radius: 6px; padding: 12px 14px; line-height: 2.0; }
 .f { border-radius: 3px; padding: 1px 2px; cursor: pointer; outline: 2px solid transparent; transition: outline-color .1s; }
 .f.on { outline-color: #1f3fbf; outline-width: 3px; }
 ol.inter { padding-left: 28px; } ol.inter li { margin: 4px 0; padding: 2px 6px; border-radius: 4px; }
 ol.inter li.on, ol.inter li:target { background: #e8ecfb; }
 .val { font-variant-numeric: tabular-nums; font-weight: 600; display: inline-block; min-width: 64px; }
 .bar { display: inline-block; height: 10px; border-radius: 2px; vertical-align: middle; margin-right: 8px; }
 .pos { color: rgb{{ pos }}; } .neg { color: rgb{{ neg }}; }
 .chip { display: inline-block; border-radius: 3px; padding: 0 4px; margin: 0 2px; text-decoration: none; color: inherit; }
 .legend span { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 8px; }
 .muted { color: #667; font-size: 13px; }
</style></head>
<body>
<h1>Why did the model answer that?</h1>
<dl class="facts">
 {% if s.answer is not none %}<dt>Answer</dt><dd>{{ s.answer }}</dd>{% endif %}
 {% if s.model %}<dt>Model</dt><dd>{{ s.provider }} / {{ s.model }}{% if s.scorer %} · scored by {{ s.scorer }}{% endif %}</dd>{% endif %}
 <dt>Method</dt><dd>{{ s.method }}{% if s.plan_reason %} — {{ s.plan_reason }}{% endif %}</dd>
 <dt>Queries</dt><dd>{{ s.queries_used }}{% if s.budget %} of a budget of {{ s.budget }}{% endif %}</dd>
 <dt>Cost</dt><dd>{{ cost }}</dd>
 <dt>Faithfulness</dt><dd>{{ s.faithfulness_kind }} {{ r2 }}</dd>
 <dt>Score</dt><dd>{% if s.original_score is not none %}model's score on the prompt {{ "%+.3f"|format(s.original_score) }} · {% endif %}fit: all features kept {{ "%+.3f"|format(s.full) }}, all masked {{ "%+.3f"|format(s.baseline) }}</dd>
</dl>

<h2>Prompt, coloured by each feature's Shapley value</h2>
<p class="legend muted"><span style="background: rgba{{ pos_a }}">raises the score</span><span style="background: rgba{{ neg_a }}">lowers the score</span>stronger colour = larger effect; hover an interaction below to outline its features.</p>
<div class="prompt">{% for piece in pieces %}{% if piece.i is none %}{{ piece.text }}{% else %}<span class="f" id="f{{ piece.i }}" data-i="{{ piece.i }}" style="background: {{ piece.bg }}" title="feature {{ piece.i }}: Shapley {{ '%+.3f'|format(piece.phi) }}{% if piece.rows %} · in interaction {{ piece.rows|join(', ') }}{% endif %}">{{ piece.text }}</span>{% endif %}{% endfor %}</div>

<h2>Top interactions ({{ index }})</h2>
<p class="muted">Effect of keeping these features together, beyond their sub-combinations. Order 1 is a feature alone.</p>
<ol class="inter">
{% for r in rows %} <li id="i{{ r.rank }}" data-f="{{ r.features|join(' ') }}"><span class="val {{ 'pos' if r.value > 0 else 'neg' }}">{{ "%+.3f"|format(r.value) }}</span><span class="bar" style="width: {{ r.width }}px; background: {{ r.colour }}"></span><span class="muted">order {{ r.order }}:</span>{% for i, t in r.chips %} <a class="chip" href="#f{{ i }}" style="background: {{ bg[i] }}">{{ t }}</a>{% if not loop.last %} ×{% endif %}{% endfor %}</li>
{% endfor %}</ol>
<script>
document.querySelectorAll("ol.inter li").forEach(function (li) {
  var spans = li.dataset.f.split(" ").map(function (i) { return document.getElementById("f" + i); });
  li.addEventListener("mouseenter", function () { li.classList.add("on"); spans.forEach(function (s) { s.classList.add("on"); }); });
  li.addEventListener("mouseleave", function () { li.classList.remove("on"); spans.forEach(function (s) { s.classList.remove("on"); }); });
});
document.querySelectorAll(".f").forEach(function (s) {
  s.addEventListener("click", function () {
    document.querySelectorAll("ol.inter li").forEach(function (li) {
      li.classList.toggle("on", li.dataset.f.split(" ").indexOf(s.dataset.i) >= 0);
    });
  });
});
</script>
</body></html>
"""

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.2f})"


def _pieces(expl: Any, texts: list[str], phi: np.ndarray, bg: list[str], members: dict[int, list[int]]) -> list[dict]:
    """The prompt split into plain text and feature spans, in reading order."""
    meta = expl.metadata or {}
    text, spans = meta.get("text"), meta.get("feature_spans")
    if not (isinstance(text, str) and spans and len(spans) == expl.n):
        sep = "\n\n" if meta.get("granularity") == "paragraphs" else " "
        text = sep.join(texts)
        spans, pos = [], 0
        for t in texts:
            spans.append((pos, pos + len(t)))
            pos += len(t) + len(sep)
    order = sorted(range(expl.n), key=lambda i: spans[i][0])
    pieces, pos = [], 0
    for i in order:
        start, end = int(spans[i][0]), int(spans[i][1])
        if start > pos:
            pieces.append({"i": None, "text": text[pos:start]})
        pieces.append({"i": i, "text": text[start:end], "bg": bg[i], "phi": float(phi[i]), "rows": members.get(i, [])})
        pos = max(pos, end)
    if pos < len(text):
        pieces.append({"i": None, "text": text[pos:]})
    return pieces


def render_html(expl: Any, k: int = 15, index: str = DEFAULT_INDEX) -> str:
    """The report as one HTML string."""
    texts = feature_texts(expl)
    phi = attributions(expl)
    top = float(np.abs(phi).max()) if expl.n else 0.0
    bg = [
        _rgba(POSITIVE if p > 0 else NEGATIVE, 0.12 + 0.78 * abs(p) / top) if top > 0 and p != 0 else "transparent"
        for p in phi
    ]
    rows = top_rows(expl, k, index)
    members: dict[int, list[int]] = {}
    for r in rows:
        for i in r.features:
            members.setdefault(i, []).append(r.rank)
    scale = max((abs(r.value) for r in rows), default=0.0) or 1.0
    row_dicts = [
        {
            "rank": r.rank, "order": r.order, "value": r.value, "features": r.features,
            "chips": list(zip(r.features, (t if len(t) <= 80 else t[:79] + "…" for t in r.texts))),
            "width": max(2, round(120 * abs(r.value) / scale)),
            "colour": "rgb" + str(POSITIVE if r.value > 0 else NEGATIVE),
        }
        for r in rows
    ]
    s = summary(expl)
    return _env.from_string(_TEMPLATE).render(
        s=s, cost=fmt_cost(s["cost"]), r2=fmt_r2(s["faithfulness"]), index=index, rows=row_dicts, bg=bg,
        pieces=_pieces(expl, texts, phi, bg, members), pos=str(POSITIVE), neg=str(NEGATIVE),
        pos_a=str((*POSITIVE, 0.6)), neg_a=str((*NEGATIVE, 0.6)),
    )


def write_html(expl: Any, path: str | os.PathLike, k: int = 15, index: str = DEFAULT_INDEX) -> str:
    """Write the HTML report to `path` and return the path."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(expl, k, index))
    return os.fspath(path)
