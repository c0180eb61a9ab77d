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


def test_quantization_needs_cuda_unless_auto():
    cpu = torch.device("cpu")
    assert quantization_config("none", cpu) is None
    assert quantization_config("auto", cpu) is None
    with pytest.raises(InputError, match="needs a CUDA device"):
        quantization_config("8bit", cpu)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError):
        resolve_device("tpu")
