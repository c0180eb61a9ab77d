"""What ``dre-pipeline plan`` computes from, read without loading weights: the LLM's shapes from its configuration,
the memory of the device and host it plans for, and a prompt's tokens estimated from the graph's text and classes.
:mod:`.memory_plan` turns them into each stage's peak."""

import math
import os
import re
from pathlib import Path

from ..errors import InputError
from .memory_plan import DTYPE_BYTES, GiB, ModelShape, Target


def parse_size(text: str) -> int:
    """``24GB``, ``80 GiB``, ``512MB`` or a plain number of GB, as bytes (GB and GiB both read as 2**30: card makers'
    "24 GB" is 24 GiB)."""
    units = {"": GiB, "g": GiB, "gb": GiB, "gib": GiB, "m": 2**20, "mb": 2**20, "mib": 2**20, "t": 2**40, "tb": 2**40,
             "tib": 2**40}
    number = text.strip().lower()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = number[len(digits):].strip()
    try:
        value = float(digits)
    except ValueError:
        value = -1
    if unit not in units or not value > 0:
        raise InputError(f"expected a memory size such as 24GB or 512MB, got {text!r}")
    return int(value * units[unit])


def model_shape(config, name: str) -> ModelShape:
    """Sizes of the causal LM ``config`` describes, counted on a model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    layers = model.get_decoder().layers
    linear = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    targets = {n.rsplit(".", 1)[-1]: (m.in_features, m.out_features) for n, m in layers[0].named_modules()
               if isinstance(m, torch.nn.Linear)}
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    stored = str(getattr(config, "dtype", None) or "float32")
    return ModelShape(name=name, hidden=config.hidden_size, layers=len(layers),
                      kv_dim=kv_heads * head_dim,
                      intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
                      vocab=head.weight.shape[0], linear_params=linear, other_params=total - linear,
                      target_inputs=targets, file_bytes=2 if "16" in stored else 4)


# What a prompt is made of, in tokens, where no tokenizer is at hand (SmolLM2's chat template on Cora: a prefix of
# 72 tokens for 117 characters of class names, a node part of 37 for T = 3, K = 4).
PREFIX_BASE_TOKENS, CHARS_PER_TOKEN, CHARS_PER_CLASS = 48, 5, 15
VIEW_LEAD_TOKENS, CLOSE_TOKENS, TEXT_LEAD_TOKENS, ANSWER_TOKENS = 6, 7, 5, 3
TOKENS_PER_WORD, TITLE_TOKENS = 1.4, 6


def prompt_tokens(cfg, text_tokens: int) -> int:
    """S: per view its lead and K words, the text's lead and ``text_tokens`` of it, the close and the answer."""
    text = TEXT_LEAD_TOKENS + text_tokens if text_tokens else 0
    views = 0 if cfg.node_tokens == "none" else cfg.num_views * (VIEW_LEAD_TOKENS + cfg.codes_per_view)
    return views + text + CLOSE_TOKENS + ANSWER_TOKENS


def text_tokens(texts: list, titled: bool, budget: int) -> int:
    """The longest node text's tokens, from its words (BPE makes about 1.4 tokens of an English word and its
    punctuation), up to ``budget``; a titled text adds its "Title: ... Abstract:" labels."""
    words = max(len(text.split()) for text in texts)
    return min(budget, math.ceil(TOKENS_PER_WORD * words) + (TITLE_TOKENS if titled else 0))


def prefix_tokens(classes: int, class_names: list = None) -> int:
    """P: the task and every class name (their characters where known)."""
    chars = len(", ".join(class_names)) if class_names else CHARS_PER_CLASS * classes
    return PREFIX_BASE_TOKENS + math.ceil(chars / CHARS_PER_TOKEN)


