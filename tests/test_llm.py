"""LLM resolution: folders, GGUF files, the embedded default, clear errors."""

import json
import shutil

import pytest
import torch

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.errors import InputError
from dre_pipeline.pipeline import llm, placement
from dre_pipeline.pipeline.llm import _check_gguf, embedded_gguf, quantization_config, resolve_llm
from dre_pipeline.pipeline.placement import resolve_device
from dre_pipeline.pipeline import commands


def test_folder_resolves_to_itself_with_stable_identity(tmp_path, tiny_llm):
    store = Store(tmp_path)
    a, b = resolve_llm(str(tiny_llm), store), resolve_llm(str(tiny_llm), store)
    assert a.folder == tiny_llm and a.identity == b.identity


@pytest.mark.parametrize("make", ["missing", "empty_dir", "wrong_file"])
def test_bad_paths_name_what_was_expected(tmp_path, make):
    path = tmp_path / "model"
    if make == "empty_dir":
        path.mkdir()
    elif make == "wrong_file":
        path = tmp_path / "weights.bin"
        path.write_bytes(b"0")
    with pytest.raises(InputError, match="Hugging Face model folder"):
        resolve_llm(str(path), Store(tmp_path / "store"))


def test_quantization_on_cpu_where_bitsandbytes_can(tiny_llm, tmp_path):
    cpu = torch.device("cpu")
    assert quantization_config("none", cpu) is None
    assert quantization_config("auto", cpu) is None  # auto quantizes where memory is scarce: on CUDA
    assert quantization_config("8bit", cpu).load_in_8bit
    assert quantization_config("4bit", cpu).load_in_4bit  # widths unknown: left to bitsandbytes
    tiny = resolve_llm(str(tiny_llm), Store(tmp_path / "store"))  # hidden size 32: below the 4-bit CPU block
    with pytest.raises(InputError, match="multiples of 64"):
        quantization_config("4bit", cpu, tiny)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="--device must be auto, cpu or cuda\\[:N\\], got 'tpu'"):
        resolve_device("tpu")


def broken_copy(tmp_path, tiny_llm, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llm, folder)
    damage(folder)
    return folder


def truncate(path, keep: float = 0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def shard_index_naming_a_missing_shard(folder):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text('{"model_type": "llama",'), r"config.json: not readable JSON"),
    (lambda f: (f / "config.json").write_text('{"hidden_size": 32}'), r"config.json: no model_type"),
    (lambda f: (f / "config.json").write_text('{"model_type": "vit"}'), r"model_type 'vit' is not a causal language"),
    (lambda f: (f / "model.safetensors").unlink(), r"no weights \(model.safetensors or pytorch_model.bin"),
    (lambda f: truncate(f / "model.safetensors"), r"model.safetensors: not a readable safetensors file, truncated"),
    (shard_index_naming_a_missing_shard, r"index.json: names shard\(s\) the folder lacks: model-00002-of-00002"),
    (lambda f: (f / "tokenizer.json").unlink(), r"no tokenizer \(none of tokenizer.json"),
    (lambda f: (f / "tokenizer.json").write_text("{"), r"tokenizer.json: not readable JSON"),
])
def test_a_broken_model_folder_is_refused_at_resolve_naming_the_file(tmp_path, tiny_llm, damage, message):
    folder = broken_copy(tmp_path, tiny_llm, damage)
    with pytest.raises(InputError, match=message) as error:
        resolve_llm(str(folder), Store(tmp_path / "store"))
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"", r"not a readable GGUF file, truncated or damaged \(cannot mmap an empty file\)"),
    (lambda data: data[:20], r"not a readable GGUF file, truncated or damaged"),
    (lambda data: data[:-100], r"not a readable GGUF file, truncated or damaged"),  # inside the last tensor
    (lambda data: b"GGML" + data[4:], r"GGUF magic invalid"),
])
def test_a_corrupt_or_truncated_gguf_is_refused_before_any_conversion(tmp_path, damage, message):
    from test_fuzz import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    path.write_bytes(damage(path.read_bytes()))
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match=message) as error:
        resolve_llm(str(path), store)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not list(store.root.glob("llm/[!.]*"))


