"""Property-based fuzzing of the public inputs (hypothesis): `preview`/`explain` arguments, prompt texts, CLI
arguments and saved-explanation JSON. Every input gets a result or a clear library error (ValueError or
TypeError with a message); a refusal sends zero requests, counted at a fake provider on loopback; the CLI
never ends in a traceback. Examples are derandomised and few, so the suite stays within seconds.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from spex_api import sdk
from spex_api.cli import app
from spex_api.engine.explanation import Explanation

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEMPLATE = "Review: {content}\nIs this review positive? Answer True or False.\nAnswer:"
MARKUP = ["[/]", "[/INST]", "a[/]b", "[link=https://evil.example]x[/link]", "[bold red]x[/]", "end\\", "{", "}"]
WORDS = ["pasta", "was", "excellent", "but", "the", "waiter", "forgot", "caf\udce9", "日本", "🙂", *MARKUP]

# Text from every Unicode category, lone surrogates (invalid UTF-8 as Python keeps it) and markup included.
any_text = st.text(st.characters(blacklist_categories=()), max_size=40)
prompt_text = st.one_of(any_text, st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)


@pytest.fixture
def server(fake_server):
    return fake_server


def requests(server) -> int:
    return server.stats()["requests"]


def _clear(exc: BaseException) -> None:
    """A library refusal: a ValueError or TypeError that says something."""
    event(f"refused: {type(exc).__name__}")
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {exc}"
    assert str(exc).strip(), type(exc).__name__


hostile_args = dict(  # what each argument may be when it is the one made hostile
    features=st.sampled_from(["words", "sentences", "paragraphs", "letters", ""]),
    template=st.one_of(st.none(), any_text, any_text.map(lambda t: t + "{content}")),
    scorer=st.sampled_from(["auto", "label-margin", "answer-logprob", "frequency", "similarity", "magic"]),
    labels=st.one_of(st.none(), any_text, st.lists(any_text, max_size=3), st.lists(st.integers(), min_size=2,
                                                                                    max_size=2)),
    max_cost=st.one_of(st.floats(), st.integers(-2, 3), st.just("1")),
    method=st.sampled_from(["auto", "spex", "proxyspex", "exhaustive", "magic"]),
    max_order=st.one_of(st.integers(-1, 7), st.floats(0, 3)),
    budget=st.one_of(st.integers(-3, 20), st.floats(), st.none(), st.text(max_size=2)),
)
VALID = dict(features="words", template=TEMPLATE, scorer="auto", labels=["True", "False"], max_cost=None,
             method="auto", max_order=5)


@settings(FUZZ, max_examples=60)
@given(prompt=prompt_text, budget=st.integers(2, 3000), data=st.data(),
       hostile=st.lists(st.sampled_from(sorted(hostile_args)), max_size=2, unique=True))
def test_preview_plans_or_refuses_and_never_sends(server, prompt, budget, data, hostile):
    """All arguments valid but at most two, each drawn from its hostile values."""
    kw = {**VALID, "budget": budget, **{name: data.draw(hostile_args[name], label=name) for name in hostile}}
    before = requests(server)
    try:
        pre = sdk.preview(prompt, base_url=server.url + "/v1", model="m", cache_dir=None, **kw)
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        _clear(exc)
    else:
        event("planned")
        assert 2 <= pre.n_queries <= kw["budget"] and pre.estimated_cost == 0.0
        Console(file=io.StringIO(), width=120).print(pre.renderable())  # the plan renders whatever the text
    assert requests(server) == before


@settings(FUZZ, max_examples=12)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), budget=st.integers(-1, 40) | st.just(17),
       max_cost=st.sampled_from([None, None, 0, 1.0, math.nan, -1.0]),
       labels=st.sampled_from([["True", "False"], ["True", "False"], None, "TF", ["True"]]),
       method=st.sampled_from(["auto", "spex", "exhaustive"]))
def test_explain_returns_an_explanation_or_refuses_before_any_request(server, words, budget, max_cost, labels,
                                                                       method):
    before = requests(server)
    try:
        expl = sdk.explain(" ".join(words), base_url=server.url + "/v1", model="m", template=TEMPLATE, budget=budget,
                           max_cost=max_cost, labels=labels, method=method, cache_dir=None, progress=False,
                           confirm=False)
    except Exception as exc:  # noqa: BLE001
        _clear(exc)
        assert requests(server) == before
    else:
        event("explained")
        assert isinstance(expl, Explanation) and expl.queries_used <= budget
        assert requests(server) - before == expl.metadata["stats"]["queries_sent"] <= budget
        Explanation.from_json(expl.to_json())  # what a run saves loads back


cli_option = st.one_of(
    st.tuples(st.just("--budget"), st.sampled_from(["-1", "0", "9", "17", "abc", "1e3", "nan"])),
    st.tuples(st.just("--max-cost"), st.sampled_from(["nan", "inf", "-1", "0", "0.5", "x"])),
    st.tuples(st.just("--labels"), st.one_of(st.sampled_from(["True,False", "TF", ",", "[/],x"]), any_text)),
    st.tuples(st.just("--template"), st.one_of(st.just(TEMPLATE), any_text)),
    st.tuples(st.just("--features"), st.sampled_from(["words", "letters"])),
    st.tuples(st.just("--method"), st.sampled_from(["auto", "spex", "magic"])),
    st.tuples(st.just("--scorer"), st.sampled_from(["auto", "similarity", "magic"])),
    st.tuples(st.just("--max-order"), st.sampled_from(["0", "2", "x"])),
    st.tuples(st.just("--provider"), st.sampled_from(["openai-compatible", "vllm", "nonsense"])),
    st.tuples(st.just("--top"), st.sampled_from(["0", "3"])),
    st.tuples(st.just("--out"), st.sampled_from(["e.json", "e.html", "e.docx", "missing/e.json"])),
    st.tuples(st.just("--timeout"), st.sampled_from(["-1", "5"])),
)


@settings(FUZZ, max_examples=25)
@given(options=st.lists(cli_option, max_size=2), prompt=st.one_of(
           st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join), st.none(), prompt_text),
       dry_run=st.booleans(), extra=st.sampled_from([[], [], [], ["--no-such-option"], ["--file", "/nonexistent"]]))
def test_cli_explain_never_ends_in_a_traceback(server, tmp_path_factory, options, prompt, dry_run, extra):
    folder = tmp_path_factory.mktemp("cli")
    """Valid arguments (a later option overrides them), then up to two drawn from hostile values."""
    args = ["explain", "--base-url", server.url + "/v1", "--model", "m", "--cache-dir", "", "--yes", "--labels",
            "True,False", "--template", TEMPLATE, "--budget", "9"]
    args += ["--dry-run"] if dry_run else []
    for name, value in options:
        args += [name, str(folder / value) if name == "--out" else value]
    args += extra + ([prompt] if prompt is not None else [])
    before = requests(server)
    res = CliRunner().invoke(app, args)
    event(f"exit {res.exit_code}")
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 1, 2) and "Traceback" not in res.output, res.output
    if res.exit_code == 2 or dry_run:
        assert requests(server) == before, res.output
    if res.exit_code != 0:
        assert "error" in res.output.lower() or "usage" in res.output.lower(), res.output


def _valid_saved() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_report import sample_explanation

    return json.loads(sample_explanation().to_json())


def _mutate(data: dict, path: list[str], value: object, delete: bool) -> object:
    """Replace (or delete) one field at `path` (top level or one level down) by an arbitrary JSON value."""
    if not path:
        return value
    target: dict = data
    for key in path[:-1]:
        nxt = target.get(key)
        if not isinstance(nxt, dict):
            break
        target = nxt
    if delete:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return data


field_path = st.sampled_from(
    [[], ["n"], ["method"], ["queries_used"], ["fourier"], ["fourier", "keys"], ["fourier", "values"], ["plan"],
     ["faithfulness"], ["faithfulness_detail"], ["feature_names"], ["cost"], ["metadata"], ["diagnostics"],
     ["noise"], ["removal"], ["format_version"], ["metadata", "original_answer"], ["metadata", "text"],
     ["metadata", "feature_texts"], ["metadata", "feature_spans"], ["metadata", "original_score"],
     ["metadata", "budget"], ["metadata", "labels"], ["metadata", "scorer"], ["plan", "reason"]])


@settings(FUZZ, max_examples=40)
@given(path=field_path, value=json_value, delete=st.booleans())
def test_report_on_mutated_saved_json_renders_or_exits_2(tmp_path_factory, path, value, delete):
    folder = tmp_path_factory.mktemp("report")
    data = _mutate(_valid_saved(), path, value, delete)
    saved = folder / "x.json"
    saved.write_text(json.dumps(data))
    try:
        Explanation.from_json(saved.read_text())
    except Exception as exc:  # noqa: BLE001
        _clear(exc)
    res = CliRunner().invoke(app, ["report", str(saved), "--html", str(folder / "r.html"), "--top", "3"])
    event(f"exit {res.exit_code}")
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output
    assert (res.exit_code == 0) == (folder / "r.html").exists()
