"""Reports rendered from an Explanation: terminal table, HTML page (checked in headless Chromium), figure."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from rich.console import Console

from spex_api.engine.explanation import Explanation, NoiseEstimate, RemovalCheck
from spex_api.engine.fourier import SparseFourier
from spex_api.engine.planner import plan
from spex_api.report import interactions_table, print_report, render_html, save_plot, write_html

TEXT = (
    "A runaway trolley will hit five people unless you pull the lever, which sends it onto a side track "
    "where one <worker> stands. Pulling the lever is wrong. True or False?"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sample_explanation(noise: bool = False) -> Explanation:
    """An explanation shaped like the SDK's: word features with their spans in the prompt text; with `noise`,
    also a plan, a measured noise ceiling and a verified-removal check."""
    words, spans, pos = [], [], 0
    for w in TEXT.split(" "):
        words.append(w)
        spans.append([pos, pos + len(w)])
        pos += len(w) + 1
    n = len(words)
    you, lever, side, worker = words.index("you"), words.index("lever,"), words.index("side"), words.index("<worker>")
    f = SparseFourier(n, [(), (you,), (lever,), (you, lever), (side, worker), (worker,)], [0.4, -0.9, 0.5, 1.1, -0.6, 0.3])
    extra = {}
    if noise:
        extra = dict(
            plan=plan(n, 499, method="auto", max_order=5),
            noise=NoiseEstimate(n_pairs=24, noise_sd=0.05, score_sd=0.25, r2_ceiling=0.96),
            removal=RemovalCheck("shapley", [{"removed": [lever], "predicted": -2.1, "measured": -1.8},
                                             {"removed": [lever, you], "predicted": -0.8, "measured": -1.0}]),
        )
    return Explanation(
        fourier=f, method="proxyspex", queries_used=481, faithfulness=0.83, feature_names=words, cost=0.0123, **extra,
        metadata={
            "original_answer": "False", "text": TEXT, "feature_texts": words, "feature_spans": spans,
            "provider": "openai", "model": "gpt-4o-mini", "scorer": "label-margin", "budget": 500,
        },
    )


SENTENCES = [
    "The trolley is heading toward five workers on the main track.",
    "You stand next to a lever that can divert it onto a side track.",
    "One worker is on the side track and cannot escape.",
    "Pulling the lever means you actively cause one death.",
]


def sentence_explanation() -> Explanation:
    """Sentence features, as `features="sentences"` records them."""
    text = " ".join(SENTENCES)
    spans, pos = [], 0
    for t in SENTENCES:
        spans.append([pos, pos + len(t)])
        pos += len(t) + 1
    f = SparseFourier(4, [(), (0,), (1,), (1, 3), (2, 3)], [0.1, 0.3, -0.4, 0.5, -0.2])
    return Explanation(
        fourier=f, method="spex", queries_used=200, faithfulness=0.91, feature_names=SENTENCES, cost=0.0,
        metadata={"text": text, "feature_texts": SENTENCES, "feature_spans": spans, "granularity": "sentences"},
    )


def test_terminal_table_shows_texts_sign_and_order():
    expl = sample_explanation()
    console = Console(record=True, width=140)
    print_report(expl, k=5, console=console)
    text = console.export_text()
    assert "“you” × “lever,”" in text
    assert "gpt-4o-mini" in text and "0.830" in text and "$0.0123" in text and "481" in text
    table = interactions_table(expl, k=5)
    assert table.row_count == 5
    # Möbius of F(you)=-0.9, F(lever)=0.5, F(you,lever)=1.1: a(you, lever) = 4 * 1.1 = +4.4 ranks first.
    first = Console(record=True, width=140)
    first.print(interactions_table(expl, k=1))
    row = first.export_text().splitlines()[4]
    assert "+4.400" in row and "│     2 │" in row


def _data(html: str) -> dict:
    """The JSON the page's script renders from."""
    start = html.index('<script type="application/json" id="spex-data">') + len('<script type="application/json" id="spex-data">')
    return json.loads(html[start : html.index("</script>", start)])


