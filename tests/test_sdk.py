"""spex_api.explain / explain_many: everything is validated and planned before any spend, and the real
local model run returns a complete explanation; a batch shares one runner and its cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spex_api import sdk
from spex_api.engine.explanation import Explanation
from spex_api.engine.metadata import RunMetadata
from test_cli import counting_server  # noqa: F401 - fixture

FEW_SHOT = (
    "Decide whether each review is positive. Answer True or False.\n\n"
    "Review: Great food and friendly staff.\nPositive: True\n\n"
    "Review: The soup was cold and the waiter was rude.\nPositive: False\n\n"
    "Review: {content}\nPositive:"
)
TEXT = "The pasta was excellent but the waiter forgot our order twice."


def test_import_spex_api_does_not_load_providers():
    code = "import sys, spex_api; assert 'providers' not in sys.modules and 'openai' not in sys.modules; " \
           "f = spex_api.explain; assert callable(f) and callable(spex_api.explain_many)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_preview_plans_within_budget_and_sends_nothing(counting_server):  # noqa: F811
    base_url, hits = counting_server
    pre = sdk.preview(TEXT, base_url=base_url, template=FEW_SHOT, labels=["True", "False"], budget=200)
    assert pre.prompt.n_features == 11 and pre.n_queries <= 200
    assert pre.plan.total == pre.n_queries - 1 and pre.estimated_cost == 0.0
    assert pre.scorer.name == "label_margin"
    assert hits == []


def test_auto_scorer_follows_provider_capabilities(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000000000")
    assert sdk.preview(TEXT, labels=["True", "False"], budget=300).scorer.name == "label_margin"  # openai by key
    assert sdk.preview(TEXT, budget=300).scorer.name == "answer_logprob"
    claude = sdk.preview(TEXT, provider="anthropic", labels=["True", "False"], budget=300)
    assert claude.scorer.name == "answer_frequency" and claude.model == sdk.DEFAULT_MODELS["anthropic"]
    # free text without logprobs: meaning (semantic extra) when installed, else string similarity
    from providers.semantic import available

    sdk._semantic_available.cache_clear()
    expected = "semantic_similarity" if available() else "answer_similarity"
    assert sdk.preview(TEXT, provider="anthropic", budget=300).scorer.name == expected
    monkeypatch.setattr("providers.semantic.available", lambda: False)
    sdk._semantic_available.cache_clear()
    assert sdk.preview(TEXT, provider="anthropic", budget=300).scorer.name == "answer_similarity"
    sdk._semantic_available.cache_clear()


def test_cost_estimate_and_cap_checked_before_spend(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    pre = sdk.preview(TEXT, provider="openai", template=FEW_SHOT, labels=["True", "False"], budget=1000)
    assert 0 < pre.estimated_cost < 1.0
    with pytest.raises(ValueError, match="exceeds max_cost"):
        sdk.explain(TEXT, provider="openai", template=FEW_SHOT, labels=["True", "False"], budget=1000,
                    max_cost=pre.estimated_cost / 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scorer="magic"), "unknown scorer"),
        (dict(scorer="similarity", labels=["True", "False"]), "takes no labels"),
        (dict(features="letters"), "features must be"),
        (dict(budget=1), "budget must be"),
        (dict(budget=20), "below the minimum"),
        (dict(provider="openai", raw_completion=True, api_key="sk-test-0000000000000000"), "raw_completion"),
        (dict(provider="openai", base_url="https://gateway.example/v1", model="gpt-4o", max_cost=1.0,
              api_key="sk-test-0000000000000000"), "max_cost cannot be enforced"),
    ],
)
def test_bad_input_raises_before_spend(kwargs, message, counting_server):  # noqa: F811
    base_url, hits = counting_server
    kwargs = {"base_url": base_url, **kwargs} if "provider" not in kwargs else kwargs
    with pytest.raises(ValueError, match=message):
        sdk.explain(TEXT, **kwargs)
    assert hits == []


def test_explain_many_rejects_a_single_string():
    with pytest.raises(TypeError):
        sdk.explain_many(TEXT)


@pytest.mark.live
def test_explain_end_to_end_on_local_server(local_server, tmp_path):
    expl = sdk.explain(TEXT, base_url=local_server.base_url, template=FEW_SHOT, labels=["True", "False"],
                       budget=90, cache_dir=str(tmp_path), progress=False, verify_removal=3)
    assert isinstance(expl, Explanation)
    assert 0 < expl.queries_used <= 90 and expl.cost == 0.0
    # the repeat-noise pilot (8 masks asked twice, a real re-ask past the cache) and the removal check
    assert expl.plan.n_noise == 16 and expl.noise.n_pairs == 8 and 0 <= expl.noise.r2_ceiling <= 1
    steps = expl.removal.steps
    assert [len(s["removed"]) for s in steps] == [1, 2, 3] and all(np.isfinite(s["measured"]) for s in steps)
    assert expl.faithfulness is not None and np.isfinite(expl.faithfulness)
    meta = expl.metadata
    assert isinstance(meta, RunMetadata) and meta.original_answer.strip() in ("True", "False")
    assert meta.feature_texts[:2] == ("The", "pasta") and meta.model == local_server.model
    assert meta.scorer == "label_margin" and meta.stats.bound_hits == 0
    assert np.isfinite(meta.original_score) and (meta.original_score > 0) == (meta.original_answer.strip() == "True")
    assert [meta.text[a:b] for a, b in meta.feature_spans] == list(meta.feature_texts)
    assert meta["original_answer"] == meta.original_answer  # still reads like the mapping it replaced
    assert Explanation.from_json(expl.to_json()).metadata == meta


@pytest.mark.live
def test_explain_many_shares_one_cache(local_server, tmp_path):
    prompts = [TEXT, "Great location, friendly staff, but the room was tiny."]
    kw = dict(base_url=local_server.base_url, template=FEW_SHOT, labels=["True", "False"], budget=60,
              cache_dir=str(tmp_path), progress=False)
    first = sdk.explain_many(prompts, **kw)
    assert [e.metadata["feature_texts"][0] for e in first] == ["The", "Great"]
    assert all(e.queries_used <= 60 and e.metadata["stats"]["queries_sent"] > 0 for e in first)
    again = sdk.explain_many(prompts, **kw)  # resumed from the shared disk cache: nothing is sent
    assert [e.metadata["stats"]["queries_sent"] for e in again] == [0, 0]
    assert [e.metadata["stats"]["cache_hits"] for e in again] == [e.queries_used for e in again]
    for a, b in zip(first, again):
        assert np.allclose(a.fourier.values, b.fourier.values)
