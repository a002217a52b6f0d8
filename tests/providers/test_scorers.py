"""Scorers: margins, the missing-label bound, teacher forcing alignment, sampling log-odds, similarity,
and validation errors raised before any spend (checked against capability records, no network)."""

import math
import pytest

from providers.adapters import make_adapter
from providers.scorers import (
    AnswerFrequency,
    AnswerLogprob,
    AnswerSimilarity,
    LabelMargin,
    ScorerError,
    ScoringError,
    char_ngram_cosine,
    missing_bound,
    token_f1,
)
from providers.types import Completion, Message, TokenLogprob, Usage

MSGS = (Message("user", "Is the sky blue? Answer True or False."),)
# Real adapters (constructing one sends nothing); the key is a dummy and never leaves the process.
OPENAI = make_adapter("openai", "gpt-4o-mini", api_key="sk-dummy")
VLLM = make_adapter("vllm", "qwen", base_url="http://127.0.0.1:9/v1")
ANTHROPIC = make_adapter("anthropic", "claude-3-5-haiku-latest", api_key="sk-ant-dummy")


def comp(*positions, texts=("x",), prompt=None, usage=Usage(), finish=("stop",)):
    lps = tuple(TokenLogprob(t, lp, tuple(top)) for t, lp, top in positions)
    return Completion(texts=texts, logprobs=(lps,) if positions else None, prompt_logprobs=prompt, usage=usage, finish_reasons=finish)


def test_label_margin_sums_variants():
    s = LabelMargin().bind(OPENAI)
    r = s.request(MSGS)
    assert (r.max_tokens, r.top_logprobs, r.temperature, r.raw_completion) == (1, 20, 0.0, False)
    assert LabelMargin(raw_completion=True).request(MSGS).raw_completion
    top = [("True", math.log(0.5)), (" true", math.log(0.2)), ("False", math.log(0.1)), ("Yes", math.log(0.05))]
    c = comp(("True", math.log(0.5), top))
    assert s.score(c) == pytest.approx(math.log(0.7) - math.log(0.1))
    assert s.bound_hits == 0
    strict = LabelMargin(case_sensitive=True).bind(OPENAI)
    assert strict.score(c) == pytest.approx(math.log(0.5) - math.log(0.1))


def test_missing_label_uses_bound_not_floor():
    top = [("True", math.log(0.6)), ("Yes", math.log(0.3)), ("Sure", math.log(0.05))]
    # unlisted mass 0.05, least listed 0.05 -> bound log(0.05)
    assert missing_bound([lp for _, lp in top]) == pytest.approx(math.log(0.05))
    top2 = [("True", math.log(0.6)), ("Yes", math.log(0.38))]  # remaining 0.02 < p_min 0.38
    s = LabelMargin().bind(OPENAI)
    value = s.score(comp(("True", math.log(0.6), top2)))
    assert value == pytest.approx(math.log(0.6) - math.log(0.02))
    assert s.bound_hits == 1
    assert value < 100  # no -100 floor
    full = [("True", math.log(0.9)), ("Yes", math.log(0.1))]  # listed mass 1: bound below p_min
    assert missing_bound([lp for _, lp in full]) == pytest.approx(math.log(0.1) + math.log(1e-6))


def test_label_matches_are_remembered_within_a_bound(monkeypatch):
    """The matcher remembers each token's label (answers repeat a small vocabulary) but never more than
    _MATCH_MEMO tokens, and answers the same whether a token was remembered or not."""
    import providers.scorers as scorers

    monkeypatch.setattr(scorers, "_MATCH_MEMO", 3)
    matcher = LabelMargin(labels=("Yes", "No")).matcher
    tokens = [" yes", "YES", "No", " maybe", "no ", "Yes", " yes"]
    first = [matcher.which(t) for t in tokens]
    assert first == [0, 0, 1, None, 1, 0, 0]
    assert [matcher.which(t) for t in tokens] == first  # now partly from memory
    assert len(matcher._seen) == 3


def test_logsumexp_and_bound_match_numpy_on_many_lists():
    """The float-only sums agree with numpy's to rounding on lists like top_logprobs' (1-20 values)."""
    import numpy as np

    from providers.scorers import _logsumexp

    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 20):
        for _ in range(50):
            raw = rng.dirichlet(np.ones(size + 1))[:size]  # listed probabilities, an unlisted remainder
            lps = list(np.log(raw))
            m = max(lps)
            assert _logsumexp(lps) == pytest.approx(float(m + np.log(np.exp(np.array(lps) - m).sum())), abs=1e-12)
            rest = 1.0 - raw.sum()
            expect = math.log(raw.min()) + math.log(1e-6) if rest <= 1e-12 else math.log(min(raw.min(), rest))
            assert missing_bound(lps) == pytest.approx(expect, abs=1e-9)