def test_html_highlights_features_embeds_every_index_and_escapes():
    expl = sample_explanation()
    expl.feature_names[0] = expl.metadata["feature_texts"][0] = "</script><b>x</b>"
    html = render_html(expl)
    worker = expl.feature_names.index("<worker>")
    assert f'id="f{worker}"' in html
    assert "&lt;worker&gt;" in html and "<worker>" not in html  # prompt text is escaped
    assert "<b>x</b>" not in html and html.count("</script>") == 2  # the JSON cannot close its script element
    assert "held-out R² 0.830" in html and "$0.0123" in html and "proxyspex" in html
    assert html.count('class="f"') == expl.n  # every feature once, as a span of the prompt
    assert "http://" not in html and "https://" not in html and "default-src 'none'" in html  # no network
    data = _data(html)
    assert data["texts"][0] == "</script><b>x</b>"
    assert {"mobius", "shapley", "banzhaf", "fsii", "k-sii"} <= set(data["indices"])
    you, lever = expl.feature_names.index("you"), expl.feature_names.index("lever,")
    assert data["indices"]["mobius"]["rows"]["2"][0] == [[you, lever], pytest.approx(4.4)]
    shapley = {it.features[0]: it.value for it in expl.interactions("shapley")}
    assert data["indices"]["shapley"]["singles"][you] == pytest.approx(shapley[you])
    assert data["indices"]["shapley"]["rows"]["2"] == [] and not data["indices"]["shapley"]["pairs"]
    assert all(len(f) == 2 for f, _ in data["indices"]["k-sii"]["rows"]["2"])


def test_html_says_faithfulness_noise_ceiling_removal_and_plan_in_plain_words():
    html = render_html(sample_explanation(noise=True))
    assert "R² = 0.83" in html and "83% of how the score varies" in html
    assert "noise ceiling" in html and "R² ≈ 0.96" in html and "86% of it" in html
    assert "Checked on the model: hiding the top 2 features" in html and 'id="removal"' in html
    assert "ProxySPEX" in html and "tree model" in html and "<details><summary>Technical detail" in html
    assert "Faithfulness was not measured" not in html
    assert "how much more likely the model makes" in html  # what the score means
    short = _data(html)["short"]
    assert len(set(short)) == len(short) and "the #11" in short  # repeated words say which one they are
    bare = sample_explanation()
    bare.faithfulness, bare.noise = None, None
    assert "Faithfulness was not measured" in render_html(bare)


def test_html_shows_sentences_as_blocks():
    html = render_html(sentence_explanation())
    assert 'class="prompt blocks"' in html and '<span class="badge">S2</span>' in html
    assert _data(html)["blocks"] is True


def test_html_without_spans_falls_back_to_feature_texts():
    expl = sample_explanation()
    for key in ("text", "feature_spans"):
        expl.metadata.pop(key)
    html = render_html(expl)
    assert html.count('class="f"') == expl.n and "trolley" in html


