"""Secrets and output safety (issue 9, items 9-12, 16, 17), measured at a fake provider on loopback.

Credentials written into base_url never reach the plan, a repr, pickle, saved JSON, the cache or an
exception; untrusted text is rendered as data; saved explanations are strict JSON and hostile ones are
refused with exit 2; cache files are private; small input gaps are refused before any request; retries,
pauses, cache events and cap refusals are logged with keys redacted.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from providers.adapters import make_adapter
from providers.cost import Price, PriceTable
from providers.errors import AuthenticationError, CapExceededError
from providers.runner import Runner
from providers.types import Message, Request
from spex_api import sdk

USER, PASSWORD = "alice", "s3cret-Passw0rd"
KEY = "sk-safety-SECRET-0123456789abcdef"
B64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TEMPLATE = "Review: {content}\nIs this review positive? Answer True or False.\nAnswer:"
SHORT = "pasta was excellent"  # 3 words: an exhaustive plan of 8 masks + the original answer


@pytest.fixture
def server(fake_server):
    return fake_server


def secret_url(server) -> str:
    return server.url.replace("http://", f"http://{USER}:{PASSWORD}@") + "/v1"


def leaks(text: str) -> list[str]:
    return [s for s in (PASSWORD, B64, KEY, f"{USER}:") if s in text]


def files_with(directory: Path, *secrets: str) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]


# ------------------------------------------------------------------------------------------- item 9
def test_credentials_in_base_url_reach_the_server_but_no_output(server, tmp_path, capsys):
    kw = dict(base_url=secret_url(server), model="m", api_key=KEY, template=TEMPLATE, labels=["True", "False"],
              budget=9, cache_dir=str(tmp_path / "cache"))
    pre = sdk.preview(SHORT, **kw)
    assert leaks(repr(pre)) == [] and pre.base_url == server.url + "/v1"
    assert leaks(str(vars(pre))) == [] and leaks(str(dataclasses.asdict(pre))) == []
    assert leaks(pickle.dumps(pre).decode("latin-1")) == []
    expl = sdk.run(pre, confirm=False, progress=True)
    saved = expl.save(tmp_path / "e.json").read_text()
    assert leaks(saved) == [] and expl.metadata["base_url"] == server.url + "/v1"
    assert leaks(capsys.readouterr().err) == []  # the plan and the progress bar
    assert files_with(tmp_path / "cache", PASSWORD, B64, KEY) == []
    # the credentials still authenticate: HTTP Basic, as the URL asked
    assert server.state.headers_seen and {h["authorization"] for h in server.state.headers_seen} == {f"Basic {B64}"}
    assert server.stats()["paid_total"] == expl.metadata["stats"]["queries_sent"] > 0


def test_a_401_echoing_basic_auth_keeps_the_credentials_out_of_the_exception(server, tmp_path):
    server.script(["401"])  # the fake echoes the Authorization header it got, as providers echo keys
    with pytest.raises(AuthenticationError) as info:
        sdk.explain(SHORT, base_url=secret_url(server), model="m", template=TEMPLATE, labels=["True", "False"],
                    budget=9, cache_dir=None, progress=False, confirm=False)
    exc = info.value
    assert leaks(str(exc)) == [] and leaks(repr(exc)) == [] and "Basic ***" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    assert server.stats()["requests"] == 1


def test_unpickled_preview_has_no_credentials_and_uses_the_public_url(server):
    pre = sdk.preview(SHORT, base_url=secret_url(server), model="m", api_key=KEY, template=TEMPLATE,
                      labels=["True", "False"], budget=9, cache_dir=None)
    copy = pickle.loads(pickle.dumps(pre))
    assert copy.credentials.get("api_key") is None and copy.base_url == pre.base_url
    assert pre.credentials.get("api_key") == KEY  # the original still holds them (in a closure)


# ------------------------------------------------------------------------------------------ item 17
async def test_retries_pauses_fatal_errors_and_cap_refusals_are_logged_without_secrets(server, caplog):
    caplog.set_level(logging.DEBUG, logger="providers")  # a CLI run in this process may have set WARNING
    a = make_adapter("openai", "gpt-4o-mini", base_url=secret_url(server), api_key=KEY, timeout=2.0)
    prices = PriceTable({"openai-compatible": {"gpt-4o-mini": Price(0.0, 0.0, 1e6)}})  # $1 per output token
    r = Runner(a, prices=prices, backoff_initial=0.01, backoff_max=0.05)
    server.script([{"kind": "429", "retry_after": 0.3}, "500"])
    req = Request(messages=(Message("user", "Is it true?"),), max_tokens=3)
    await r.send(req)
    with pytest.raises(AuthenticationError):  # the fake echoes the Authorization header it got
        server.script(["401"])
        await r.send(Request(messages=(Message("user", "Another question?"),), max_tokens=3))
    capped = Runner(a, max_cost=2.0, prices=prices)  # each call may cost $3
    with pytest.raises(CapExceededError):
        await capped.send(Request(messages=(Message("user", "A third?"),), max_tokens=3))
    records = [rec for rec in caplog.records if rec.name.startswith(("providers", "spex_api"))]
    text = "\n".join(rec.getMessage() for rec in records)
    assert "retrying in" in text and text.count("attempt") >= 2  # the 429 and the 500
    assert "asked for a pause" in text and "0.3 s" in text
    assert "HTTP 401" in text and "not retried" in text
    assert "max_cost=$2" in text
    assert "1 answered from the cache" not in text and "0 answered from the cache, 1 to send" in text
    assert leaks(text) == [] and server.state.headers_seen[-1]["authorization"] == f"Basic {B64}"


def test_cli_shows_warnings_on_stderr_and_more_with_verbose(server, tmp_path):
    from typer.testing import CliRunner

    from spex_api.cli import app

    server.script(["500"])
    args = ["explain", "--base-url", secret_url(server), "--model", "m", "--labels", "True,False", "--template",
            TEMPLATE, "--budget", "9", "--yes", "--cache-dir", str(tmp_path / "c"), SHORT]
    res = CliRunner().invoke(app, args)
    out = " ".join(res.output.split())  # rich wraps long log lines
    assert res.exit_code == 0, res.output
    assert "retrying in" in out and "answered from the cache" not in out and leaks(out) == []
    res = CliRunner().invoke(app, [*args[:1], "-vv", *args[1:]])
    assert res.exit_code == 0 and "8 answered from the cache" in " ".join(res.output.split())


# ------------------------------------------------------------------------------------------ item 12
def test_cache_folders_and_files_are_private_whatever_the_umask(server, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        root = tmp_path / "home" / "cache"  # the parent is missing too
        sdk.explain(SHORT, base_url=server.url + "/v1", model="m", template=TEMPLATE, labels=["True", "False"],
                    budget=9, cache_dir=str(root), progress=False, confirm=False)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "home", *(tmp_path / "home").rglob("*")]}
    assert {"home/cache/cache.db", "home/cache/claims.lock"} <= set(modes)
    assert {p: m for p, m in modes.items() if m & 0o077} == {}, modes


# ------------------------------------------------------------------------------------------ item 16
COUNTED = dict(model="m", template=TEMPLATE, cache_dir=None, progress=False, confirm=False)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_cost=float("nan")), ValueError, "max_cost must be a finite number"),
    (dict(max_cost=float("inf")), ValueError, "max_cost must be a finite number"),
    (dict(max_cost="3"), ValueError, "max_cost must be a finite number"),
    (dict(labels="TF"), TypeError, "labels must be a list of strings"),
    (dict(labels=["True", 1]), TypeError, "labels must be strings"),
    (dict(budget=20, labels=["True", "False"]), ValueError, "budget 20 is below the minimum of"),
])
def test_small_input_gaps_are_refused_before_any_request(server, kwargs, error, message):
    text = "The pasta was excellent but the waiter forgot our order twice."
    with pytest.raises(error, match=message):
        sdk.explain(text, base_url=server.url + "/v1", **{**COUNTED, **kwargs})
    assert server.stats()["requests"] == 0


def test_below_the_minimum_quotes_the_passed_budget_and_a_minimum_that_works(server):
    text = "The pasta was excellent but the waiter forgot our order twice."
    with pytest.raises(ValueError) as info:
        sdk.preview(text, base_url=server.url + "/v1", model="m", budget=20, labels=["True", "False"])
    need = int(str(info.value).split("minimum of ")[1].split()[0])
    assert "budget 20 " in str(info.value)
    sdk.preview(text, base_url=server.url + "/v1", model="m", budget=need, labels=["True", "False"])
    with pytest.raises(ValueError, match=f"budget {need - 1} is below the minimum of {need} "):
        sdk.preview(text, base_url=server.url + "/v1", model="m", budget=need - 1, labels=["True", "False"])


def test_lone_surrogates_in_a_prompt_are_refused_before_any_request(server):
    for kw in (dict(prompt="caf\udce9 was good"), dict(prompt="ok text", template="Review: {content} \ud800?")):
        with pytest.raises(ValueError, match="not valid UTF-8"):
            sdk.explain(kw.pop("prompt"), base_url=server.url + "/v1", **{**COUNTED, **kw})
    assert server.stats()["requests"] == 0


def test_invalid_utf8_on_the_command_line_exits_2_before_the_plan(server, tmp_path):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for extra in ([b"caf\xe9 was good"], [b"--template", b"Review: {content}\xff", b"fine words here"]):
        res = subprocess.run([sys.executable, "-m", "spex_api.cli", "explain", "--base-url",
                              (server.url + "/v1").encode(), "--model", b"m", "--yes", "--cache-dir", b"", *extra],
                             capture_output=True, env=env, timeout=120)
        err = " ".join(res.stderr.decode().split())
        assert res.returncode == 2, err
        assert "not valid UTF-8" in err and "plan" not in err and "Traceback" not in err
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"caf\xe9 ok")
    res = subprocess.run([sys.executable, "-m", "spex_api.cli", "explain", "--dry-run", "--base-url",
                          server.url + "/v1", "--model", "m", "--file", str(bad)], capture_output=True, env=env,
                         timeout=120)
    assert res.returncode == 2 and "not UTF-8 text (byte 0xe9" in " ".join(res.stderr.decode().split())
    assert server.stats()["requests"] == 0


# ------------------------------------------------------------------------------------------ item 10
HOSTILE = ["[/]", "[/INST]", "a[/]b", "[link=https://evil.example]click[/link]", "[bold red]loud[/]", "end\\"]


def hostile_explanation():
    from spex_api.engine.explanation import Explanation
    from spex_api.engine.fourier import SparseFourier

    n = len(HOSTILE)
    text = " ".join(HOSTILE)
    spans, pos = [], 0
    for w in HOSTILE:
        spans.append([pos, pos + len(w)])
        pos += len(w) + 1
    f = SparseFourier(n, [(), *((i,) for i in range(n)), (0, 1)], [0.1, *(0.1 * (i + 1) for i in range(n)), 0.5])
    return Explanation(f, "[/]", 10, feature_names=HOSTILE, faithfulness=0.9, metadata={
        "original_answer": "[/INST] [link=https://evil.example]here[/link]", "text": text, "feature_texts": HOSTILE,
        "feature_spans": spans, "provider": "[red]p", "model": "[/]m", "scorer": "[blink]s"})


def test_untrusted_text_in_the_terminal_report_is_data_not_markup():
    import io

    from rich.console import Console

    from spex_api.report import print_report

    console = Console(file=io.StringIO(), record=True, force_terminal=True, width=250)
    print_report(hostile_explanation(), k=10, console=console)
    raw = console.file.getvalue()
    shown = console.export_text()
    for w in HOSTILE[:-1] + ["[/INST] [link=https://evil.example]here[/link]", "[red]p", "[/]m", "[blink]s"]:
        assert w in shown, w
    assert "\x1b]8;" not in raw and "\x1b[5m" not in raw  # no hyperlink, no blink injected


def test_the_plan_shows_markup_in_a_prompt_as_text(server):
    import io

    from rich.console import Console

    pre = sdk.preview(" ".join(HOSTILE), base_url=server.url + "/v1", model="[/]m", labels=["True", "False"],
                      budget=200, cache_dir=None)
    console = Console(file=io.StringIO(), record=True, width=250)
    console.print(pre.renderable())
    shown = console.export_text()
    assert "[/]m" in shown and "/INST" in shown and "a[/]b" in shown and "evil.example]click[/link" in shown
    assert server.stats()["requests"] == 0


def test_cli_run_on_hostile_text_saves_json_then_renders(server, tmp_path):
    from typer.testing import CliRunner

    from spex_api.cli import app

    out = tmp_path / "e.json"
    args = ["explain", "--base-url", server.url + "/v1", "--model", "m", "--labels", "True,False", "--budget", "9",
            "--yes", "--cache-dir", "", "--out", str(out), "[/INST] a[/]b [link=https://evil.example]x[/link]"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.exists() and "[/INST]" in res.output and "a[/]b" in res.output
    res = CliRunner().invoke(app, ["explain", "--dry-run", "--labels", "[/]", "words"])
    assert res.exit_code == 2 and "[/]" in res.output and res.exception is None or isinstance(res.exception, SystemExit)


def test_a_rendering_failure_after_spend_keeps_the_saved_result(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import spex_api.report
    from spex_api.cli import app

    def broken(*args, **kwargs):
        raise RuntimeError("the terminal went away")

    monkeypatch.setattr(spex_api.report, "print_report", broken)
    out, html = tmp_path / "e.json", tmp_path / "e.html"
    res = CliRunner().invoke(app, ["explain", "--base-url", server.url + "/v1", "--model", "m", "--labels",
                                   "True,False", "--budget", "9", "--yes", "--cache-dir", "", "--out", str(html),
                                   "--out", str(out), SHORT])
    assert res.exit_code == 1 and "the terminal went away" in res.output and isinstance(res.exception, SystemExit)
    assert json.loads(out.read_text())["queries_used"] <= 9 and html.exists()


# ------------------------------------------------------------------------------------------ item 11
def test_saved_explanations_are_strict_json():
    import math

    from spex_api.engine.explanation import Explanation
    from spex_api.engine.fourier import SparseFourier

    e = Explanation(SparseFourier(2, [(), (0,), (1,)], [0.5, float("nan"), 1.0]), "spex", 5,
                    faithfulness=float("nan"), cost=float("inf"),
                    metadata={"original_score": float("-inf"), "stats": {"x": np.float64("nan")}})

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    text = e.to_json()
    data = json.loads(text, parse_constant=refuse)
    assert data["faithfulness"] is None and data["cost"] is None and data["metadata"]["original_score"] is None
    back = Explanation.from_json(text)
    assert math.isnan(back.fourier.values[1]) and back.fourier.values[2] == 1.0


def _valid_saved() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_report import sample_explanation

    return json.loads(sample_explanation().to_json())


HOSTILE_FILES = [
    ("list", lambda d: [d]),
    ("n string", lambda d: {**d, "n": "12"}),
    ("n bool", lambda d: {**d, "n": True}),
    ("n huge", lambda d: {**d, "n": 10_000_000, "feature_names": None}),
    ("keys wrong type", lambda d: {**d, "fourier": {"keys": "abc", "values": []}}),
    ("key out of range", lambda d: {**d, "fourier": {"keys": [[99]], "values": [1.0]}}),
    ("key not ints", lambda d: {**d, "fourier": {"keys": [[0.5]], "values": [1.0]}}),
    ("key too wide", lambda d: {**d, "n": 64, "feature_names": None, "metadata": {},
                                "fourier": {"keys": [list(range(40))], "values": [1.0]}}),
    ("values strings", lambda d: {**d, "fourier": {"keys": [[0]], "values": ["x"]}}),
    ("value too big", lambda d: {**d, "fourier": {"keys": [[0]], "values": [10**400]}}),
    ("lengths differ", lambda d: {**d, "fourier": {"keys": [[0], [1]], "values": [1.0]}}),
    ("names wrong length", lambda d: {**d, "feature_names": ["a"]}),
    ("metadata list", lambda d: {**d, "metadata": []}),
    ("answer number", lambda d: {**d, "metadata": {**d["metadata"], "original_answer": 5}}),
    ("score string", lambda d: {**d, "metadata": {**d["metadata"], "original_score": "high"}}),
    ("spans garbage", lambda d: {**d, "metadata": {**d["metadata"], "feature_spans": [["a", None]]}}),
    ("faithfulness string", lambda d: {**d, "faithfulness": "0.9"}),
    ("queries negative", lambda d: {**d, "queries_used": -1}),
    ("noise garbage", lambda d: {**d, "noise": {"n_pairs": "x"}}),
    ("future version", lambda d: {**d, "format_version": 99}),
]


@pytest.mark.parametrize("name, mutate", HOSTILE_FILES, ids=[h[0] for h in HOSTILE_FILES])
def test_report_on_hostile_json_exits_2_quickly_with_a_message(tmp_path, name, mutate):
    import time

    from typer.testing import CliRunner

    from spex_api.cli import app

    path = tmp_path / "x.json"
    path.write_text(json.dumps(mutate(_valid_saved())))
    t0 = time.process_time()
    res = CliRunner().invoke(app, ["report", str(path), "--html", str(tmp_path / "r.html")])
    assert time.process_time() - t0 < 2.0
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "not a saved spex-api explanation" in " ".join(res.output.split())
    assert isinstance(res.exception, SystemExit) and not (tmp_path / "r.html").exists()


def test_deeply_nested_json_exits_2(tmp_path):
    from typer.testing import CliRunner

    from spex_api.cli import app

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    res = CliRunner().invoke(app, ["report", str(path)])
    assert res.exit_code == 2 and "nested too deeply" in res.output


def test_lone_surrogates_do_not_break_write_html_or_the_terminal(tmp_path):
    from typer.testing import CliRunner

    from spex_api.cli import app
    from spex_api.report import write_html

    d = _valid_saved()
    d["feature_names"][0] = d["metadata"]["feature_texts"][0] = "caf\udce9"
    del d["metadata"]["text"], d["metadata"]["feature_spans"]  # the HTML joins the feature texts
    d["metadata"]["original_answer"] = "\ud800 yes"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(d))  # JSON escapes them: "\udce9"
    html = tmp_path / "s.html"
    res = CliRunner().invoke(app, ["report", str(path), "--html", str(html)])
    assert res.exit_code == 0, res.output
    assert "caf\ufffd" in html.read_text(encoding="utf-8") and "\ufffd yes" in res.output
    from spex_api.engine.explanation import Explanation

    write_html(Explanation.from_dict(d), tmp_path / "t.html")
    assert "\ufffd yes" in (tmp_path / "t.html").read_text(encoding="utf-8")
