"""Shared fixtures: the real datasets folder, a tiny random Llama, the embedded SmolLM2."""

import os
from pathlib import Path

import pytest
import torch

from dre_pipeline.artifacts import Store
from dre_pipeline.llm import embedded_gguf, resolve_llm


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """The read-only real data: $DRE_TEST_DATA, else ../shared/datasets beside the repo.

    Missing data is a failure, not a skip: these tests are the proof that real data loads.
    """
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    root = Path(os.environ.get("DRE_TEST_DATA", default))
    assert (root / "planetoid" / "Cora" / "raw").is_dir(), f"Cora raw files not found under {root}"
    return root


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2's real tokenizer, read from its GGUF file (seconds, no weights)."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = smollm2_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory) -> Store:
    """A store holding the embedded SmolLM2, de-quantized once for the whole session."""
    store = Store(tmp_path_factory.mktemp("store"))
    resolve_llm(None, store)
    return store