def test_label_margin_skips_markup_tokens_when_max_tokens_gt_1():
    s = LabelMargin(max_tokens=3).bind(OPENAI)
    c = comp(("**", -0.1, [("**", -0.1), ("True", -3.0)]), ("False", -0.2, [("False", -0.2), ("True", -1.9)]))
    # position 0 already lists a label ("True") -> it is the scored position; False bounded there
    a, b, bounded = s.label_logprobs(c)
    assert a == pytest.approx(-3.0) and bounded
    c2 = comp(("\n", -0.1, [("\n", -0.1)]), ("False", -0.2, [("False", -0.2), ("True", -1.9)]))
    assert s.score(c2) == pytest.approx(-1.9 + 0.2)
    # no label anywhere: the first real token's position is scored (both labels bounded there -> 0)
    c3 = comp(("\n", -0.01, [("\n", -0.01)]), ("Hello", -0.5, [("Hello", -0.5), ("Hi", -1.2)]), ("x", -0.1, [("True", -0.2)]))
    assert s.label_logprobs(c3) == (pytest.approx(missing_bound([-0.5, -1.2])),) * 2 + (True,)


def test_label_margin_validation_before_spend():
    with pytest.raises(ScorerError, match="does not return"):
        LabelMargin().validate(ANTHROPIC)
    with pytest.raises(ScorerError, match="max_tokens=0 is too small"):
        LabelMargin(max_tokens=0)
    with pytest.raises(ScorerError, match="top_logprobs"):
        LabelMargin(top_logprobs=50)
    with pytest.raises(ScorerError, match="collide"):
        LabelMargin(labels=("True", "true"))
    tok = {"True": [1], "False": [2], "Definitely": [3, 4]}
    with pytest.raises(ScorerError, match="'Definitely' is 2 tokens"):
        LabelMargin(labels=("True", "Definitely"), tokenizer=tok.__getitem__).validate(OPENAI)
    LabelMargin(tokenizer=tok.__getitem__).validate(OPENAI)
    # OpenAI's own API: tiktoken decides (offline encoding when the model's BPE file is unreachable)
    with pytest.raises(ScorerError, match="tokens for openai:gpt-4o-mini"):
        LabelMargin(labels=("True", "Unquestionably-false")).validate(OPENAI)
    capped = make_adapter("llama-server", "gemma", base_url="http://127.0.0.1:9/v1", max_top_logprobs=5)
    configured = LabelMargin()
    s = configured.bind(capped)
    assert s.request(MSGS).top_logprobs == 5 and configured.request(MSGS).top_logprobs == 20
    with pytest.raises(ScoringError, match="no token logprobs"):
        s.score(Completion(texts=("True",)))


def test_answer_logprob_first_token():
    s = AnswerLogprob().bind(OPENAI)
    with pytest.raises(ScorerError, match="reference"):
        s.score(comp(("Paris", -0.1, [("Paris", -0.1)])))
    ref = comp(("Paris", -0.1, [("Paris", -0.1)]), (".", -0.2, []), texts=("Paris.",))
    s = AnswerLogprob().bind(OPENAI, ref)
    assert s.reference_request(MSGS).max_tokens == 64
    assert s.request(MSGS).max_tokens == 1
    assert s.score(comp(("Lyon", -0.5, [("Lyon", -0.5), ("Paris", -1.5)]))) == pytest.approx(-1.5)
    assert s.score(comp(("Lyon", math.log(0.9), [("Lyon", math.log(0.9))]))) == pytest.approx(math.log(0.1))
    with pytest.raises(ScorerError, match="prompt logprobs"):
        AnswerLogprob(mode="sequence").validate(OPENAI)


def test_answer_logprob_sequence_teacher_forcing():
    configured = AnswerLogprob(mode="sequence")
    s = configured.bind(VLLM)
    probe = s.request(MSGS)  # before the reference: the request's shape, for capability checks only
    assert probe.prompt_logprobs == 1 and probe.messages == MSGS
    with pytest.raises(ScorerError, match="reference"):
        s.score(Completion(texts=("x",), prompt_logprobs=(TokenLogprob("a", -1.0),)))
    s = configured.bind(VLLM, Completion(texts=("Paris is nice",)))
    r = s.request(MSGS)
    assert r.prompt_logprobs == 1 and r.messages[-1] == Message("assistant", "Paris is nice")
    toks = [("<user>", -9.0), ("Q", -3.0), ("<model>", -0.1), ("Paris", -0.5), (" is", -0.25), (" nice", -1.0), ("<end>", -0.01), ("\n", -0.02)]
    prompt = tuple(TokenLogprob(t, lp) for t, lp in toks)
    assert s.score(Completion(texts=("x",), prompt_logprobs=prompt)) == pytest.approx(-1.75)
    with pytest.raises(ScoringError, match="locate"):
        s.score(Completion(texts=("x",), prompt_logprobs=prompt[:4]))


