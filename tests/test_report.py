"""Reports rendered from an Explanation: terminal table, HTML page (checked in headless Chromium), figure."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from rich.console import Console

from spex_api.engine.explanation import Explanation
from spex_api.engine.fourier import SparseFourier
from spex_api.report import interactions_table, print_report, render_html, save_plot, write_html

TEXT = (
    "A runaway trolley will hit five people unless you pull the lever, which sends it onto a side track "
    "where one <worker> stands. Pulling the lever is wrong. True or False?"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sample_explanation() -> Explanation:
    """An explanation shaped like the SDK's: word features with their spans in the prompt text."""
    words, spans, pos = [], [], 0
    for w in TEXT.split(" "):
        words.append(w)
        spans.append([pos, pos + len(w)])
        pos += len(w) + 1
    n = len(words)
    you, lever, side, worker = words.index("you"), words.index("lever,"), words.index("side"), words.index("<worker>")
    f = SparseFourier(n, [(), (you,), (lever,), (you, lever), (side, worker), (worker,)], [0.4, -0.9, 0.5, 1.1, -0.6, 0.3])
    return Explanation(
        fourier=f, method="proxyspex", queries_used=481, faithfulness=0.83, feature_names=words, cost=0.0123,
        metadata={
            "original_answer": "False", "text": TEXT, "feature_texts": words, "feature_spans": spans,
            "provider": "openai", "model": "gpt-4o-mini", "scorer": "label-margin", "budget": 500,
        },
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


def test_html_highlights_features_links_interactions_and_escapes():
    expl = sample_explanation()
    html = render_html(expl)
    worker = expl.feature_names.index("<worker>")
    you = expl.feature_names.index("you")
    assert f'id="f{you}"' in html and f'href="#f{you}"' in html
    assert "&lt;worker&gt;" in html and "<worker>" not in html  # prompt text is escaped
    assert f'id="f{worker}"' in html
    assert "held-out R² 0.830" in html and "$0.0123" in html and "proxyspex" in html
    # Every feature of the prompt appears once as a highlighted span, in reading order.
    assert html.count('class="f"') == expl.n
    # The strongest attribution gets the most opaque colour.
    assert "rgba(215, 48, 39, 0.90)" in html or "rgba(26, 152, 80, 0.90)" in html


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


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = write_html(sample_explanation(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1100,900", f"file://{os.path.abspath(page)}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (900, 1100)
    assert img.std() > 20, "screenshot is blank"
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    greenish = ((g - r > 40) & (g - b > 25)).sum()
    reddish = ((r - g > 60) & (r - b > 60)).sum()
    assert greenish > 300 and reddish > 300, (greenish, reddish)
    dark_text = (img.sum(axis=2) < 200).sum()
    assert dark_text > 2000, "no text rendered"
