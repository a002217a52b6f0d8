"""Batch progress: every answer is credited to the prompt that asked for it, the live table shows status,
queries, spend and ETA per prompt, the summary table closes the batch, and quiet mode draws nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from spex_api import sdk
from spex_api.progress import PROMPT, BatchProgress

sys.path.insert(0, str(Path(__file__).parent / "providers"))
from fakeserver import FakeServer  # noqa: E402

TEMPLATE = "Review: {content}\nIs the review positive? Answer True or False."
PROMPTS = ["The soup was cold.", "Great view, tiny noisy room.", "Kind staff."]  # few words: exact, fast fits


def _text(renderable) -> str:
    console = Console(record=True, width=160)
    console.print(renderable)
    return console.export_text()


def test_answers_are_credited_to_the_asking_prompt_and_eta_follows_the_rate():
    bar = BatchProgress(["first", "second"], [10, 4], Console(file=open("/dev/null", "w")), enabled=False)
    bar.start(0)
    bar.rows[0].started = time.monotonic() - 2.0  # 2 s in
    spend = 0.0
    for i, (who, hit) in enumerate([(0, False), (0, True), (0, False), (0, False), (1, False)]):
        spend += 0.0 if hit else 0.01
        token = PROMPT.set(who)
        bar.on_progress(SimpleNamespace(spend=spend, cache_hits=int(hit) + (1 if i > 1 else 0)))
        PROMPT.reset(token)
    first, second = bar.rows
    assert (first.answered, first.cached, second.answered) == (4, 1, 1)
    assert first.spend == pytest.approx(0.03) and second.spend == pytest.approx(0.01)
    assert bar._eta(first, time.monotonic()) == pytest.approx(2.0 * 6 / 4, rel=0.05)  # 6 left at 2 per second
    table = _text(bar.table())
    assert "running" in table and "queued" in table and "4/10" in table and "$0.0300" in table and "0:03" in table
    bar.failed(1, RuntimeError("cap reached"))
    assert "failed: RuntimeError: cap reached" in _text(bar.summary())


def test_explain_many_live_table_and_summary_on_a_real_http_server(capsys, monkeypatch):
    """Three prompts through the fake provider over HTTP: a live table while it runs, a summary at the end."""
    seen: list[str] = []
    original = BatchProgress.on_progress

    def spy(self, stats):  # the live table as it stands after the first answer of each prompt
        original(self, stats)
        i = PROMPT.get()
        if i is not None and self.rows[i].answered == 1:
            seen.append(_text(self.table()))

    monkeypatch.setattr(BatchProgress, "on_progress", spy)
    with FakeServer(latency=0.01) as server:
        kw = dict(base_url=f"{server.url}/v1", model="fake", template=TEMPLATE, labels=["True", "False"],
                  budget=60, cache_dir=None, concurrency=2)
        expls = sdk.explain_many(PROMPTS, progress=True, **kw)
        err = capsys.readouterr().err
        assert all(e.queries_used <= 60 for e in expls)
        assert len(seen) == 3 and all("running" in frame for frame in seen)
        assert "spex-api batch summary" in err and "3 done" in err
        for i, e in enumerate(expls):  # one summary row per prompt: its method and queries
            cells = next(cells for cells in ([c.strip() for c in line.split("│")] for line in err.splitlines())
                         if len(cells) > 5 and cells[1] == str(i))
            assert e.method.startswith(cells[3].rstrip("…")) and cells[4] == str(e.queries_used)
        quiet = sdk.explain_many(PROMPTS[:1], progress=False, **kw)
        assert capsys.readouterr().err == "" and quiet[0].queries_used <= 60


def test_cli_explain_many_writes_each_prompt_and_quiet_prints_nothing(tmp_path):
    from typer.testing import CliRunner

    from spex_api.cli import app

    runner = CliRunner()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join('{"prompt": "%s"}' % p for p in PROMPTS[:2]) + "\n", encoding="utf-8")
    with FakeServer() as server:
        args = ["explain-many", str(prompts), "--base-url", f"{server.url}/v1", "--model", "fake", "--template",
                TEMPLATE, "--labels", "True,False", "--budget", "60", "--cache-dir", "", "--yes",
                "--out-dir", str(tmp_path), "--html"]
        res = runner.invoke(app, [*args, "--quiet"])
        assert res.exit_code == 0, res.output
        assert res.output == ""
        assert sorted(p.name for p in tmp_path.glob("[01].*")) == ["0.html", "0.json", "1.html", "1.json"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "spex-api batch summary" in res.output and "2 done" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n', encoding="utf-8")
    res = runner.invoke(app, ["explain-many", str(bad)])
    assert res.exit_code == 2 and 'expected an object with a "prompt" string' in res.output