def test_answer_logprob_sequence_refuses_a_truncated_reference():
    for finish in ("length", "max_tokens"):  # OpenAI chat/legacy/Responses, Anthropic
        s = AnswerLogprob(mode="sequence", reference_max_tokens=2)
        with pytest.raises(ScorerError, match=rf"cut off at reference_max_tokens=2 .finish_reason='{finish}'.*raise"):
            s.bind(VLLM, Completion(texts=("Paris is",), usage=Usage(9, 2), finish_reasons=(finish,)))
        assert s.reference is None
    first = AnswerLogprob(reference_max_tokens=2)  # only the first token counts there: a long answer is fine
    first.bind(OPENAI, comp(("Paris", -0.1, [("Paris", -0.1)]), texts=("Paris is",), finish=("length",)))


async def test_truncated_reference_stops_the_value_function_before_masked_queries(monkeypatch):
    from providers.prompt import MaskedPrompt
    from providers.value_function import LLMValueFunction

    adapter = make_adapter("vllm", "qwen", base_url="http://127.0.0.1:9/v1")
    sent = []

    async def exchange(request):
        sent.append(request)
        return Completion(texts=("Fire is hot because",), usage=Usage(12, 4), finish_reasons=("length",)), {}

    monkeypatch.setattr(adapter, "exchange", exchange)
    prompt = MaskedPrompt.from_text("Fire is hot.", template="Why? {content}")
    vf = LLMValueFunction(prompt, adapter, AnswerLogprob(mode="sequence", reference_max_tokens=4), progress=False)
    with pytest.raises(ScorerError, match="reference_max_tokens=4"):
        await vf([[True] * prompt.n_features, [False] * prompt.n_features])
    assert len(sent) == 1 and sent[0].max_tokens == 4  # only the reference query was paid for


def test_answer_frequency_log_odds():
    s = AnswerFrequency(samples=6, smoothing=0.5).bind(ANTHROPIC)
    r = s.request(MSGS)
    assert (r.samples, r.temperature, r.max_tokens) == (6, 1.0, 4)
    c = Completion(texts=("True.", "true", "**False**", "TRUE!", "I think so", "False"))
    assert s.counts(c) == (3, 2)
    assert s.score(c) == pytest.approx(math.log(3.5 / 2.5))
    with pytest.raises(ScorerError, match="temperature"):
        AnswerFrequency(samples=4, temperature=0)
    with pytest.raises(ScorerError, match="smoothing"):
        AnswerFrequency(smoothing=0)
    with pytest.raises(ScorerError, match="too small for label 'Absolutely'"):
        AnswerFrequency(labels=("Absolutely", "No"), max_tokens=1, tokenizer=lambda t: t.split("l")).validate(ANTHROPIC)


def test_answer_frequency_matches_multi_word_labels_and_the_longest_label():
    s = AnswerFrequency(labels=("Absolutely not", "Yes"), samples=3).bind(ANTHROPIC)
    assert s.counts(Completion(texts=("Absolutely not.",) * 3)) == (3, 0)
    answers = ("**Absolutely   NOT**", " absolutely not, because...", "Yes!", "Absolutely", "Absolutely nothing", "Yesterday")
    assert s.counts(Completion(texts=answers)) == (2, 1)
    assert s.score(Completion(texts=("Absolutely not.",) * 3)) == pytest.approx(math.log(3.5 / 0.5))
    nested = AnswerFrequency(labels=("Yes", "Yes and no"), samples=4)
    assert nested.counts(Completion(texts=("Yes and no.", "yes, and no", "YES AND NO!", "yes"))) == (2, 2)
    strict = AnswerFrequency(labels=("Yes", "yes"), case_sensitive=True, samples=2)
    assert strict.counts(Completion(texts=("yes.", "Yes it is"))) == (1, 1)


def test_answer_frequency_refuses_labels_answers_cannot_tell_apart():
    with pytest.raises(ScorerError, match="equal once"):
        AnswerFrequency(labels=("Not sure.", "not   sure"))
    with pytest.raises(ScorerError, match="equal once"):
        AnswerFrequency(labels=("**Yes**", "yes"))
    with pytest.raises(ScorerError, match="empty"):
        AnswerFrequency(labels=("...", "Yes"))
    with pytest.raises(ScorerError, match="empty"):
        AnswerFrequency(labels=(" ", "Yes"))


