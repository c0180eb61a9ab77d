"""LLM resolution: folders, GGUF files, the embedded default, clear errors."""

import pytest
import torch

from dre_pipeline.artifacts import Store
from dre_pipeline.errors import InputError
from dre_pipeline.llm import quantization_config, resolve_device, resolve_llm


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
    with pytest.raises(InputError):
        resolve_device("tpu")
