"""The CUDA paths: bf16, 4-bit and 8-bit loading, fine-tuning and prediction with --device cuda.

They need a GPU and skip cleanly without one (CI has none). On a machine with CUDA,
`make test` runs them with the rest.
"""

from dataclasses import replace

import pytest
import torch

from dre_pipeline.artifacts import Store
from dre_pipeline.config import FinetuneConfig
from dre_pipeline.llm import compute_dtype, load_model, resolve_llm
from dre_pipeline.runtime import native_bf16
from dre_pipeline.stages import finetune, predict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def llm(smollm2_store):
    # SmolLM2's widths (576, 1536) suit every bitsandbytes kernel; the tiny test Llama's do not
    return resolve_llm(None, smollm2_store)


def test_bf16_where_the_gpu_multiplies_it_natively(llm):
    model = load_model(llm, CUDA)
    expected = torch.bfloat16 if native_bf16(CUDA) else torch.float32
    assert compute_dtype(CUDA) == expected and model.dtype == expected
    assert next(model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("quantization, layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_loading(llm, quantization, layer):
    model = load_model(llm, CUDA, quantization)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    logits = model(torch.tensor([[1, 2, 3]], device=CUDA)).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_finetune_and_predict_on_cuda(tmp_path, smollm2_store, quantization):
    store = Store(tmp_path / "store")
    store.root.mkdir()
    (store.root / "llm").symlink_to(smollm2_store.root / "llm")  # the de-quantized SmolLM2, shared
    cfg = FinetuneConfig(dataset="synthetic", epochs=5, patience=5, ft_epochs=1, quantization=quantization)
    artifact = finetune.run(cfg, store, quiet=True, device="cuda")
    metrics = artifact.manifest
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["peak_memory_mb"]["cuda"] > 0
    row = predict.run(replace(cfg), store, [0], device="cuda", quiet=True)[0]
    assert row["prediction"] in metrics["class_names"]