def test_answer_frequency_max_tokens_must_hold_every_label_before_spend():
    # Anthropic: no tokenizer is known, so the generous estimate (a token per word or per 3 characters) applies
    with pytest.raises(ScorerError, match=r"max_tokens=1 is too small for label 'Absolutely not' \(about 5 tokens"):
        AnswerFrequency(labels=("Absolutely not", "Yes"), max_tokens=1).validate(ANTHROPIC)
    with pytest.raises(ScorerError, match="'No way' .about 2 tokens"):
        AnswerFrequency(labels=("Yes", "No way"), max_tokens=1).validate(ANTHROPIC)
    AnswerFrequency(labels=("Absolutely not", "Yes"), max_tokens=5).validate(ANTHROPIC)
    # OpenAI's own API: tiktoken counts exactly ("Absolutely not" is 2 tokens)
    AnswerFrequency(labels=("Absolutely not", "Yes"), max_tokens=2).validate(OPENAI)
    with pytest.raises(ScorerError, match=r"'Absolutely not' \(2 tokens\)"):
        AnswerFrequency(labels=("Absolutely not", "Yes"), max_tokens=1).validate(OPENAI)
    # default max_tokens: room for the longest label (at least 4), exact where the tokenizer is known
    auto = AnswerFrequency(labels=("Absolutely not", "Unquestionably yes"))
    assert auto.request(MSGS).max_tokens == 6
    assert auto.bind(ANTHROPIC).request(MSGS).max_tokens == 6
    assert auto.bind(OPENAI).request(MSGS).max_tokens == 4
    assert auto.request(MSGS).max_tokens == 6  # binding leaves the configured scorer as it was
    exact = AnswerFrequency(labels=("Absolutely not", "Yes"), tokenizer=lambda t: t)  # one token per character
    assert exact.bind(ANTHROPIC).request(MSGS).max_tokens == 14


def test_answer_similarity():
    assert token_f1("The cat sat.", "the cat sat") == 1.0
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("a b c d", "a b") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert char_ngram_cosine("running", "running") == pytest.approx(1.0)
    assert 0 < char_ngram_cosine("running fast", "runs fast") < 1
    configured = AnswerSimilarity(max_tokens=8)
    for finish in ("length", "max_tokens"):
        with pytest.raises(ScorerError, match="max_tokens=8 is too small: the reference answer was cut off"):
            configured.bind(ANTHROPIC, Completion(texts=("a long answer",), usage=Usage(5, 8), finish_reasons=(finish,)))
    # an answer that ended by itself is whole, even when the provider allowed more tokens than asked
    # (the Responses API generates at least 16)
    configured.bind(ANTHROPIC, Completion(texts=("The cat sat on the mat",), usage=Usage(5, 12),
                                          finish_reasons=("completed",)))
    s = configured.bind(ANTHROPIC, Completion(texts=("The cat sat",), usage=Usage(5, 3), finish_reasons=("stop",)))
    assert s.request(MSGS).max_tokens == 8
    assert s.score(Completion(texts=("the cat", "a dog sat"))) == pytest.approx((0.8 + 1 / 3) / 2)
    with pytest.raises(ScorerError, match="metric"):
        AnswerSimilarity(metric="bleu")


def test_answer_similarity_settings_are_refused_before_spend():
    with pytest.raises(ScorerError, match="max_tokens"):
        AnswerSimilarity(max_tokens=0)
    with pytest.raises(ScorerError, match="stop sequences"):
        AnswerSimilarity(stop=("\n", ""))
    with pytest.raises(ScorerError, match="temperature"):
        AnswerSimilarity(temperature=-0.5)
    with pytest.raises(ScorerError, match="temperature"):
        AnswerSimilarity(samples=3)


def test_every_scorer_builds_a_value_function_before_any_spend():
    """The runtime's LLMValueFunction validates scorer + adapter in its constructor (no network)."""
    from providers.prompt import MaskedPrompt
    from providers.value_function import LLMValueFunction

    prompt = MaskedPrompt.from_text("Fire is hot.", template="True or False? {content}")
    for adapter, scorer in [
        (OPENAI, LabelMargin()),
        (OPENAI, AnswerLogprob()),
        (VLLM, AnswerLogprob(mode="sequence")),
        (ANTHROPIC, AnswerFrequency(samples=3)),
        (ANTHROPIC, AnswerSimilarity()),
    ]:
        LLMValueFunction(prompt, adapter, scorer, progress=False)
    with pytest.raises(ScorerError, match="top_logprobs"):
        LLMValueFunction(prompt, ANTHROPIC, LabelMargin(), progress=False)
