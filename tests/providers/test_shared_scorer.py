"""One configured scorer shared by many runs (explain_many hands the caller's instance to every prompt): each
run scores against its own reference answer, and the caller's scorer is never changed."""

from __future__ import annotations

import numpy as np
import pytest

from providers.adapters import make_adapter
from providers.prompt import MaskedPrompt
from providers.runner import Runner
from providers.scorers import AnswerSimilarity, LabelMargin, ScorerError
from providers.value_function import LLMValueFunction
from spex_api import sdk

TEMPLATE = "Review: {content}\nPositive?"
# The fake server answers "True. Done" to the first and "False. Done" to the second (a hash of the prompt).
PROMPTS = ("The pasta was excellent.", "Great staff.")


@pytest.fixture
def server(fake_server):
    """The shared fake provider (tests/conftest.py), its counters and faults reset for each test."""
    return fake_server


def _vf(server, text, scorer):
    adapter = make_adapter("compatible", "gemma", base_url=server.url + "/v1")
    prompt = MaskedPrompt.from_text(text, granularity="words", template=TEMPLATE)
    return LLMValueFunction(prompt, adapter, scorer, Runner(adapter), progress=False)


async def test_two_runs_sharing_a_scorer_each_score_against_their_own_reference(server):
    shared = AnswerSimilarity(max_tokens=8)
    before = dict(vars(shared))
    a, b = (_vf(server, text, shared) for text in PROMPTS)
    ref_a, ref_b = await a.reference(), await b.reference()  # as explain_many's threads interleave
    assert ref_a.text != ref_b.text
    full = np.ones((1, a.n), dtype=bool)
    assert (await a(full))[0] == 1.0  # a's unmasked answer IS its reference (b's would score 2/3)
    assert (await b(np.ones((1, b.n), dtype=bool)))[0] == 1.0
    assert vars(shared) == before


def test_explain_many_leaves_the_shared_scorer_unchanged(server, tmp_path):
    shared = AnswerSimilarity(max_tokens=8)
    before = dict(vars(shared))
    out = sdk.explain_many(list(PROMPTS), base_url=server.url + "/v1", template=TEMPLATE, scorer=shared,
                           budget=60, cache_dir=str(tmp_path), progress=False, confirm=False, concurrency=2)
    assert [e.metadata["original_answer"] for e in out] == ["True. Done", "False. Done"]
    assert [e.metadata["original_score"] for e in out] == [1.0, 1.0]
    assert vars(shared) == before


def test_a_configured_scorer_is_immutable_and_binding_resolves_per_adapter(server):
    scorer = LabelMargin(top_logprobs=20)
    with pytest.raises(AttributeError, match="immutable"):
        scorer.top_logprobs = 5
    capped = make_adapter("compatible", "gemma", base_url=server.url + "/v1", max_top_logprobs=5)
    bound = scorer.bind(capped)
    assert bound.request(()).top_logprobs == 5 and scorer.request(()).top_logprobs == 20
    assert bound.bound_hits == 0 and bound is not scorer


def test_a_reference_scorer_scores_only_once_bound_to_its_reference(server):
    scorer = AnswerSimilarity(max_tokens=8)
    adapter = make_adapter("compatible", "gemma", base_url=server.url + "/v1")
    from providers.types import Completion

    with pytest.raises(ScorerError, match="bind"):
        scorer.score(Completion(texts=("True",)))
    with pytest.raises(ScorerError, match="empty"):
        scorer.bind(adapter, Completion(texts=("  ",)))
    bound = scorer.bind(adapter, Completion(texts=("True. Done",)))
    assert bound.score(Completion(texts=("True. Done",))) == 1.0 and scorer.reference is None


def test_explain_builds_its_adapter_and_plan_once(server, tmp_path, monkeypatch):
    import providers.adapters
    import spex_api.engine.planner

    built: dict[str, int] = {}

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            built[name] = built.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counting(providers.adapters, "make_adapter")
    counting(spex_api.engine.planner, "plan")
    expl = sdk.explain(PROMPTS[0], base_url=server.url + "/v1", template=TEMPLATE, labels=["True", "False"],
                       budget=60, cache_dir=str(tmp_path), progress=False, confirm=False)
    assert built == {"make_adapter": 1, "plan": 1}
    # the original answer is counted once; the noise pilot's masks may repeat design masks (asked once)
    assert expl.queries_used == expl.metadata.stats.queries_sent + expl.metadata.stats.cache_hits
    assert expl.queries_used <= expl.plan.total + sdk.REFERENCE_QUERIES <= 60