def test_checking_the_embedded_gguf_reads_its_metadata_and_dequantizes_nothing(monkeypatch):
    import gguf

    def refuse(*args, **kwargs):
        raise AssertionError("the check de-quantized a tensor")

    monkeypatch.setattr(gguf, "dequantize", refuse)
    monkeypatch.setattr(gguf.quants, "dequantize", refuse)
    _check_gguf(embedded_gguf())  # passes: the shipped model is sound


def test_an_unquantized_model_loads_straight_onto_its_gpu(tmp_path, tiny_llm, monkeypatch):
    """Placed by the load itself, not loaded into host memory and moved after (a second copy of the weights there)."""
    from transformers import AutoModelForCausalLM

    calls, real = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(placement, "native_bf16", lambda device: True)  # an A100, say
    # without a GPU the weights stay on the CPU; what counts is the placement the load was asked for
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda folder, **kwargs: calls.append(kwargs)
                        or real(folder))
    model = llm.load_model(resolve_llm(str(tiny_llm), Store(tmp_path)), torch.device("cuda", 1))
    assert calls == [{"dtype": torch.bfloat16, "device_map": {"": 1}}]
    assert next(model.parameters()).device.type == "cpu"  # not moved after the load


def test_an_unquantized_model_loads_onto_the_cpu_frozen_in_fp32(tmp_path, tiny_llm):
    from transformers import AutoModelForCausalLM

    model = llm.load_model(resolve_llm(str(tiny_llm), Store(tmp_path)), torch.device("cpu"), precision="fp32")
    plain = AutoModelForCausalLM.from_pretrained(tiny_llm)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids).logits, plain(ids).logits)


@pytest.fixture
def recorded_loads(monkeypatch):
    """Every ``AutoModelForCausalLM.from_pretrained`` call's keyword arguments; the load itself goes ahead."""
    from transformers import AutoModelForCausalLM

    calls, real = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    return calls


def test_the_codebook_reads_the_embedding_matrix_alone_and_the_same_as_a_full_load(tmp_path, tiny_llm, recorded_loads):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_llm, dtype=torch.float32).get_input_embeddings().weight.detach()
    recorded_loads.clear()
    matrix = llm.load_embeddings(resolve_llm(str(tiny_llm), Store(tmp_path)))
    assert recorded_loads == []  # no model built for it
    assert matrix.dtype == torch.float32 and torch.equal(matrix, full)


def test_a_checkpoint_without_safetensors_loads_whole_for_its_embeddings(tmp_path, tiny_llm, recorded_loads):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llm)
    folder = broken_copy(tmp_path, tiny_llm, lambda f: (f / "model.safetensors").unlink())
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    recorded_loads.clear()
    matrix = llm.load_embeddings(resolve_llm(str(folder), Store(tmp_path / "store")))
    assert len(recorded_loads) == 1 and torch.equal(matrix, model.get_input_embeddings().weight.detach())


def test_one_finetune_loads_the_graph_once_and_identifies_the_model_once(tmp_path, tiny_llm, monkeypatch):
    """The command resolves its inputs once and hands them down, the joint pass's plain run included."""
    from dre_pipeline.pipeline import llm as llm_module
    from dre_pipeline.pipeline.artifacts import Store
    from dre_pipeline.pipeline.config import FinetuneConfig
    from dre_pipeline.pipeline import resolve as resolve_module

    counts = {"graph": 0, "model": 0}

    def counted(name, original):
        def call(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(resolve_module, "load_dataset", counted("graph", resolve_module.load_dataset))
    monkeypatch.setattr(llm_module, "_folder_identity", counted("model", llm_module._folder_identity))
    llm_module._resolved_folder.cache_clear()
    cfg = FinetuneConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=2, ft_epochs=1, joint_epochs=1,
                         batch_size=16, joint=True, lora_layers=1)
    commands.finetune(cfg, Store(tmp_path), quiet=True, device="cpu")
    assert counts == {"graph": 1, "model": 1}


def test_a_gguf_is_hashed_once_per_process_while_it_is_unchanged(smollm2_store, monkeypatch):
    from dre_pipeline.pipeline import llm as llm_module
    from dre_pipeline.pipeline.artifacts import file_digest

    reads = []
    monkeypatch.setattr(llm_module, "file_digest", lambda path: reads.append(path) or file_digest(path))
    llm_module._file_identity.cache_clear()
    identities = {resolve_llm(None, smollm2_store).identity for _ in range(3)}
    assert len(identities) == 1 and len(reads) == 1