def read_config(llm_path):
    """The transformers config of ``--llm-path`` (a folder with config.json alone will do, or a GGUF file's
    metadata; default the embedded SmolLM2), and a name for it. No weights are read."""
    from pathlib import Path

    from transformers import AutoConfig

    from ..pipeline.llm import embedded_gguf

    path = Path(llm_path).expanduser() if llm_path else embedded_gguf()
    try:
        if path.is_dir() and (path / "config.json").is_file():
            return AutoConfig.from_pretrained(path), path.name
        if path.is_file() and path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name), path.name
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--llm-path {path}: transformers cannot read its configuration "
                         f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from err
    raise InputError(f"--llm-path {path}: expected a folder with config.json or a .gguf file")


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def target(device: str, device_memory, host_memory, precision: str) -> Target:
    """``--device`` (a device this machine need not have), its memory (default: the device's own, where it is
    here) and ``--precision``, the compute dtype (``auto``: as :func:`~dre_pipeline.pipeline.placement.compute_dtype`
    picks; a GPU not here is taken to be bf16-capable, Ampere or newer)."""
    import torch

    from ..model.quantizer import search_dtype

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    named = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if named is None:
        raise InputError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    here = device.startswith("cuda") and torch.cuda.is_available() and int(named.group(1) or 0) < torch.cuda.device_count()
    host = parse_size(host_memory) if host_memory else machine_memory()
    if device_memory:
        memory = parse_size(device_memory)
    elif device == "cpu":
        memory = host
    elif here:
        memory = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        raise InputError(f"--device {device}: this machine has no such GPU; give its memory with --device-memory 24GB")
    dtype = precision
    if precision == "auto":
        from ..pipeline.placement import resolved_precision

        dtype = resolved_precision(torch.device(device)) if here or device == "cpu" else "bf16"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    search = 2 if search_dtype(torch.device("cpu")) == torch.bfloat16 else 4  # stage one searches on this CPU
    return Target(kind, DTYPE_BYTES[dtype], memory if kind == "cuda" else host, host, search, dtype)


def graph_shape(cfg, store, nodes, edges, feature_dim, classes, prompt_text_tokens, shared_prefix_tokens) -> tuple:
    """(the graph's sizes as :class:`~.memory_plan.GraphShape`, their source's name): given, or read from
    ``--dataset`` (loaded: its own features, no text features computed). ``prompt_text_tokens``,
    ``shared_prefix_tokens``: ``--text-tokens``, ``--prefix-tokens`` (None: estimated)."""
    from . import memory_plan as mp

    given = {"--nodes": nodes, "--edges": edges, "--feature-dim": feature_dim, "--classes": classes}
    for option, value in {**given, "--text-tokens": prompt_text_tokens, "--prefix-tokens": shared_prefix_tokens}.items():
        if value is not None and value < (0 if option == "--text-tokens" else 1):
            raise InputError(f"{option} must be {'0 or more' if option == '--text-tokens' else 'at least 1'}, got {value}")
    if any(v is not None for v in given.values()):
        missing = [option for option, value in given.items() if value is None]
        if missing:
            raise InputError(f"give the graph's sizes together: {', '.join(missing)} missing (or --dataset alone)")
        names, messages, class_names, text = "given sizes", 2 * edges, None, prompt_text_tokens or 0
    else:
        from ..data import load_dataset

        data = load_dataset(cfg.dataset, cfg.data_dir, store.root / "data", seed=cfg.seed)
        names, nodes, messages, classes = data.name, data.num_nodes, data.edge_index.size(1), data.num_classes
        feature_dim, class_names = data.x.size(1), data.class_names
        has_text = cfg.use_text and data.text is not None
        text = prompt_text_tokens if prompt_text_tokens is not None else (
            text_tokens(data.text, data.titles is not None, cfg.max_text_tokens) if has_text else 0)
    graph = mp.GraphShape(nodes, messages, feature_dim, classes, prompt_tokens(cfg, text),
                          shared_prefix_tokens or prefix_tokens(classes, class_names))
    return graph, names


def planned(cfg, model: ModelShape, graph, where: Target) -> tuple:
    """(rows, graph, quantization): :func:`.memory_plan.plan` of ``cfg``'s stages as its run would take them: the
    node features as wide as ``--features`` makes them, ``--quantization auto`` resolved for the device, stage one's
    batch as ``encode`` chooses it."""
    from dataclasses import replace

    from . import memory_plan
    from ..pipeline.placement import auto_quantization
    from ..pipeline.stages.encode import mini_batch_size

    if cfg.features in ("llm", "sbert"):  # text features: the LLM's width, or MiniLM's
        graph = replace(graph, feature_dim=model.hidden if cfg.features == "llm" else 384)
    quantization = auto_quantization(where.device) if cfg.quantization == "auto" else cfg.quantization
    seeds = mini_batch_size(cfg, graph.nodes, graph.messages, graph.feature_dim, model.hidden)
    return memory_plan.plan(model, graph, replace(cfg, quantization=quantization), where, seeds), graph, quantization
