"""Shared fixtures: the real datasets folder, a tiny random Llama, the embedded SmolLM2, one tiny run."""

import os
from pathlib import Path

import json

import numpy as np
import pytest

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.llm import build_tiny_llama, embedded_gguf, resolve_llm

# ogb's import asks PyPI for a newer ogb in a thread; offline, its warning lands in whichever test is running
# (seen in test_fuzz's no-warning check on the floor venv).
os.environ.setdefault("OUTDATED_IGNORE", "1")


def csr_arrays(prefix: str, matrix, spelling: str = "{}_matrix.{}") -> dict:
    """A scipy CSR matrix as the sparse-npz layout's arrays, in either key spelling."""
    matrix = matrix.tocsr()
    return {spelling.format(prefix, part): np.array(matrix.shape) if part == "shape" else getattr(matrix, part)
            for part in ("data", "indices", "indptr", "shape")}


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
def tiny_llm(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved as a model folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory) -> Store:
    """A store holding the embedded SmolLM2, de-quantized once for the whole session."""
    store = Store(tmp_path_factory.mktemp("store"))
    resolve_llm(None, store)
    return store


# A few seconds for the three stages and the joint pass on the tiny Llama.
TINY_RUN = ["--dataset", "synthetic", "--epochs", "2", "--eval-epochs", "1", "--ft-epochs", "1", "--lora-layers", "1",
            "--max-codes", "300", "--joint", "--quiet"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_llm) -> tuple:
    """A store after one ``finetune TINY_RUN`` under ``--log-dir``: (its store folder, its log folder). Read it,
    never change it."""
    from typer.testing import CliRunner

    from dre_pipeline.cli import app

    root = tmp_path_factory.mktemp("tiny-run")
    store, logs = root / "store", root / "logs"
    result = CliRunner().invoke(app, ["finetune", *TINY_RUN, "--llm-path", str(tiny_llm), "--store", str(store),
                                      "--log-dir", str(logs)])
    assert result.exit_code == 0, result.output
    return store, logs


def artifact_times(store: Path) -> dict:
    """Every artifact folder of ``store`` with its manifest's creation time: equal before and after a cache hit."""
    return {str(p): json.loads((p / "manifest.json").read_text())["created"] for p in sorted(store.glob("*/[!.]*"))}
