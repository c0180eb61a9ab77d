"""``dre-pipeline codebook``: refine the LLM vocabulary into the VQ codebook."""

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import Artifact, Store, artifact_key, digest, read_matrix, write_matrix
from ...model.codebook import Codebook, refine_vocabulary
from .. import run_file
from ..config import CodebookConfig, key_fields, subset
from ...errors import InputError
from ..llm import ResolvedLLM, load_embeddings, load_tokenizer
from ..runtime import log

# What the codebook's key holds besides the LLM's identity and the vocabulary it is narrowed to.
KEY_FIELDS = ("refine", "min_chars", "word_start_only", "whole_words", "drop_function_words", "max_codes")


def codebook_key(cfg: CodebookConfig, llm: ResolvedLLM, vocabulary: frozenset = None) -> str:
    narrowed = {"vocabulary": digest(sorted(vocabulary))} if vocabulary is not None else {}
    return artifact_key({"llm": llm.identity, "settings": key_fields(cfg, KEY_FIELDS), **narrowed})


def run(cfg: CodebookConfig, llm: ResolvedLLM, store: Store, vocabulary: frozenset = None, force: bool = False,
        cached_only: bool = False) -> Artifact:
    """The codebook of ``llm`` (the command's, resolved once); ``vocabulary``: keep only these words (a graph's
    own text vocabulary), None keeps any word."""
    key = codebook_key(cfg, llm, vocabulary)
    if found := store.lookup("codebook", key, force, cached_only):
        return found
    started = time.time()
    tokenizer = load_tokenizer(llm)
    kept = refine_vocabulary(tokenizer, cfg.min_chars, cfg.word_start_only, cfg.max_codes, cfg.refine,
                             cfg.whole_words, cfg.drop_function_words, vocabulary)
    if not kept:  # an empty codebook would be cached and then fail inside encode
        among = " among the graph's own words" if vocabulary is not None else ""
        raise InputError(f"token refinement keeps none of {llm.name}'s tokens{among} (--min-chars {cfg.min_chars}): "
                         "lower --min-chars or pass --no-refine")
    embeddings = load_embeddings(llm)
    token_ids = [token_id for token_id, _ in kept]
    codebook = Codebook(embeddings[token_ids].contiguous(), token_ids, [word for _, word in kept])
    manifest = {
        "llm": {"name": llm.name, "identity": llm.identity, "folder": str(llm.folder)},
        "settings": key_fields(cfg, KEY_FIELDS),
        "kept": len(kept),
        "total": embeddings.shape[0],
        "vocabulary_words": len(vocabulary) if vocabulary is not None else None,
        "dim": embeddings.shape[1],
        "seconds": round(time.time() - started, 2),
    }
    with store.writing("codebook", key, manifest) as out:
        save(codebook, out)
        run_file.write(out / "run.toml", subset(cfg, CodebookConfig))  # encode's config reaches here too
    log.info("codebook: refined %s's vocabulary in %.1fs", llm.name, manifest["seconds"])
    return store.find("codebook", key, cached=False)


def save(codebook: Codebook, folder: Path) -> None:
    """The artifact's files: ``vectors.zarr`` [M, d] and ``tokens.parquet`` (code id, token id, word)."""
    write_matrix(folder / "vectors.zarr", codebook.vectors)
    pq.write_table(pa.table({"code_id": np.arange(len(codebook), dtype=np.int64),
                             "token_id": np.asarray(codebook.token_ids, dtype=np.int64), "token": codebook.words}),
                   folder / "tokens.parquet")


def load(artifact: Artifact) -> Codebook:
    table = pq.read_table(artifact.path / "tokens.parquet")
    return Codebook(read_matrix(artifact.path / "vectors.zarr"), table["token_id"].to_numpy(),
                    table["token"].to_pylist())
