"""HTML report: one self-contained file (inline CSS, script and data; no network) to explore an explanation.

The prompt is shown with every feature coloured by its first-order value; the reader switches the index
(Möbius, Shapley, Banzhaf, FSII, k-SII, ...) and filters interactions by order in the page; a heatmap of the
strongest pairs links each cell back to the two highlighted features; faithfulness and the plan are said in
plain words, with the planner's technical detail folded away. Sentences and documents are shown as blocks.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jinja2 import Environment, select_autoescape

from spex_api.report._common import (
    DEFAULT_INDEX, faithfulness_in_words, feature_texts, fmt_cost, fmt_r2, plan_in_words, removal_in_words,
    printable, removal_rows, run_metadata, scorer_in_words, summary, text_or_none,
)

POSITIVE = (26, 152, 80)  # keeps the score up
NEGATIVE = (215, 48, 39)  # pulls the score down

# (id, index name, order of the index or None, label, what it means): the choices offered in the page.
INDEX_CHOICES = (
    ("mobius", "mobius", None, "Möbius", "the effect of keeping exactly these features together, beyond the effects "
     "of their smaller combinations (order 1: a feature alone, everything else hidden)"),
    ("shapley", "shapley", None, "Shapley", "each feature's fair share of the change from everything hidden to "
     "everything kept"),
    ("banzhaf", "banzhaf", None, "Banzhaf", "each feature's average effect when every other feature is kept or "
     "hidden at random, half and half"),
    ("fsii", "fsii", 2, "FSII (order 2)", "the best fit of the model by single features and pairs, weighted as "
     "Shapley values are (Faith-Shapley)"),
    ("k-sii", "k-sii", 2, "k-SII (order 2)", "Shapley interactions up to pairs, adjusted so that they add up to "
     "the full change"),
    ("stii", "stii", 2, "STII (order 2)", "Shapley-Taylor: Möbius effects of single features and pairs, larger "
     "combinations shared out evenly over their pairs"),
    ("fbii", "fbii", 2, "FBII (order 2)", "the best fit by single features and pairs over random maskings "
     "(Faith-Banzhaf)"),
    ("sii", "sii", None, "SII", "Shapley interaction index of each combination"),
    ("bii", "bii", None, "BII", "Banzhaf interaction index of each combination"),
    ("fourier", "fourier", None, "Fourier", "coefficients of the ±1 Fourier basis the explanation was fitted in"),
)
PER_ORDER = 40  # interactions embedded per index and order bucket (1, 2, 3+): enough for any filter in the page

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>spex-api explanation{% if s.model %} · {{ s.model }}{% endif %}</title>
<style>
 body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1040px; color: #222; padding: 0 16px; }
 h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 28px 0 8px; }
 .facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #f6f7f9; border: 1px solid #dde; border-radius: 6px; padding: 10px 14px; }
 .facts dt { font-weight: 600; } .facts dd { margin: 0; }
 details { margin-top: 6px; } summary { cursor: pointer; color: #445; font-size: 13px; }
 pre.tech { white-space: pre-wrap; background: #fff; border: 1px solid #dde; border-radius: 4px; padding: 8px; font-size: 12px; margin: 6px 0 0; }
 .controls { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: center; position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #eef; z-index: 2; }
 .controls label { font-weight: 600; margin-right: 6px; }
 .seg button { border: 1px solid #99a; background: #fff; padding: 2px 10px; margin: 0 -1px 0 0; cursor: pointer; font: inherit; font-size: 13px; }
 .seg button:first-of-type { border-radius: 4px 0 0 4px; } .seg button:last-of-type { border-radius: 0 4px 4px 0; }
 .seg button[aria-pressed="true"] { background: #1f3fbf; color: #fff; border-color: #1f3fbf; }
 select { font: inherit; padding: 2px 4px; }
 .prompt { white-space: pre-wrap; border: 1px solid #dde; border-radius: 6px; padding: 12px 14px; line-height: 2.0; }
 .prompt.blocks { white-space: normal; line-height: 1.5; }
 .prompt.blocks .f { display: block; margin: 6px 0; padding: 6px 10px 6px 12px; border-left: 5px solid #ccd; white-space: pre-wrap; }
 .prompt.blocks .gap { display: block; color: #667; font-size: 13px; white-space: pre-wrap; }
 .badge { font-size: 11px; font-weight: 600; color: #445; margin-right: 8px; font-variant-numeric: tabular-nums; }
 .f { border-radius: 3px; padding: 1px 2px; cursor: pointer; outline: 2px solid transparent; transition: outline-color .1s; }
 .f.on { outline: 3px solid #1f3fbf; }
 ol.inter { padding-left: 30px; } ol.inter li { margin: 4px 0; padding: 3px 6px; border-radius: 4px; }
 ol.inter li.on { background: #e8ecfb; }
 .val { font-variant-numeric: tabular-nums; font-weight: 600; display: inline-block; min-width: 64px; }
 .bar { display: inline-block; height: 10px; border-radius: 2px; vertical-align: middle; margin-right: 8px; }
 .pos { color: rgb{{ pos }}; } .neg { color: rgb{{ neg }}; }
 .chip { display: inline-block; border-radius: 3px; padding: 0 4px; margin: 0 2px; text-decoration: none; color: inherit; }
 .stack { display: block; margin: 3px 0 3px 72px; padding: 2px 8px; border-left: 4px solid #ccd; text-decoration: none; color: inherit; }
 .legend span { display: inline-block; padding: 0 6px; border-radius: 3px; margin-right: 8px; }
 .muted { color: #667; font-size: 13px; }
 table.heat { border-collapse: collapse; font-size: 12px; }
 table.heat th { font-weight: 500; padding: 2px 6px; white-space: nowrap; max-width: 220px; overflow: hidden; text-overflow: ellipsis; }
 table.heat th.row { text-align: right; } table.heat th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; height: 110px; }
 table.heat td { width: 34px; height: 30px; border: 1px solid #eef; text-align: center; font-variant-numeric: tabular-nums; font-size: 10px; }
 table.heat td.v { cursor: pointer; } table.heat td.on, table.heat th.on { outline: 2px solid #1f3fbf; }
 table.removal { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
 table.removal td, table.removal th { border-bottom: 1px solid #eef; padding: 3px 10px; text-align: right; font-variant-numeric: tabular-nums; }
 table.removal td:first-child, table.removal th:first-child { text-align: left; }
 #tip { position: fixed; pointer-events: none; background: #223; color: #fff; padding: 4px 8px; border-radius: 4px; font-size: 12px; display: none; z-index: 5; max-width: 420px; }
</style></head>
<body>
<h1>Why did the model answer that?</h1>
<dl class="facts">
 {% if s.answer is not none %}<dt>Answer</dt><dd>{{ s.answer }}</dd>{% endif %}
 {% if s.model %}<dt>Model</dt><dd>{{ s.provider }} / {{ s.model }}</dd>{% endif %}
 {% if s.scorer %}<dt>Score means</dt><dd>{{ scorer_words }} <span class="muted">({{ s.scorer }})</span></dd>{% endif %}
 <dt>What was done</dt><dd id="plan">{{ plan_words or s.method }}
  <details><summary>Technical detail</summary><pre class="tech">method: {{ s.method }}{% if tech %}
{{ tech }}{% endif %}</pre></details></dd>
 <dt>Queries</dt><dd>{{ s.queries_used }}{% if s.budget %} of a budget of {{ s.budget }}{% endif %} · cost {{ cost }}</dd>
 <dt>Score</dt><dd>{% if s.original_score is not none %}model's score on the prompt {{ "%+.3f"|format(s.original_score) }} · {% endif %}explanation: all features kept {{ "%+.3f"|format(s.full) }}, all hidden {{ "%+.3f"|format(s.baseline) }}</dd>
</dl>

<h2>How much to trust it</h2>
<div id="faith">{% for line in faith %}<p>{{ line }}</p>{% endfor %}
{% if removal_words %}<p>{{ removal_words }}</p>
<table class="removal" id="removal"><tr><th>features hidden (cumulative)</th><th>predicted change</th><th>measured change</th></tr>
{% for r in removal %}<tr><td>{{ loop.index }}: + {{ r.last|truncate(60) }}</td><td>{{ "%+.3f"|format(r.predicted) }}</td><td>{{ "%+.3f"|format(r.measured) }}</td></tr>
{% endfor %}</table>{% endif %}
<p class="muted">Measured as {{ s.faithfulness_kind }} {{ r2 }}.</p></div>

<div class="controls">
 <div><label for="index">Index</label><select id="index">{% for c in choices %}<option value="{{ c.id }}"{% if c.id == index %} selected{% endif %}>{{ c.label }}</option>{% endfor %}</select></div>
 <div class="seg" id="order" role="group" aria-label="interaction order"><label>Order</label><button data-o="all" aria-pressed="true">all</button><button data-o="1" aria-pressed="false">1</button><button data-o="2" aria-pressed="false">2</button><button data-o="3" aria-pressed="false">3+</button></div>
 <div class="muted" id="index-about"></div>
</div>

<h2>Prompt</h2>
<p class="legend muted"><span style="background: rgba{{ pos_a }}">raises the score</span><span style="background: rgba{{ neg_a }}">lowers the score</span><em id="colour-by">coloured by each feature's value alone (order 1)</em>; stronger colour = larger effect. Hover an interaction or a heatmap cell to outline its features; click a feature to find its interactions.</p>
<div class="prompt{% if blocks %} blocks{% endif %}" id="prompt">{% for piece in pieces %}{% if piece.i is none %}{% if not blocks %}{{ piece.text }}{% elif piece.text.strip() %}<span class="gap">{{ piece.text.strip() }}</span>{% endif %}{% else %}<span class="f" id="f{{ piece.i }}" data-i="{{ piece.i }}">{% if blocks %}<span class="badge">{{ labels[piece.i] }}</span>{% endif %}{{ piece.text }}</span>{% endif %}{% endfor %}</div>

<h2>Strongest interactions</h2>
<p class="muted" id="inter-about"></p>
<ol class="inter" id="inter"></ol>

<h2>Pairs</h2>
<p class="muted" id="pairs-about">Pairwise values of the strongest pairs, between the features they involve. Hover a cell to outline both features in the prompt.</p>
<div id="pairs"></div>
<div id="tip"></div>

<script type="application/json" id="spex-data">{{ data }}</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("spex-data").textContent);
  var state = { index: D.index, order: "all" };
  var $ = function (id) { return document.getElementById(id); };
  var spans = []; for (var i = 0; i < D.n; i++) spans.push($("f" + i));
  var tip = $("tip");
  function rgba(v, top) {
    if (!top || !v) return "transparent";
    var c = v > 0 ? D.pos : D.neg, a = 0.12 + 0.78 * Math.abs(v) / top;
    return "rgba(" + c[0] + ", " + c[1] + ", " + c[2] + ", " + a.toFixed(2) + ")";
  }
  function fmt(v) { return (v >= 0 ? "+" : "") + v.toFixed(3); }
  function outline(features, on) { features.forEach(function (i) { if (spans[i]) spans[i].classList.toggle("on", on); }); }
  function showTip(ev, text) { tip.textContent = text; tip.style.display = "block"; tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 14) + "px"; }
  function hideTip() { tip.style.display = "none"; }
  function current() { return D.indices[state.index]; }
  function colourPrompt() {
    var t = current(), top = 0;
    t.singles.forEach(function (v) { top = Math.max(top, Math.abs(v)); });
    spans.forEach(function (s, i) {
      if (!s) return;
      var v = t.singles[i], bg = rgba(v, top);
      s.style.background = bg;
      if (D.blocks) s.style.borderLeftColor = v ? (v > 0 ? "rgb(" + D.pos.join(",") + ")" : "rgb(" + D.neg.join(",") + ")") : "#ccd";
      s.dataset.v = v;
      s.title = D.labels[i] + ": " + t.label + " " + fmt(v);
    });
    $("colour-by").textContent = "coloured by each feature's " + t.label + " value (order 1)";
  }
  function rows() {
    var t = current(), o = state.order, out = [];
    ["1", "2", "3"].forEach(function (k) { if (o === "all" || o === k) out = out.concat(t.rows[k] || []); });
    out.sort(function (a, b) { return Math.abs(b[1]) - Math.abs(a[1]) || a[0].length - b[0].length; });
    return out.slice(0, D.k);
  }
  function chip(i, block) {
    var a = document.createElement("a");
    a.className = block ? "stack" : "chip"; a.href = "#f" + i;
    var text = D.texts[i];
    a.textContent = block ? D.labels[i] + "  " + (text.length > 160 ? text.slice(0, 159) + "…" : text) : (text.length > 60 ? text.slice(0, 59) + "…" : text);
    a.title = text;
    a.style.background = block ? "" : (spans[i] ? spans[i].style.background : "");
    if (block && spans[i]) a.style.borderLeftColor = spans[i].style.borderLeftColor;
    return a;
  }
  function renderList() {
    var list = $("inter"), r = rows(), scale = 0;
    list.textContent = "";
    r.forEach(function (x) { scale = Math.max(scale, Math.abs(x[1])); });
    r.forEach(function (x, n) {
      var li = document.createElement("li"), f = x[0], v = x[1];
      li.dataset.f = f.join(" "); li.dataset.order = f.length;
      var val = document.createElement("span"); val.className = "val " + (v > 0 ? "pos" : "neg"); val.textContent = fmt(v);
      var bar = document.createElement("span"); bar.className = "bar";
      bar.style.width = Math.max(2, Math.round(120 * Math.abs(v) / (scale || 1))) + "px";
      bar.style.background = "rgb(" + (v > 0 ? D.pos : D.neg).join(",") + ")";
      var ord = document.createElement("span"); ord.className = "muted"; ord.textContent = "order " + f.length + ":";
      li.appendChild(val); li.appendChild(bar); li.appendChild(ord);
      f.forEach(function (i, j) {
        if (!D.blocks && j) li.appendChild(document.createTextNode(" ×"));
        if (!D.blocks) li.appendChild(document.createTextNode(" "));
        li.appendChild(chip(i, D.blocks));
      });
      li.addEventListener("mouseenter", function () { li.classList.add("on"); outline(f, true); });
      li.addEventListener("mouseleave", function () { li.classList.remove("on"); outline(f, false); });
      list.appendChild(li);
    });
    var t = current();
    $("inter-about").textContent = r.length ? t.label + ": " + t.about + "." : "No interaction of this order under " + t.label + ".";
    $("index-about").textContent = t.about;
  }
  function renderPairs() {
    var box = $("pairs"), t = current(), pairs = (t.rows["2"] || []).slice(0, 30);
    box.textContent = "";
    if (!pairs.length) {
      var p = document.createElement("p"); p.className = "muted";
      p.textContent = t.pairs ? "No pair has a nonzero " + t.label + " value." : t.label + " values are per feature; choose Möbius, FSII, k-SII, STII, FBII, SII or BII to see pairs.";
      box.appendChild(p); return;
    }
    var weight = {}, value = {}, top = 0;
    pairs.forEach(function (x) {
      var a = x[0][0], b = x[0][1], v = x[1];
      weight[a] = (weight[a] || 0) + Math.abs(v); weight[b] = (weight[b] || 0) + Math.abs(v);
      value[a + "," + b] = v; value[b + "," + a] = v; top = Math.max(top, Math.abs(v));
    });
    var feats = Object.keys(weight).map(Number).sort(function (a, b) { return weight[b] - weight[a]; }).slice(0, 12);
    feats.sort(function (a, b) { return a - b; });
    var table = document.createElement("table"); table.className = "heat";
    var head = document.createElement("tr"); head.appendChild(document.createElement("th"));
    feats.forEach(function (j) { var th = document.createElement("th"); th.className = "col"; th.dataset.i = j; th.textContent = D.short[j]; th.title = D.texts[j]; head.appendChild(th); });
    table.appendChild(head);
    feats.forEach(function (i) {
      var tr = document.createElement("tr"), th = document.createElement("th");
      th.className = "row"; th.dataset.i = i; th.textContent = D.short[i]; th.title = D.texts[i]; tr.appendChild(th);
      feats.forEach(function (j) {
        var td = document.createElement("td"), v = value[i + "," + j];
        if (v !== undefined) {
          td.className = "v"; td.dataset.i = i; td.dataset.j = j; td.dataset.v = v;
          td.style.background = rgba(v, top); td.textContent = (v >= 0 ? "+" : "") + v.toFixed(2);
          td.addEventListener("mouseenter", function (ev) {
            td.classList.add("on"); outline([i, j], true);
            table.querySelectorAll('th[data-i="' + i + '"], th[data-i="' + j + '"]').forEach(function (h) { h.classList.add("on"); });
            showTip(ev, D.short[i] + " × " + D.short[j] + ": " + t.label + " " + fmt(v));
          });
          td.addEventListener("mousemove", function (ev) { showTip(ev, tip.textContent); });
          td.addEventListener("mouseleave", function () {
            td.classList.remove("on"); outline([i, j], false); hideTip();
            table.querySelectorAll("th.on").forEach(function (h) { h.classList.remove("on"); });
          });
        }
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
    $("pairs-about").textContent = "The " + pairs.length + " strongest pairs under " + t.label + ", between the " + feats.length + " features they involve most (green: together they raise the score, red: lower it). Hover a cell to outline both features in the prompt.";
  }
  function render() { colourPrompt(); renderList(); renderPairs(); }
  $("index").addEventListener("change", function (ev) { state.index = ev.target.value; render(); });
  document.querySelectorAll("#order button").forEach(function (b) {
    b.addEventListener("click", function () {
      state.order = b.dataset.o;
      document.querySelectorAll("#order button").forEach(function (x) { x.setAttribute("aria-pressed", String(x === b)); });
      renderList();
    });
  });
  spans.forEach(function (s) {
    if (!s) return;
    s.addEventListener("click", function () {
      var i = s.dataset.i;
      document.querySelectorAll("#inter li").forEach(function (li) { li.classList.toggle("on", li.dataset.f.split(" ").indexOf(i) >= 0); });
    });
  });
  render();
})();
</script>
</body></html>
"""

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def _spans(expl: Any, texts: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and each feature's (start, end) in it; rebuilt from the feature texts when not recorded."""
    run = run_metadata(expl)
    text, spans = text_or_none(run.text), run.feature_spans
    if text is not None and spans and len(spans) == expl.n:
        return text, list(spans)
    sep = "\n\n" if run.granularity in ("sentences", "paragraphs") else " "
    out, pos = [], 0
    for t in texts:
        out.append((pos, pos + len(t)))
        pos += len(t) + len(sep)
    return sep.join(texts), out


def _pieces(expl: Any, texts: list[str]) -> list[dict]:
    """The prompt split into plain text and feature spans, in reading order."""
    text, spans = _spans(expl, texts)
    pieces: list[dict] = []
    pos = 0
    for i in sorted(range(expl.n), key=lambda i: spans[i][0]):
        start, end = spans[i]
        if start > pos:
            pieces.append({"i": None, "text": text[pos:start]})
        pieces.append({"i": i, "text": text[start:end]})
        pos = max(pos, end)
    if pos < len(text):
        pieces.append({"i": None, "text": text[pos:]})
    return pieces


def _blocks(expl: Any, texts: list[str]) -> bool:
    """Sentences and documents read as blocks, one per line; words flow as text."""
    granularity = run_metadata(expl).granularity
    if granularity in ("sentences", "paragraphs"):
        return True
    return granularity != "words" and bool(texts) and sum(map(len, texts)) / len(texts) > 40


def _labels(expl: Any, texts: list[str], blocks: bool) -> tuple[list[str], list[str]]:
    """Per feature: a badge label (S3 / P2 / the word) and a short axis label for the heatmap."""
    def squash(t: str, width: int) -> str:
        t = " ".join(t.split())
        return t if len(t) <= width else t[: width - 1].rstrip() + "…"

    if not blocks:
        short = [squash(t, 18) for t in texts]
        repeated = {t for t in short if short.count(t) > 1}  # "the" twice: say which (its word number)
        return [squash(t, 30) for t in texts], [f"{t} #{i + 1}" if t in repeated else t for i, t in enumerate(short)]
    letter = "P" if run_metadata(expl).granularity == "paragraphs" else "S"
    badges = [f"{letter}{i + 1}" for i in range(len(texts))]
    return badges, [f"{b} {squash(t, 22)}" for b, t in zip(badges, texts)]


def index_tables(expl: Any) -> dict[str, dict[str, Any]]:
    """Per index offered in the page: its strongest interactions per order bucket and every feature's order-1 value."""
    out = {}
    for cid, name, order, label, about in INDEX_CHOICES:
        buckets: dict[str, list] = {"1": [], "2": [], "3": []}
        singles = [0.0] * expl.n
        for it in expl.interactions(index=name, order=order):
            size = len(it.features)
            if size == 1:
                singles[it.features[0]] = float(it.value)
            bucket = buckets[str(min(size, 3))]
            if len(bucket) < PER_ORDER and it.value != 0:
                bucket.append([list(it.features), float(it.value)])
        out[cid] = {"label": label, "about": about, "rows": buckets, "singles": singles,
                    "pairs": name not in ("shapley", "banzhaf")}
    return out


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can end it or open markup."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _technical(expl: Any) -> str:
    plan = expl.plan
    if plan is None:
        return ""
    if hasattr(plan, "describe"):
        return plan.describe()
    return "\n".join(f"{k}: {v}" for k, v in plan.items()) if isinstance(plan, dict) else str(plan)


def render_html(expl: Any, k: int = 15, index: str = DEFAULT_INDEX) -> str:
    """The report as one HTML string; `index` is the one shown first, `k` the interactions listed."""
    from markupsafe import Markup

    from spex_api.engine.indices import canonical_index

    index = canonical_index(index)
    ids = [c[0] for c in INDEX_CHOICES]
    index = index if index in ids else DEFAULT_INDEX
    texts = feature_texts(expl)
    blocks = _blocks(expl, texts)
    labels, short = _labels(expl, texts, blocks)
    s = summary(expl)
    data = {"n": expl.n, "k": int(k), "index": index, "texts": texts, "labels": labels, "short": short,
            "blocks": blocks, "pos": list(POSITIVE), "neg": list(NEGATIVE), "indices": index_tables(expl)}
    return _env.from_string(_TEMPLATE).render(
        s=s, cost=fmt_cost(s["cost"]), r2=fmt_r2(s["faithfulness"]), index=index, blocks=blocks, labels=labels,
        choices=[{"id": c[0], "label": c[3]} for c in INDEX_CHOICES], pieces=_pieces(expl, texts),
        plan_words=plan_in_words(expl), scorer_words=scorer_in_words(expl), tech=_technical(expl), faith=faithfulness_in_words(expl),
        removal_words=removal_in_words(expl), removal=removal_rows(expl),
        pos=str(POSITIVE), neg=str(NEGATIVE), pos_a=str((*POSITIVE, 0.6)), neg_a=str((*NEGATIVE, 0.6)),
        data=Markup(_script_json(data)),
    )


def write_html(expl: Any, path: str | os.PathLike, k: int = 15, index: str = DEFAULT_INDEX) -> str:
    """Write the HTML report to `path` and return the path."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(printable(render_html(expl, k, index)))  # the prompt text may hold lone surrogates
    return os.fspath(path)
