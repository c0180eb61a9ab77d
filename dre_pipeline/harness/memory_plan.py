r"""Each stage's expected peak memory, from the model's configuration and the graph's sizes alone.

``dre-pipeline plan`` reads no weights: the LLM's shapes come from its ``config.json`` (or a GGUF
file's metadata) through a model built on the meta device, the graph's from its loader or from
``--nodes/--edges/--feature-dim/--classes`` (:mod:`.plan_inputs` reads them). :func:`plan` is pure
arithmetic over those shapes.

"Peak" is the largest sum of live tensors (and the few large Python objects) a stage holds at once,
above a loaded interpreter: what ``VmHWM`` grows by over the resident size after imports on a CPU,
and what ``torch.cuda.max_memory_allocated`` reports on a GPU (the CUDA context, which it does not
count, is added as its own line before the fit is judged).

Notation: N nodes, E messages (columns of the undirected ``edge_index``), F feature width, C classes,
d the LLM's hidden size, L its layers of which :math:`L_t` carry LoRA (``--lora-layers``, 0 = all) and
:math:`L_f = L - L_t` are frozen, :math:`d_{kv}` = KV heads x head size, I the MLP width, V the
vocabulary, M codebook words (``--max-codes``), T views, K codes per view, B the batch, S a prompt's own
tokens (its longest row: a batch is padded to it), P the shared prefix, b bytes of the compute dtype,
s of the code search's, q bytes per quantized weight.

- **weights**: :math:`q \cdot n_{linear} + b \cdot n_{other}` with :math:`n_{linear}` the decoder's
  linear layers (what bitsandbytes quantizes) and :math:`n_{other}` embeddings, norms, LM head;
  q = b, 1 (LLM.int8: int8 + a per-row scale) or 0.5 + 4/64 (nf4 + an fp32 absmax per 64-block).
- **LoRA + AdamW**: :math:`20\, r \sum (in + out)` over the targets of the :math:`L_t` layers: fp32
  weight, gradient, two moments and the best-state snapshot early stopping keeps.
- **prefix KV**: :math:`2 L P d_{kv} b`, stored once (batch 1) and attended to by every row.
- **frozen-layer cache**: :math:`\min(4\,\mathrm{GiB},\ N S d b)`: each prompt's hidden states above
  the frozen layers (:data:`~dre_pipeline.model.predictor.FROZEN_CACHE_BYTES` caps it).
- **step activations**, the largest of: training, :math:`B S L_t (a + 2 d_{kv} b) + 8 B V`, with per
  token and trained layer :math:`a = 8d + 5 \sum_{targets} in + 4 b d + 3 b I` (two RMSNorms' fp32
  inputs; per LoRA target its fp32 dropped input and mask; q, k, v repeated to every head and the
  attention output; the MLP's gate, its activation and up) and the rows' own keys/values; filling the
  cache, :math:`32 S (2 L_f d_{kv} b + (4d + 2I) b)` (a chunk of prompts, no gradient); scoring,
  :math:`32 S (2 L d_{kv} b + (4d + 2I) b) + 8 \cdot 32 V`.
- **stage one** (on the command's device, :mod:`~dre_pipeline.pipeline.placement`; on a GPU the graph as loaded
  stays on the host too): graph :math:`4NF + 16E + 9N`; codebook :math:`4Md` and search tables
  :math:`(dM + M^2)(s + 4)` (fp32 before the cast; the Gram matrix only up to 1 GiB) and one chunk's search
  buffers :math:`\min(512, n) M (4 + s)` (scores and Gram rows); GNN :math:`20\, n_{gnn}` (weights, gradient,
  AdamW, snapshot); activations on a step of n nodes and e messages :math:`4(12 T n d + 6 e d + e \max(F, d)
  + n(2F + C + Td))`: about a dozen ``[n, d]`` tensors per view (SAGEConv's two products and sum,
  dropout, ELU, the word-scale normalisation, the quantized sum, the straight-through output), the
  adjacency loss's endpoint rows of the positive and the sampled negative edges (where e exceeds
  :func:`~dre_pipeline.model.losses.pair_chunk`, one chunk's three ``[chunk, d]`` tensors instead:
  :math:`3 \cdot` ``PAIR_CHUNK_BYTES``), one hop's messages.
  A mini-batch of :math:`b_s` seeds draws :math:`D = b_s(1 + \sum_t \prod_{i \le t} k_i)` nodes,
  :math:`n = N(1 - e^{-D/N})` of them distinct, :math:`e = \min(E, D - b_s)`.
"""