def test_plot_has_one_signed_bar_per_interaction(tmp_path):
    from PIL import Image

    from spex_api.report import plot_interactions

    expl = sample_explanation()
    fig = plot_interactions(expl, k=4)
    bars = fig.axes[0].patches
    assert len(bars) == 4
    assert sorted(round(b.get_width(), 3) for b in bars) == sorted(round(r.value, 3) for r in expl.top(4, "mobius"))
    path = save_plot(expl, tmp_path / "top.png", k=4)
    assert Image.open(path).size[0] > 500


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by playwright (no browser download: executable_path)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI installs chromium (apt-get install chromium); the report must be clicked through")
        pytest.skip("Debian package chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, path):
    """A page on the report, recording script errors and any request that would leave the file."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file://") else None)
    page.goto(f"file://{os.path.abspath(path)}")
    return page, errors, requests


def _on(page) -> list[int]:
    return sorted(int(i) for i in page.eval_on_selector_all("#prompt .f.on", "els => els.map(e => e.dataset.i)"))


def test_html_report_clicked_through_in_chromium(browser, tmp_path):
    from PIL import Image

    expl = sample_explanation(noise=True)
    you, lever = expl.feature_names.index("you"), expl.feature_names.index("lever,")
    page, errors, requests = _open(browser, write_html(expl, tmp_path / "report.html"))
    first = page.locator("#inter li").first
    assert first.get_attribute("data-f") == f"{you} {lever}" and "+4.400" in first.inner_text()

    first.hover()  # an interaction outlines its features in the prompt
    assert _on(page) == sorted([you, lever])
    page.mouse.move(0, 0)
    assert _on(page) == []

    cell = page.locator(f'table.heat td.v[data-i="{you}"][data-j="{lever}"]')
    cell.hover()  # a heatmap cell outlines both features and names them
    assert _on(page) == sorted([you, lever])
    assert page.locator("#tip").is_visible() and "you × lever," in page.locator("#tip").inner_text()
    shot = tmp_path / "shot.png"
    page.screenshot(path=str(shot), full_page=True)

    page.select_option("#index", "shapley")  # switch index: list, colours and pair view follow
    orders = page.eval_on_selector_all("#inter li", "els => els.map(e => e.dataset.order)")
    assert orders and set(orders) == {"1"}
    assert "values are per feature" in page.locator("#pairs").inner_text()
    assert "Shapley" in page.locator(f"#f{you}").get_attribute("title")

    page.select_option("#index", "k-sii")
    page.click('#order button[data-o="2"]')  # order filter
    orders = page.eval_on_selector_all("#inter li", "els => els.map(e => e.dataset.order)")
    assert orders and set(orders) == {"2"}
    assert page.locator('#order button[data-o="2"]').get_attribute("aria-pressed") == "true"
    page.click('#order button[data-o="1"]')
    assert set(page.eval_on_selector_all("#inter li", "els => els.map(e => e.dataset.order)")) == {"1"}

    page.click(f"#f{lever}")  # a feature finds its interactions
    marked = page.eval_on_selector_all("#inter li.on", "els => els.map(e => e.dataset.f)")
    assert marked and all(str(lever) in f.split() for f in marked)
    assert "noise ceiling" in page.locator("#faith").inner_text()
    assert not page.locator("pre.tech").is_visible()  # technical detail folded until asked for
    page.click("details summary")
    assert page.locator("pre.tech").is_visible() and "queries:" in page.locator("pre.tech").inner_text()
    assert errors == [] and requests == []

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert ((g - r > 40) & (g - b > 25)).sum() > 300 and ((r - g > 60) & (r - b > 60)).sum() > 300
    assert (img.sum(axis=2) < 200).sum() > 2000, "no text rendered"


def test_sentences_render_as_stacked_blocks_in_chromium(browser, tmp_path):
    page, errors, requests = _open(browser, write_html(sentence_explanation(), tmp_path / "sent.html"))
    boxes = [page.locator(f"#f{i}").bounding_box() for i in range(len(SENTENCES))]
    prompt = page.locator("#prompt").bounding_box()
    assert all(b["y"] + b["height"] <= c["y"] + 1 for b, c in zip(boxes, boxes[1:]))  # one per line
    assert all(b["width"] > 0.9 * (prompt["width"] - 40) for b in boxes)
    rows = page.locator("#inter li a.stack")
    assert rows.count() >= 1 and rows.first.inner_text().startswith("S")
    assert errors == [] and requests == []


def test_terminal_report_shows_the_removal_check_step_by_step():
    from rich.console import Console

    console = Console(record=True, width=160)
    print_report(sample_explanation(noise=True), k=3, console=console)
    text = console.export_text()
    assert "Verified removal (top features by shapley masked)" in text
    assert "-2.100" in text and "-1.800" in text and "+0.300" in text and "“lever,”" in text
    console = Console(record=True, width=160)
    print_report(sample_explanation(), k=3, console=console)
    assert "Verified removal" not in console.export_text()
