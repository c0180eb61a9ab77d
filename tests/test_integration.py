"""The embedded SmolLM2-135M on real Cora: codebook and encode, as `make all` runs them."""

import json
import time

import pyarrow.parquet as pq
import pytest

from dre_pipeline.config import EncodeConfig
from dre_pipeline.llm import resolve_llm
from dre_pipeline.stages import codebook, encode

pytestmark = pytest.mark.integration


def test_gguf_is_dequantized_once(smollm2_store):
    started = time.time()
    llm = resolve_llm(None, smollm2_store)
    assert time.time() - started < 5  # the session fixture converted it; this is a cache hit
    assert (llm.folder / "model.safetensors").is_file() and llm.name.endswith(".gguf")


def test_codebook_and_encode_on_cora(smollm2_store, datasets_root):
    cfg = EncodeConfig(dataset="cora", data_dir=str(datasets_root / "planetoid"), epochs=4, patience=4)
    book = codebook.run(cfg, smollm2_store)
    assert book.manifest["total"] == 49152 and book.manifest["dim"] == 576
    assert book.manifest["kept"] == cfg.max_codes

    artifact = encode.run(cfg, smollm2_store, quiet=True)
    table = pq.read_table(artifact.path / "codes.parquet")
    assert table.num_rows == 2708
    assert table.column("split").to_pylist().count("train") == 1625
    words = [w for row in table["view1_words"].to_pylist() for w in row]
    assert all(w.isalpha() and len(w) >= 3 for w in words)
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and len(metrics["perplexity"]) == 3
    assert metrics["label_head_accuracy"]["train"] > 1 / 7  # it learned something in four epochs

    again = encode.run(cfg, smollm2_store, quiet=True)
    assert again.cached and again.path == artifact.path