import math
from dataclasses import dataclass, field

from ..errors import InputError

GiB = 2**30
# What a GPU holds outside the allocator: the CUDA context, cuBLAS workspaces, the allocator's rounding.
CUDA_CONTEXT_BYTES = 1 * GiB
# The codebook stage's tokenizer, wordfreq's English list and the sorted vocabulary: measured 76 MiB (SmolLM2)
# and 115 MiB (a 2-layer Llama with its tokenizer) above the embeddings; the middle.
WORD_LISTS_BYTES = 100 * 2**20
# A prompt token held in a Python list: an 8-byte pointer and, above 256, a 28-byte int.
PYTHON_TOKEN_BYTES = 36
NF4_BYTES = 0.5 + 4 / 64
DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass
class ModelShape:
    """The LLM's sizes, from its configuration (no weights)."""

    name: str
    hidden: int
    layers: int
    kv_dim: int  # KV heads x head size
    intermediate: int
    vocab: int
    linear_params: int  # the decoder's nn.Linear weights: what k-bit quantization shrinks
    other_params: int  # embeddings, norms, the LM head (once where tied)
    target_inputs: dict  # LoRA target name -> (in, out) features, per layer
    file_bytes: int = 4  # bytes per weight as the checkpoint stores them


@dataclass
class GraphShape:
    nodes: int
    messages: int  # columns of the undirected edge_index
    feature_dim: int
    classes: int
    prompt_tokens: int  # S: a node's own tokens, answer included (the longest row)
    prefix_tokens: int  # P


@dataclass
class Target:
    """Where the stages run and what each place holds."""

    device: str  # cpu | cuda
    dtype_bytes: int  # b
    device_bytes: int
    host_bytes: int
    search_bytes: int = 4  # s: bf16 (2) where the CPU multiplies it natively
    dtype: str = "fp32"


@dataclass
class Row:
    stage: str
    place: str  # the device or the host
    parts: dict = field(default_factory=dict)  # component -> bytes
    budget: int = 0

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


def gnn_params(graph: GraphShape, d: int, views: int) -> int:
    """SAGEConv t: two [in, d] products and a bias; label head and feature decoder read T views of d."""
    convs = 2 * graph.feature_dim * d + d + (views - 1) * (2 * d * d + d)
    width = views * d
    return convs + width * (graph.classes + graph.feature_dim) + graph.classes + graph.feature_dim


def step_graph(graph: GraphShape, seeds: int, neighbours: list) -> tuple:
    """(nodes, messages) of one stage-one step: the whole graph, or a sampled neighbourhood of ``seeds``."""
    if not seeds:
        return graph.nodes, graph.messages
    fanout = [math.prod(neighbours[: t + 1]) if all(k > 0 for k in neighbours[: t + 1]) else graph.nodes
              for t in range(len(neighbours))]
    drawn = seeds * (1 + sum(fanout))
    distinct = graph.nodes * (1 - math.exp(-drawn / graph.nodes))
    return int(max(seeds, distinct)), int(min(graph.messages, drawn - seeds))


def gnn_activations(graph: GraphShape, nodes: int, messages: int, d: int, views: int) -> int:
    from ..model.losses import PAIR_CHUNK_BYTES, pair_chunk

    adjacency = 4 * 6 * messages * d if messages <= pair_chunk(d) else 3 * PAIR_CHUNK_BYTES
    return adjacency + 4 * (12 * views * nodes * d + messages * max(graph.feature_dim, d)
                            + nodes * (2 * graph.feature_dim + graph.classes + views * d))


def graph_tensors(graph: GraphShape) -> int:
    return 4 * graph.nodes * graph.feature_dim + 16 * graph.messages + 9 * graph.nodes


def codebook_words(model: ModelShape, max_codes: int) -> int:
    return min(max_codes or model.vocab, model.vocab)


def search_tables(model: ModelShape, words: int, search_bytes: int) -> int:
    """The unit words [d, M] and, up to GRAM_MAX_BYTES, the Gram matrix [M, M], each built in fp32 then cast."""
    from ..model.quantizer import GRAM_MAX_BYTES

    gram = words * words if words * words * search_bytes <= GRAM_MAX_BYTES else 0
    cast = search_bytes if search_bytes != 4 else 0
    return (model.hidden * words + gram) * (4 + cast)


