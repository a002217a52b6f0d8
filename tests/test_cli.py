"""The `spex-api` CLI through typer's CliRunner: dry runs spend nothing, bad input exits 2 before any spend,
saved explanations render, and a real run against the local server writes its reports."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from typer.testing import CliRunner

from spex_api.cli import app
from test_report import sample_explanation

runner = CliRunner()
TEMPLATE = "Review: {content}\nIs this review positive? Answer True or False.\nAnswer:"
TEXT = "The pasta was excellent but the waiter forgot our order twice."


class _Counter(BaseHTTPRequestHandler):
    hits: list[str] = []

    def _any(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that records every request it gets (a dry run must send none)."""
    hits: list[str] = []
    handler = type("Counter", (_Counter,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", hits
    server.shutdown()
    server.server_close()


def _explain(*args: str, env: dict | None = None):
    return runner.invoke(app, ["explain", *args], env=env)


def test_dry_run_plans_and_sends_nothing(counting_server):
    base_url, hits = counting_server
    res = _explain("--dry-run", "--base-url", base_url, "--model", "m", "--labels", "True,False",
                   "--template", TEMPLATE, "--budget", "300", TEXT)
    assert res.exit_code == 0, res.output
    assert "dry run: no query was sent" in res.output
    assert "proxyspex" in res.output and "300" in res.output
    assert hits == []


def test_dry_run_prices_openai_without_network(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")
    res = _explain("--dry-run", "--provider", "openai", "--labels", "True,False", "--template", TEMPLATE,
                   "--budget", "500", TEXT)
    assert res.exit_code == 0, res.output
    assert "gpt-4o-mini" in res.output and "$" in res.output
    assert "sk-test" not in res.output


def test_batch_dry_run_shows_the_batch_price_saving_and_latency(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")
    args = ("--dry-run", "--provider", "openai", "--labels", "True,False", "--template", TEMPLATE, "--budget", "500",
            "--cache-dir", str(tmp_path))
    res = _explain(*args, "--batch", TEXT)
    assert res.exit_code == 0, res.output
    assert "at batch prices" in res.output and "saves 50%" in res.output and "24 h" in res.output
    assert "batches, one per round" in res.output
    refused = _explain("--dry-run", "--batch", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", TEXT)
    assert refused.exit_code != 0 and "no batch API" in refused.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run", "   "], "empty prompt"),
        (["--dry-run", "--budget", "5", TEXT], "below the minimum"),
        (["--dry-run", "--provider", "nonsense", "--model", "x", TEXT], "unknown provider"),
        (["--dry-run", "--scorer", "magic", TEXT], "unknown scorer"),
        (["--dry-run", "--labels", "True", TEXT], "two comma-separated labels"),
        (["--dry-run", "--out", "report.docx", TEXT], "--out"),
        (["--dry-run"], "give the prompt text or --file"),
        (["--dry-run", "--file", "/nonexistent/prompt.txt"], "prompt.txt"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message):
    res = _explain(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_usage_errors_exit_2():
    assert _explain("--features", "letters", TEXT).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_missing_openai_key_fails_before_spend(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = _explain("--provider", "openai", "--yes", "--labels", "True,False", TEXT)
    assert res.exit_code == 2, res.output
    assert "OPENAI_API_KEY" in res.output and "Traceback" not in res.output


def test_report_renders_saved_explanation(tmp_path):
    path = sample_explanation().save(tmp_path / "expl.json")
    html, png = tmp_path / "r.html", tmp_path / "r.png"
    res = runner.invoke(app, ["report", str(path), "--html", str(html), "--png", str(png), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "“you” × “lever,”" in res.output
    assert html.read_text().count('class="f"') > 10 and png.stat().st_size > 1000


@pytest.fixture
def browser(monkeypatch) -> list[str]:
    """Every URL the CLI asks the web browser to open (none is really opened)."""
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    return opened


def test_report_opens_the_browser_only_with_open(tmp_path, browser):
    path = sample_explanation().save(tmp_path / "expl.json")
    html = tmp_path / "r.html"
    assert runner.invoke(app, ["report", str(path), "--html", str(html)]).exit_code == 0
    assert html.exists() and browser == []
    res = runner.invoke(app, ["report", str(path), "--html", str(html), "--open"])
    assert res.exit_code == 0, res.output
    assert browser == [html.resolve().as_uri()]
    res = runner.invoke(app, ["report", str(path), "--open"])
    assert res.exit_code == 2 and "--open needs an HTML report" in res.output


def test_explain_open_without_html_out_exits_2_before_spend(counting_server, tmp_path, browser):
    base_url, hits = counting_server
    res = _explain("--base-url", base_url, "--model", "m", "--labels", "True,False", "--template", TEMPLATE,
                   "--budget", "300", "--yes", "--open", "--out", str(tmp_path / "e.json"), TEXT)
    assert res.exit_code == 2 and "--open needs an HTML report" in res.output
    assert hits == [] and browser == []


def test_report_bad_file_exits_2(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    for args in (["report", str(bad)], ["report", str(tmp_path / "missing.json")],
                 ["report", "--index", "nope", str(bad)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error" in res.output and "Traceback" not in res.output


@pytest.mark.live
def test_explain_on_local_server_writes_reports(local_server, tmp_path, browser):
    js, html = tmp_path / "e.json", tmp_path / "e.html"
    res = _explain("--open", "--base-url", local_server.base_url, "--model", local_server.model, "--labels", "True,False",
                   "--template", TEMPLATE, "--budget", "120", "--yes", "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(js), "--out", str(html), TEXT)
    assert res.exit_code == 0, res.output
    assert "Top" in res.output and "interactions" in res.output
    data = json.loads(js.read_text())
    assert data["queries_used"] <= 120 and data["metadata"]["original_answer"]
    assert 'id="f0"' in html.read_text()
    assert browser == [html.resolve().as_uri()]  # --open: the written report, once
