"""What stage two reads, on top of the command's plan (:mod:`...resolve`): the stage-one artifact, its
codebook, the tokenizer, the prompt template, the nodes' text tokens and stage two's key."""

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Optional

import numpy as np
import torch
from torch import nn

from ...artifacts import Artifact, artifact_key, load_torch
from ....model.codebook import Codebook
from ...config import FinetuneConfig, key_fields
from ....data import SPLIT_NAMES, GraphData, title_and_rest
from ....errors import InputError
from ...llm import ResolvedLLM, load_tokenizer
from ....model.predictor import FullPromptPredictor, GraphWordPredictor
from ....model.prompts import PromptTemplate, build_template, node_suffix, node_text
from ....model.sampling import stratified_sample
from ...resolve import Plan
from .. import codebook as codebook_stage
from ..encode import build_model


# What stage two's key holds besides the encode key, the LLM's identity and the prompts' tokens. The text
# settings (--use-text, --max-text-tokens) enter through the prompts they make, so a graph without text gets the
# same key whatever they say.
KEY_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_layers", "token_economy", "batch_size",
              "ft_epochs", "ft_prompts_per_epoch", "ft_val_nodes", "ft_patience", "eval_every", "llm_lr", "lr_schedule",
              "warmup_ratio", "max_grad_norm", "code_samples", "ft_loss", "distill_weight", "gnn_lr", "ft_weight_decay",
              "node_tokens", "joint", "joint_epochs", "joint_stage_one_weight", "quantization", "precision")


@dataclass(frozen=True)
class Workspace:
    """Everything stage two reads: the command's plan, the stage-one artifact and what the prompts are made of
    (shared by finetune, predict, report and status)."""

    plan: Plan
    encode: Optional[Artifact]  # None for a model bundle's workspace (:func:`with_codebook`)
    codebook: Codebook
    tokenizer: object
    template: PromptTemplate
    text_ids: list  # per node: its truncated text tokens (empty without --use-text)
    key: Optional[str]

    @property
    def cfg(self) -> FinetuneConfig:
        return self.plan.cfg

    @property
    def llm(self) -> ResolvedLLM:
        return self.plan.llm

    @property
    def data(self) -> GraphData:
        return self.plan.data

    @property
    def split(self) -> np.ndarray:
        return self.plan.split

    def scored_nodes(self, part: str) -> np.ndarray:
        """The nodes of ``part`` that evaluations score, in order: all, but validation's ``--ft-val-nodes``."""
        return self._validation_sample if part == "val" else np.flatnonzero(self.split == SPLIT_NAMES.index(part))

    @cached_property
    def _validation_sample(self) -> np.ndarray:
        nodes = np.flatnonzero(self.split == SPLIT_NAMES.index("val"))
        if not self.cfg.ft_val_nodes:
            return nodes
        return np.sort(stratified_sample(nodes, self.data.y.numpy(), self.cfg.ft_val_nodes,
                                         np.random.default_rng(self.cfg.seed)))


def prompts_with_text(plan: Plan) -> bool:
    """Whether the prompts carry the nodes' text; ``--node-tokens none`` on a graph without text is refused
    here, which the commands call before stage one runs."""
    use_text = plan.cfg.use_text and plan.data.text is not None
    if plan.cfg.node_tokens == "none" and not use_text:
        raise InputError(f"--node-tokens none prompts with the node's text alone, and {plan.data.name!r} has no text")
    return use_text


def prepare(plan: Plan, encode: Artifact) -> Workspace:
    """Stage two's workspace on ``encode``, the stage-one artifact of ``plan``."""
    cfg, llm = plan.cfg, plan.llm
    codebook_artifact = plan.store.find("codebook", encode.manifest["codebook"])
    if codebook_artifact is None or codebook_artifact.manifest["llm"]["identity"] != llm.identity:
        built_for = codebook_artifact.manifest["llm"]["name"] if codebook_artifact else "no codebook in this store"
        raise InputError(f"the stage-one codes were built on {built_for}'s vocabulary, not on {llm.name}: "
                         "run encode with the same --llm-path as finetune")
    workspace = with_codebook(plan, codebook_stage.load(codebook_artifact))
    return replace(workspace, encode=encode,
                   key=finetune_key(cfg, encode.key, llm, workspace.template, workspace.text_ids))


def with_codebook(plan: Plan, codebook: Codebook) -> Workspace:
    """The prompts of ``plan`` over ``codebook``, without a stage-one artifact nor a key (a model bundle's)."""
    cfg, data = plan.cfg, plan.data
    use_text = prompts_with_text(plan)
    tokenizer = load_tokenizer(plan.llm)
    graph_views = 0 if cfg.node_tokens == "none" else cfg.num_views
    template = build_template(tokenizer, data.class_names, graph_views, use_text)
    text_ids = text_token_ids(tokenizer, data, cfg.max_text_tokens) if use_text else [[] for _ in range(data.num_nodes)]
    return Workspace(plan, None, codebook, tokenizer, template, text_ids, None)


def finetune_key(cfg: FinetuneConfig, encode_key: str, llm: ResolvedLLM, template: PromptTemplate,
                 text_ids: list) -> str:
    return artifact_key({"settings": key_fields(cfg, KEY_FIELDS), "encode": encode_key, "llm": llm.identity,
                         "prompts": prompt_digest(template, text_ids)})


def with_settings(ws: Workspace, cfg: FinetuneConfig) -> Workspace:
    """``ws`` under stage-two settings that leave stage one and the prompts as they are (``--joint``'s plain run)."""
    return replace(ws, plan=replace(ws.plan, cfg=cfg),
                   key=finetune_key(cfg, ws.encode.key, ws.llm, ws.template, ws.text_ids))


def text_token_ids(tokenizer, data: GraphData, budget: int, nodes=None) -> list:
    """Per node (of ``nodes``, default all), the first ``budget`` tokens of its text as the prompt carries it
    (:func:`~dre_pipeline.model.prompts.node_text`: in its own word order, the title first and named where the
    graph gives titles)."""
    return [tokenizer(node_text(*title_and_rest(data, i)), add_special_tokens=False).input_ids[:budget]
            for i in (range(data.num_nodes) if nodes is None else nodes)]


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


def predictor_for(ws: Workspace, model) -> GraphWordPredictor:
    """The LLM as a class-name scorer, with the token economy or (``--no-token-economy``) without it."""
    kind = GraphWordPredictor if ws.cfg.token_economy else FullPromptPredictor
    return kind(model, ws.template, ws.tokenizer.pad_token_id, ws.cfg.lora_layers)


def stage_one_model(ws: Workspace, state: dict = None) -> nn.Module:
    """The GNN stage one trained, on the CPU (with ``ws.data``), with its weights as saved in ``ws``'s stage-one
    artifact or ``state``; the GNN in the loop moves it onto the LLM's device."""
    model = build_model(ws.cfg, ws.data, ws.codebook)
    model.load_state_dict(state if state is not None else
                          load_torch(ws.encode.path / "gnn.pt", torch.device("cpu"))["state_dict"])
    return model


def head_distribution(ws: Workspace) -> torch.Tensor:
    """``[N, C]`` the stage-one label head's class probabilities for every node (the pseudo-labels)."""
    _, logits, _ = stage_one_model(ws).inference(ws.data.x, ws.data.edge_index)
    return logits.softmax(-1)
