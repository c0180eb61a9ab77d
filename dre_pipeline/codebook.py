"""The VQ codebook: the frozen LLM's own word embeddings (Dr.E "token-level alignment").

Token refinement keeps the vocabulary rows that read as words: no special, byte,
punctuation, digit or whitespace tokens, no short fragments, and one entry per word
regardless of case or leading-space marker. A node's codes are therefore tokens the LLM
already knows, and stage two can place them in a prompt as they are.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .artifacts import read_matrix, write_matrix

WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, SmolLM2) and SentencePiece (Llama)
LETTERS = re.compile(r"^[A-Za-z]+$")


def refine_vocabulary(tokenizer, min_chars: int, word_start_only: bool, max_codes: int, refine: bool = True) -> list:
    """Return ``[(token_id, word), ...]`` of kept tokens, most frequent (lowest merge rank) first.

    ``refine=False`` is the paper's ablation: the first ``max_codes`` rows, whatever they are.
    """
    special = set(tokenizer.all_special_ids)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if not refine:
        return [(token_id, token) for token, token_id in vocab[: max_codes or None]]
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

    @classmethod
    def load(cls, folder: Path) -> "Codebook":
        table = pq.read_table(folder / "tokens.parquet")
        return cls(read_matrix(folder / "vectors.zarr"), table["token_id"].to_numpy(), table["token"].to_pylist())

    def save(self, folder: Path) -> None:
        write_matrix(folder / "vectors.zarr", self.vectors)
        table = pa.table({
            "code_id": np.arange(len(self), dtype=np.int64),
            "token_id": np.asarray(self.token_ids, dtype=np.int64),
            "token": self.words,
        })
        pq.write_table(table, folder / "tokens.parquet")
