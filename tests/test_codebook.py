"""Token refinement on the real SmolLM2 tokenizer."""

import re

from dre_pipeline.data import text_vocabulary
from dre_pipeline.model.codebook import refine_vocabulary


def test_refinement_keeps_only_words(smollm2_tokenizer):
    tok = smollm2_tokenizer
    kept = refine_vocabulary(tok, min_chars=3, word_start_only=True, max_codes=0)
    ids = [i for i, _ in kept]
    words = [w for _, w in kept]
    assert 10_000 < len(kept) < len(tok)
    assert not set(ids) & set(tok.all_special_ids)
    assert all(re.fullmatch(r"[A-Za-z]{3,}", w) for w in words)
    assert len({w.lower() for w in words}) == len(words)  # no case or marker duplicates
    # every kept token begins a word and reads back as that word
    assert all(tok.convert_ids_to_tokens(i) == "Ġ" + w for i, w in kept)
    assert ids == sorted(ids)  # most frequent (lowest merge rank) first


def test_thresholds_are_honoured(smollm2_tokenizer):
    all_words = refine_vocabulary(smollm2_tokenizer, 3, word_start_only=True, max_codes=0)
    longer = refine_vocabulary(smollm2_tokenizer, 6, word_start_only=True, max_codes=0)
    fragments = refine_vocabulary(smollm2_tokenizer, 3, word_start_only=False, max_codes=0)
    capped = refine_vocabulary(smollm2_tokenizer, 3, word_start_only=True, max_codes=500)
    assert len(longer) < len(all_words) < len(fragments)
    assert all(len(w) >= 6 for _, w in longer)
    assert capped == all_words[:500]


def test_without_refinement_rows_are_taken_as_they_are(smollm2_tokenizer):
    raw = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=100, refine=False)
    assert [i for i, _ in raw] == list(range(100))  # special and punctuation tokens included


def test_word_lists_drop_fragments_and_function_words(smollm2_tokenizer):
    plain = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=0)
    whole = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=0, whole_words=True)
    content = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=0, whole_words=True, drop_function_words=True)
    plain_words = {w.lower() for _, w in plain}
    whole_words = {w.lower() for _, w in whole}
    content_words = {w.lower() for _, w in content}
    fragments = {"includ", "comput", "proble", "signific"}
    assert fragments <= plain_words and not fragments & whole_words
    assert {"networks", "bayesian", "probabilistic", "learning"} <= whole_words
    assert {"the", "and", "for"} <= whole_words and not {"the", "and", "for", "which"} & content_words
    # filters only remove: the order (frequency) of what stays is the plain one
    whole_set, content_set = set(whole), set(content)  # built once: a set per element made this test 70 s
    assert [t for t in plain if t in whole_set] == whole
    assert [t for t in whole if t in content_set] == content


def test_an_allowed_vocabulary_keeps_only_its_words_in_frequency_order(smollm2_tokenizer):
    vocabulary = text_vocabulary(["Bayesian networks: 2 NETWORKS, learning", "xyzzyq genetic"])
    assert vocabulary == {"bayesian", "networks", "learning", "xyzzyq", "genetic"}
    every = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=0)
    narrowed = refine_vocabulary(smollm2_tokenizer, 3, True, max_codes=0, allowed=vocabulary)
    assert {w.lower() for _, w in narrowed} == {"bayesian", "networks", "learning", "genetic"}  # no token for xyzzyq
    assert narrowed == [t for t in every if t[1].lower() in vocabulary]
