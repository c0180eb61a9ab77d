"""What stage two reads, resolved once from the config: the stage-one artifact, graph, split,
codebook, tokenizer, prompt template and the artifact key (finetune, predict, report, status)."""

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ...artifacts import Artifact, Store, artifact_key, load_torch
from ....model.codebook import Codebook
from ...config import EncodeConfig, FinetuneConfig, key_fields, subset
from ....data import GraphData, title_and_rest
from ....errors import InputError
from ...llm import ResolvedLLM, load_tokenizer, resolve_llm
from ....model.predictor import FullPromptPredictor, GraphWordPredictor
from ....model.prompts import PromptTemplate, build_template, node_suffix, node_text
from .. import encode as encode_stage
from ...placement import Placement


@dataclass
class Workspace:
    """Everything stage two reads, resolved once from the config (shared by finetune and predict)."""

    cfg: FinetuneConfig
    llm: ResolvedLLM
    encode: Artifact
    data: GraphData
    split: np.ndarray
    codebook: Codebook
    tokenizer: object
    template: PromptTemplate
    text_ids: list  # per node: its truncated text tokens (empty without --use-text)
    key: str


def prepare(cfg: FinetuneConfig, store: Store, quiet: bool = False, cached_only: bool = False,
            placement: Placement = None, graph: tuple = None, llm: ResolvedLLM = None) -> Workspace:
    """The graph is loaded once, here or by the caller (``graph``: ``(data, split)``), and handed to stage one;
    ``llm``: the command's, where it has resolved it already.

    ``placement``: the command's, where stage one trains and ``--features llm`` runs the LLM if they have yet
    to run; by default this machine's (``--device auto``) with ``cfg.quantization``, as ``finetune`` resolves it.
    """
    placement = placement or Placement.resolve("auto", cfg.quantization)
    data, split = graph or encode_stage.load_graph(cfg, store, quiet, cached_only, placement)
    use_text = cfg.use_text and data.text is not None
    if cfg.node_tokens == "none" and not use_text:  # refused before stage one runs
        raise InputError(f"--node-tokens none prompts with the node's text alone, and {data.name!r} has no text")
    encode = encode_stage.run(subset(cfg, EncodeConfig), store, quiet=quiet, cached_only=cached_only,
                              placement=placement, graph=(data, split))
    llm = llm or resolve_llm(cfg.llm_path, store)
    codebook_artifact = store.find("codebook", encode.manifest["codebook"])
    if codebook_artifact is None or codebook_artifact.manifest["llm"]["identity"] != llm.identity:
        built_for = codebook_artifact.manifest["llm"]["name"] if codebook_artifact else "no codebook in this store"
        raise InputError(f"the stage-one codes were built on {built_for}'s vocabulary, not on {llm.name}: "
                         "run encode with the same --llm-path as finetune")
    codebook = Codebook.load(codebook_artifact.path)
    tokenizer = load_tokenizer(llm)
    graph_views = 0 if cfg.node_tokens == "none" else cfg.num_views
    template = build_template(tokenizer, data.class_names, graph_views, use_text)
    text_ids = text_token_ids(tokenizer, data, cfg.max_text_tokens) if use_text else [[] for _ in range(data.num_nodes)]
    return Workspace(cfg, llm, encode, data, split, codebook, tokenizer, template, text_ids,
                     finetune_key(cfg, encode, llm, template, text_ids))


def finetune_key(cfg: FinetuneConfig, encode: Artifact, llm: ResolvedLLM, template: PromptTemplate,
                 text_ids: list) -> str:
    # The text settings enter the key through the prompts they make, so a graph without text
    # gets the same key whatever they say.
    own = key_fields(cfg, exclude=(*EncodeConfig.__dataclass_fields__, "use_text", "max_text_tokens"))
    return artifact_key({"settings": own, "encode": encode.key, "llm": llm.identity,
                         "prompts": prompt_digest(template, text_ids)})


def with_settings(ws: Workspace, cfg: FinetuneConfig) -> Workspace:
    """``ws`` under stage-two settings that leave stage one and the prompts as they are (``--joint``'s plain run)."""
    return replace(ws, cfg=cfg, key=finetune_key(cfg, ws.encode, ws.llm, ws.template, ws.text_ids))


def text_token_ids(tokenizer, data: GraphData, budget: int) -> list:
    """Per node, the first ``budget`` tokens of its text as the prompt carries it (:func:`~dre_pipeline.model.prompts.node_text`:
    in its own word order, the title first and named where the graph gives titles)."""
    return [tokenizer(node_text(*title_and_rest(data, i)), add_special_tokens=False).input_ids[:budget]
            for i in range(data.num_nodes)]


def prompt_digest(template: PromptTemplate, text_ids: list) -> str:
    """A hash of every token the prompts are made of but the code words, so a change of wording or of text
    tokenization is a new key rather than a stale cache hit."""
    sha = hashlib.sha256(json.dumps(asdict(template), sort_keys=True).encode())
    sha.update(np.asarray([len(ids) for ids in text_ids], dtype=np.int64).tobytes())
    sha.update(np.asarray([t for ids in text_ids for t in ids], dtype=np.int64).tobytes())
    return sha.hexdigest()[:16]


def suffixes_for(ws: Workspace, node_codes: np.ndarray, nodes) -> tuple:
    """Prompt suffixes and code positions for ``nodes``; ``node_codes`` is their ``[n, T, K]`` code ids."""
    token_ids = ws.codebook.token_ids[node_codes]  # n t k
    built = [node_suffix(ws.template, views, ws.text_ids[i]) for i, views in zip(nodes, token_ids)]
    return [ids for ids, _ in built], [pos for _, pos in built]


def codes_from_table(table: pa.Table, num_views: int) -> np.ndarray:
    return np.stack([np.stack(table[f"view{t}_codes"].to_numpy(zero_copy_only=False))
                     for t in range(1, num_views + 1)], axis=1)


def predictor_for(ws: Workspace, model) -> GraphWordPredictor:
    """The LLM as a class-name scorer, with the token economy or (``--no-token-economy``) without it."""
    kind = GraphWordPredictor if ws.cfg.token_economy else FullPromptPredictor
    return kind(model, ws.template, ws.tokenizer.pad_token_id, ws.cfg.lora_layers)


def stage_one_model(ws: Workspace) -> nn.Module:
    """The GNN stage one trained, as it was saved, on the CPU (with ``ws.data``); the GNN in the loop moves it
    onto the LLM's device."""
    model = encode_stage.build_model(subset(ws.cfg, EncodeConfig), ws.data, ws.codebook)
    model.load_state_dict(load_torch(ws.encode.path / "gnn.pt", torch.device("cpu"))["state_dict"])
    return model


def head_distribution(ws: Workspace) -> torch.Tensor:
    """``[N, C]`` the stage-one label head's class probabilities for every node (the pseudo-labels)."""
    _, logits, _ = stage_one_model(ws).inference(ws.data.x, ws.data.edge_index)
    return logits.softmax(-1)
