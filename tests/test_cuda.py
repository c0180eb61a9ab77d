"""The CUDA paths: bf16, 4-bit and 8-bit loading, fine-tuning and prediction with --device cuda;
the sums over an NCCL group, torch files saved on the GPU and loaded elsewhere, the GPU's generator
in checkpoints, and the GPU's peak memory.

They need a GPU and skip cleanly without one (CI has none; tests/test_devices.py covers the same
paths there with mocked hardware). On a machine with CUDA, `make test` runs them with the rest.
"""

from dataclasses import replace

import pytest
import torch

import torch.distributed as dist

from dre_pipeline.pipeline import distributed
from dre_pipeline.pipeline.artifacts import Store, load_torch, save_torch
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.pipeline.llm import load_model, resolve_llm
from dre_pipeline.pipeline.placement import compute_dtype
from dre_pipeline.hardware import native_bf16
from dre_pipeline.pipeline.runtime import peak_memory_mb, reset_peak_memory, rng_state, set_rng_state
from dre_pipeline.pipeline import commands

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llm(smollm2_store):
    # SmolLM2's widths (576, 1536) suit every bitsandbytes kernel; the tiny test Llama's do not
    return resolve_llm(None, smollm2_store)


def test_bf16_where_the_gpu_multiplies_it_natively(llm):
    assert native_bf16(CUDA) == (torch.cuda.get_device_capability(CUDA) >= (8, 0))  # emulation does not count
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
    artifact = commands.finetune(cfg, store, quiet=True, device="cuda")
    metrics = artifact.manifest
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["peak_memory_mb"]["cuda"] > 0
    row = commands.predict(replace(cfg), store, [0], device="cuda", quiet=True)[0]
    assert row["prediction"] in metrics["class_names"]


def test_soft_tokens_trained_on_the_gpu_predict_on_the_cpu(tmp_path, smollm2_store):
    store = Store(tmp_path / "store")
    store.root.mkdir()
    (store.root / "llm").symlink_to(smollm2_store.root / "llm")
    cfg = FinetuneConfig(dataset="synthetic", epochs=5, patience=5, ft_epochs=1, node_tokens="soft")
    artifact = commands.finetune(cfg, store, quiet=True, device="cuda")
    saved = torch.load(artifact.path / "graph_in_the_loop.pt", weights_only=True)
    assert all(t.is_cuda for t in saved.values())  # as a CPU machine receives it
    row = commands.predict(replace(cfg), store, [0], device="cpu", quiet=True)[0]
    assert row["prediction"] in artifact.manifest["class_names"]


@pytest.fixture
def nccl_group(tmp_path, monkeypatch):
    """A real NCCL group of one process on this GPU, which the helpers take for two (so they exchange)."""
    device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                            device_id=device)
    monkeypatch.setattr(distributed, "world", lambda: 2)
    yield device
    dist.destroy_process_group()


def test_sums_over_nccl_run_on_the_gpu(nccl_group):
    assert distributed.collective_device() == nccl_group
    assert distributed.total([0.5, 12]) == [0.5, 12.0]  # one process: the sum is its own values
    params = [torch.nn.Parameter(torch.ones(3, device=nccl_group))]
    distributed.sum_gradients(params)
    assert params[0].grad.device == nccl_group and not params[0].grad.any()


def test_gpu_tensors_load_onto_the_runs_device_and_cpu_ones_stay(tmp_path):
    path = tmp_path / "state.pt"
    save_torch({"weight": torch.ones(2, device=CUDA), "rng": rng_state(CUDA)}, path)
    on_cpu = load_torch(path, CPU)
    assert on_cpu["weight"].device == CPU and on_cpu["rng"]["cuda"].device == CPU
    last = torch.device("cuda", torch.cuda.device_count() - 1)  # another rank's GPU where there are several
    elsewhere = load_torch(path, last)
    assert elsewhere["weight"].device == last and elsewhere["rng"]["torch"].device == CPU
    set_rng_state(elsewhere["rng"], last)


def test_gpu_dropout_repeats_after_its_generator_is_restored():
    state = rng_state(CUDA)
    first = torch.nn.functional.dropout(torch.ones(1000, device=CUDA), 0.5)
    set_rng_state(state, CUDA)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(1000, device=CUDA), 0.5), first)


def test_peak_memory_is_the_runs_gpu_since_its_reset():
    reset_peak_memory(CUDA)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)
    assert peak_memory_mb(CUDA)["cuda"] >= 64
    del block