def search_buffers(words: int, rows: int, search_bytes: int) -> int:
    """One chunk of the search: its fp32 scores and its products or Gram rows in the search dtype, [chunk, M] each."""
    from ..model.quantizer import SEARCH_CHUNK

    return min(SEARCH_CHUNK, rows) * words * (4 + search_bytes)


def lora_params(model: ModelShape, cfg) -> int:
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    missing = [t for t in targets if t not in model.target_inputs]
    if missing:
        raise InputError(f"--lora-targets: {model.name} has no linear layer named {', '.join(missing)}; "
                         f"its are {', '.join(sorted(model.target_inputs))}")
    return trained_layers(model, cfg) * cfg.lora_r * sum(sum(model.target_inputs[t]) for t in targets)


def trained_layers(model: ModelShape, cfg) -> int:
    return cfg.lora_layers if 0 < cfg.lora_layers < model.layers else model.layers


def token_activations(model: ModelShape, cfg, b: int, lora: bool = True) -> int:
    """a: bytes a trained layer saves per token for the backward pass (docstring above)."""
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] if lora else []
    d = model.hidden
    return 8 * d + 5 * sum(model.target_inputs[t][0] for t in targets) + 4 * b * d + 3 * b * model.intermediate


def weights(model: ModelShape, quantization: str, b: int) -> int:
    q = {"none": b, "8bit": 1, "4bit": NF4_BYTES}[quantization]
    return int(q * model.linear_params + b * model.other_params)


