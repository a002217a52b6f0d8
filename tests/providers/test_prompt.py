"""MaskedPrompt: splitting, names, both mask styles, chat segments, errors before spend, batch rendering."""

import numpy as np
import pytest

from providers.prompt import MaskedPrompt, Maskable, PromptError
from providers.types import Message

TEXT = "The bank by the river bank. It was (closed)!  Yes.\n\nNew para here."


def test_words_names_and_placeholder():
    p = MaskedPrompt.from_text(TEXT, template="Text: {content}\nTrue or False?", system="Be brief.")
    assert p.feature_names == ["The", "bank", "by", "the", "river", "bank#2", "It", "was", "closed", "Yes", "New", "para", "here"]
    full = p.render(p.full_mask())
    assert full == (Message("system", "Be brief."), Message("user", f"Text: {TEXT}\nTrue or False?"))
    m = p.full_mask()
    m[[1, 2]] = False  # consecutive masked words each get a placeholder
    assert p.render(m)[1].content.startswith("Text: The [UNK] [UNK] the river bank.")
    f = p.features[8]
    assert (f.text, f.message) == ("(closed)!", 1)
    assert full[1].content[f.start : f.end] == "(closed)!"


def test_remove_style_and_custom_placeholder():
    p = MaskedPrompt.from_text("a b c", mask_style="remove")
    assert p.render_text([1, 0, 1]) == "a c"
    assert p.render_text([0, 0, 0]) == ""
    q = MaskedPrompt.from_text("a b c", placeholder="___")
    assert q.render_text([0, 1, 0]) == "___ b ___"


def test_sentences_and_paragraphs():
    s = MaskedPrompt.from_text(TEXT, "sentences", mask_style="remove")
    assert s.feature_names == ["The bank by the river bank.", "It was (closed)!", "Yes.", "New para here."]
    assert s.render_text([1, 0, 1, 1]) == "The bank by the river bank. Yes.\n\nNew para here."
    p = MaskedPrompt.from_text(TEXT, "paragraphs")
    assert p.n_features == 2
    assert p.feature_names[0].endswith("…") and len(p.feature_names[0]) <= 32
    assert p.render_text([0, 1]) == "[UNK]\n\nNew para here."


def test_spans_keep_gaps_fixed():
    text = "Doc A says yes. Doc B says no. Question: which?"
    p = MaskedPrompt.from_spans(text, [(0, 15), (16, 30)], names=["A", "B"])
    assert p.feature_names == ["A", "B"]
    assert p.render_text([True, False]) == "Doc A says yes. [UNK] Question: which?"
    with pytest.raises(PromptError, match="overlapping"):
        MaskedPrompt.from_spans(text, [(0, 15), (10, 20)])
    with pytest.raises(PromptError, match="names"):
        MaskedPrompt.from_spans(text, [(0, 15)], names=["a", "b"])


def test_from_messages_marks_only_chosen_parts():
    msgs = [
        Message("system", "You judge."),
        {"role": "user", "content": ["Docs:\n", Maskable("first doc", "whole", name="doc1"), "\n", Maskable("second doc", "whole", name="doc2"), "\nQ?"]},
        {"role": "assistant", "content": "ok fine", "maskable": True},
        {"role": "user", "content": "Sure?"},
    ]
    p = MaskedPrompt.from_messages(msgs)
    assert p.feature_names == ["doc1", "doc2", "ok", "fine"]
    out = p.render([1, 0, 1, 0])
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[1].content == "Docs:\nfirst doc\n[UNK]\nQ?"
    assert out[2].content == "ok [UNK]"
    assert out[3].content == "Sure?"
    q = MaskedPrompt.from_messages([Message("user", "x y"), Message("user", "z")], maskable=[1])
    assert q.feature_names == ["z"] and q.render_text([0]) == "x y\n\n[UNK]"


def test_errors_before_spend():
    with pytest.raises(PromptError, match="empty"):
        MaskedPrompt.from_text("   ")
    with pytest.raises(PromptError, match="zero maskable"):
        MaskedPrompt.from_messages([Message("user", "fixed only")])
    with pytest.raises(PromptError, match="template"):
        MaskedPrompt.from_text("a b", template="no slot")
    with pytest.raises(PromptError, match="granularity"):
        MaskedPrompt.from_text("a b", "letters")
    p = MaskedPrompt.from_text("a b c")
    with pytest.raises(PromptError, match=r"shape \(N, 3\)"):
        p.render([1, 0])
    with pytest.raises(PromptError, match="0/1"):
        p.render([1, 2, 0])
    with pytest.raises(PromptError, match="maskable indices"):
        MaskedPrompt.from_messages([Message("user", "a")], maskable=[3])


def test_render_many_matches_render():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i % 37}" for i in range(100))
    p = MaskedPrompt.from_text(text, template="Instr: {content} Q?", system="s")
    masks = rng.random((50, 100)) < 0.5
    batch = p.render_many(masks)
    assert batch == [p.render(m) for m in masks]
    kept = [len(b[1].content.split()) for b in batch]
    assert kept == [100 + 2] * 50  # placeholders keep the word count; template adds "Instr:" and "Q?"
    removed = MaskedPrompt.from_text(text, mask_style="remove").render_many(masks)
    assert [len(r[0].content.split()) for r in removed] == masks.sum(1).tolist()
