"""Semantic scorer: the numpy all-MiniLM-L6-v2 against embeddings recorded with sentence-transformers, its
batching and cache, its refusals before spend, and its scores on answers from the real local server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from providers.adapters import make_adapter
from providers.scorers import ScorerError
from providers.types import Completion

semantic = pytest.importorskip("providers.semantic")
if not semantic.available():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI installs the semantic scorer's weights: {semantic.INSTALL_HINT}")
    pytest.skip(f"semantic extra not installed ({semantic.INSTALL_HINT})", allow_module_level=True)

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "minilm_reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def encoder():
    return semantic.MiniLMEncoder(batch_size=4)


def test_embeddings_match_sentence_transformers(encoder) -> None:
    """Empty, whitespace-only, accented, CJK, emoji and a 400-token text (truncated at 256) included."""
    ours = encoder.encode(REFERENCE["texts"])
    theirs = np.asarray(REFERENCE["embeddings"])
    assert ours.shape == theirs.shape == (len(REFERENCE["texts"]), 384)
    assert np.abs(ours - theirs).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_batches_and_cache_give_the_same_embeddings(encoder) -> None:
    texts = REFERENCE["texts"][:6]
    single = np.stack([semantic.MiniLMEncoder(cache_size=0, model_dir=encoder.model_dir).encode([t])[0]
                       for t in texts])
    fresh = semantic.MiniLMEncoder(batch_size=3, cache_size=2)
    batched = fresh.encode(texts + texts[:2])  # padding inside a batch must not change an embedding
    np.testing.assert_allclose(batched[:6], single, atol=2e-6)
    np.testing.assert_array_equal(batched[6:], batched[:2])
    hits = fresh.hits
    fresh.encode(texts[-2:])  # the last two are still in the bounded cache
    assert fresh.hits == hits + 2 and len(fresh._cache) == 2
    assert encoder.encode([]).shape == (0, 384)


def test_scorer_ranks_paraphrase_above_off_topic_and_averages_samples(encoder) -> None:
    configured = semantic.SemanticSimilarity(encoder=encoder)
    adapter = make_adapter("anthropic", "claude-3-5-haiku-latest", api_key="sk-ant-test-0000000000")
    with pytest.raises(ScorerError, match="bind"):
        configured.score(Completion(("x",)))
    scorer = configured.bind(adapter, Completion(("No, pulling the lever is wrong.",), finish_reasons=("stop",)))
    same, para, off = scorer.score_many([
        Completion(("No, pulling the lever is wrong.",)),
        Completion(("It is not acceptable to divert the trolley.",)),
        Completion(("The pasta was excellent.",)),
    ])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert para > off + 0.2
    two = scorer.score(Completion(("No, pulling the lever is wrong.", "The pasta was excellent.")))
    assert two == pytest.approx((same + off) / 2, abs=1e-6)


def test_bad_settings_and_missing_weights_are_refused_before_spend(tmp_path) -> None:
    with pytest.raises(ScorerError, match="samples > 1"):
        semantic.SemanticSimilarity(samples=2)
    with pytest.raises(ScorerError, match="model.safetensors"):
        semantic.SemanticSimilarity(model_dir=tmp_path).validate(adapter=None)
    with pytest.raises(ScorerError, match="batch_size"):
        semantic.MiniLMEncoder(batch_size=0)


def test_sdk_picks_semantic_for_free_text_without_logprobs() -> None:
    from spex_api import sdk

    assert sdk.preview("Is it wrong to pull the lever?", provider="anthropic", api_key="sk-test",
                       budget=300).scorer.name == "semantic_similarity"
    with pytest.raises(ValueError, match="takes no labels"):
        sdk.preview("Is it wrong?", provider="anthropic", api_key="sk-test", scorer="semantic",
                    labels=["True", "False"], budget=300)


@pytest.mark.live
async def test_semantic_scores_of_real_local_answers(local_server, encoder) -> None:
    """Real Gemma answers to masked prompts: the unmasked prompt reproduces its answer (score 1), masking the
    subject changes the answer and lowers the score; every score is a cosine in [-1, 1]."""
    from providers.adapters import make_adapter
    from providers.prompt import MaskedPrompt
    from providers.runner import Runner
    from providers.value_function import LLMValueFunction

    prompt = MaskedPrompt.from_text("The capital of France is Paris.", template="Repeat this sentence: {content}")
    adapter = make_adapter("llama-server", local_server.model, base_url=local_server.base_url)
    scorer = semantic.SemanticSimilarity(max_tokens=24, stop=("\n",), encoder=encoder)
    vf = LLMValueFunction(prompt, adapter, scorer, Runner(adapter, concurrency=1), progress=False)
    ref = await vf.reference()
    n = prompt.n_features
    masks = np.array([[1] * n, [0] * n, [1, 1, 1, 0, 0, 0][:n] + [1] * max(0, n - 6)], dtype=bool)
    scores = await vf(masks)
    assert ref.text.strip()
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(scores >= -1.0) and np.all(scores <= 1.0)
    assert scores[1] < scores[0] - 0.05