def plan(model: ModelShape, graph: GraphShape, cfg, target: Target, stage_one_seeds: int) -> list:
    """Rows of (stage, place, components, budget) for codebook, encode, finetune, predict and, with
    ``cfg.joint``, the joint pass. ``stage_one_seeds``: :func:`~dre_pipeline.pipeline.stages.encode.mini_batch_size`'s
    answer (0: full batch). ``cfg.quantization`` must be none, 8bit or 4bit (``auto`` resolved)."""
    from ..model.predictor import FROZEN_CACHE_BYTES, FROZEN_CHUNK
    from ..pipeline.stages.finetune.training import EVAL_BATCH

    b, d, kv, V = target.dtype_bytes, model.hidden, model.kv_dim, model.vocab
    S, P, N, T = graph.prompt_tokens, graph.prefix_tokens, graph.nodes, cfg.num_views
    on_gpu = target.device == "cuda"
    M = codebook_words(model, cfg.max_codes)
    n_gnn = gnn_params(graph, d, T)
    rows = []

    codebook = Row("codebook", "host", budget=target.host_bytes)
    codebook.parts["embedding matrix (fp32)"] = model.vocab * d * (4 + (model.file_bytes if model.file_bytes != 4 else 0))
    codebook.parts["codebook words"] = 4 * M * d
    codebook.parts["tokenizer, word lists"] = WORD_LISTS_BYTES
    rows.append(codebook)

    encode = Row("encode", target.device, budget=target.device_bytes)
    nodes, messages = step_graph(graph, stage_one_seeds, cfg.neighbors())
    encode.parts["graph tensors"] = graph_tensors(graph) + (24 * graph.messages + 16 * N if stage_one_seeds else 0)
    encode.parts["codebook + search tables"] = 4 * M * d + search_tables(model, M, target.search_bytes)
    encode.parts["code search (one chunk)"] = search_buffers(M, nodes, target.search_bytes)
    encode.parts["GNN + AdamW"] = 20 * n_gnn
    encode.parts[f"activations ({'full batch' if not stage_one_seeds else f'{nodes:,} nodes a step'})"] = (
        gnn_activations(graph, nodes, messages, d, T))
    rows += _placed(encode, {"graph tensors (as loaded)": graph_tensors(graph)} if on_gpu else {}, target)

    L_t = trained_layers(model, cfg)
    L_f = model.layers - L_t
    economy = cfg.token_economy
    cached = economy and L_f > 0 and cfg.node_tokens == "words"
    tokens = S if economy else S + P
    one_layer = (4 * d + 2 * model.intermediate) * b  # a no-grad layer's transient q, k, v, out and MLP pair
    B_S = cfg.batch_size * tokens
    train = B_S * L_t * (token_activations(model, cfg, b) + 2 * kv * b) + 8 * cfg.batch_size * V
    fill = FROZEN_CHUNK * S * (2 * L_f * kv * b + one_layer) if cached else 0
    score = EVAL_BATCH * tokens * (2 * model.layers * kv * b + one_layer) + 8 * EVAL_BATCH * V
    host_side = {"graph tensors": graph_tensors(graph), "prompts (Python lists)": PYTHON_TOKEN_BYTES * N * S,
                 "codebook words": 4 * M * d}
    # The stage-one head's pseudo-labels: the GNN over the whole graph, hop by hop, with its code search. Freed
    # before training, but counted: glibc keeps a freed heap resident (its mmap threshold rises with each free).
    pseudo = {"stage-one GNN, pseudo-labels": 4 * n_gnn + search_tables(model, M, target.search_bytes)
              + search_buffers(M, N, target.search_bytes) + 4 * (
        2 * N * d + _chunk_messages(graph) * max(graph.feature_dim, d) + N * graph.classes)} if cfg.distill_weight else {}

    def llm_row(stage: str, trainable: bool) -> list:
        device = Row(stage, target.device, budget=target.device_bytes)
        device.parts[f"weights ({cfg.quantization if cfg.quantization != 'none' else target.dtype})"] = (
            weights(model, cfg.quantization, b))
        device.parts["LoRA + AdamW" if trainable else "LoRA"] = (20 if trainable else 4) * lora_params(model, cfg)
        if economy:
            device.parts["prefix KV (once)"] = 2 * model.layers * P * kv * b
        if cached:
            device.parts["frozen-layer cache"] = min(FROZEN_CACHE_BYTES, N * S * d * b) if trainable else (
                min(FROZEN_CACHE_BYTES, EVAL_BATCH * S * d * b))
        device.parts["step activations"] = max(train, fill, score) if trainable else max(fill, score)
        return _placed(device, {**host_side, **(pseudo if trainable else {})}, target)

    rows += llm_row("finetune", trainable=True)
    rows += llm_row("predict", trainable=False)
    if cfg.joint:
        joint = Row("joint", target.device, budget=target.device_bytes)
        joint.parts[f"weights ({cfg.quantization if cfg.quantization != 'none' else target.dtype})"] = (
            weights(model, cfg.quantization, b))
        joint.parts["LoRA + AdamW"] = 20 * lora_params(model, cfg)
        joint.parts["prefix KV (once)"] = 2 * model.layers * P * kv * b
        # the code words carry the GNN's gradient: every layer saves its inputs, the frozen ones without LoRA's share
        joint.parts["step activations"] = B_S * (L_t * token_activations(model, cfg, b) + L_f * token_activations(
            model, cfg, b, lora=False) + 2 * model.layers * kv * b) + 8 * cfg.batch_size * V
        degree = graph.messages / N
        hood = int(min(N, cfg.batch_size * sum(degree ** t for t in range(T + 1))))
        joint.parts["GNN + AdamW, graph"] = 20 * n_gnn + graph_tensors(graph) + gnn_activations(
            graph, hood, int(min(graph.messages, hood * degree)), d, T)
        rows += _placed(joint, {k: v for k, v in host_side.items() if k != "graph tensors"}, target)
    return rows


def _chunk_messages(graph: GraphShape) -> int:
    from ..model.gnn import INFERENCE_CHUNK

    return int(graph.messages * min(1.0, INFERENCE_CHUNK / graph.nodes))


def _placed(device: Row, host_side: dict, target: Target) -> list:
    """On a GPU: the device row with the CUDA context, and a host row; on a CPU, one row of both."""
    if target.device == "cuda":
        device.parts["CUDA context"] = CUDA_CONTEXT_BYTES
        return [device, Row(device.stage, "host", dict(host_side), target.host_bytes)]
    device.parts.update(host_side)
    device.place, device.budget = "cpu", target.host_bytes
    return [device]


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20)):
        if n >= size or unit == "MiB":
            return f"{n / size:,.1f} {unit}" if unit == "GiB" else f"{n / size:,.0f} {unit}"


def table(rows: list, heading: str) -> str:
    """Per stage and place: the total against the budget, then its components."""
    lines = [heading, f"{'stage':<10} {'where':<6} {'peak':>11} {'of':>11}  fits  components"]
    for row in rows:
        parts = ", ".join(f"{k} {human(v)}" for k, v in row.parts.items() if v)
        lines.append(f"{row.stage:<10} {row.place:<6} {human(row.total):>11} {human(row.budget):>11}  "
                     f"{'yes ' if row.fits else 'NO  '}  {parts}")
    return "\n".join(lines)
