"""The VQ codebook: the frozen LLM's own word embeddings (Dr.E "token-level alignment").

Token refinement keeps the vocabulary rows that read as words: no special, byte,
punctuation, digit or whitespace tokens, no short fragments, and one entry per word
regardless of case or leading-space marker. A node's codes are therefore tokens the LLM
already knows, and stage two can place them in a prompt as they are.

Two word lists from maintained packages sharpen that: ``whole_words`` keeps a token only
where wordfreq has seen it as an English word (BPE word-starts such as "affili" or
"individ" are prefixes, rarely words), and ``drop_function_words`` removes scikit-learn's
English stop words ("the", "and", "for"), which otherwise fill the residual levels.
On a text-attributed graph, ``allowed`` narrows the codebook to the words of the graph's
own text (:func:`dre_pipeline.data.text_vocabulary`): the codes then read as the corpus's words ("bayesian",
"crossover", "reinforcement") rather than any English word that happens to separate the classes.
"""

import re
from dataclasses import dataclass

import numpy as np
import torch


WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, SmolLM2) and SentencePiece (Llama)
LETTERS = re.compile(r"^[A-Za-z]+$")
# wordfreq's Zipf scale is log10 of occurrences per billion words: 2.5 is about once in
# three million. It keeps rare topic words ("bayesian" 2.95, "probabilistic" 2.86) and
# drops BPE prefixes ("individ" 1.63, "barri" 1.91, "affili" 0).
WHOLE_WORD_MIN_ZIPF = 2.5


def is_whole_word(word: str) -> bool:
    """Whether ``word`` is an English word in its own right, not a BPE fragment."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en") >= WHOLE_WORD_MIN_ZIPF


def function_words() -> frozenset:
    """English function words, from a maintained list rather than one typed here."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


def refine_vocabulary(tokenizer, min_chars: int, word_start_only: bool, max_codes: int, refine: bool = True,
                      whole_words: bool = False, drop_function_words: bool = False,
                      allowed: frozenset = None) -> list:
    """Return ``[(token_id, word), ...]`` of kept tokens, most frequent (lowest merge rank) first.

    ``refine=False`` is the paper's ablation: the first ``max_codes`` rows, whatever they are.
    ``allowed``: lower-case words a kept token must read as (None: any).
    """
    special = set(tokenizer.all_special_ids)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if not refine:
        return [(token_id, token) for token, token_id in vocab[: max_codes or None]]
    excluded = function_words() if drop_function_words else frozenset()
    kept, seen = [], set()
    for token, token_id in vocab:
        if token_id in special:
            continue
        starts_word = token.startswith(WORD_START_MARKERS)
        word = token[1:] if starts_word else token
        if word_start_only and not starts_word:
            continue
        if len(word) < min_chars or not LETTERS.match(word) or word.lower() in seen:
            continue
        if allowed is not None and word.lower() not in allowed:
            continue  # before the word-list look-up, which is the slow check
        if word.lower() in excluded or (whole_words and not is_whole_word(word.lower())):
            continue
        seen.add(word.lower())
        kept.append((token_id, word))
        if max_codes and len(kept) == max_codes:
            break
    return kept


@dataclass
class Codebook:
    vectors: torch.Tensor  # [M, d] the LLM's input embeddings of the kept tokens
    token_ids: np.ndarray  # [M] vocabulary id of each code
    words: list  # [M] the word each code reads as

    def __len__(self) -> int:
        return len(self.words)
