"""``dre-pipeline predict``: answer for nodes with a fine-tuned model, without retraining, also for new nodes.

A :class:`Trained` model comes from the store (:func:`from_store`) or from a saved bundle
(:mod:`~dre_pipeline.pipeline.bundle`); :func:`run` answers with it on the workspace's graph. New nodes
(:mod:`~dre_pipeline.data.extend`) are answered inductively: their features are made as the graph's were, stage
one's GNN runs over the extended graph and quantizes them into words, and the LLM reads those. The graph's own
nodes keep the codes the model was trained on, unless ``recode`` asks for the extended graph's.
"""

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ...artifacts import load_torch
from ....data import SPLIT_NAMES, split_names, title_and_rest
from ....data.extend import UNLABELLED, NewNodes, extend
from ....errors import InputError
from ...llm import load_model
from ...runtime import log
from ....model.prompts import render
from ..code_table import read_codes
from .. import features
from .node_tokens import StoredWords, graph_in_the_loop
from .training import score
from .workspace import Workspace, predictor_for, prompts_with_text, stage_one_model, text_token_ids


CHUNK = 4096  # nodes answered at a time: each chunk's rows (prompts included) are a few MB


@dataclass(frozen=True)
class Trained:
    """A fine-tuned model as answers read it.

    Args:
        adapter (Path): the PEFT adapter's folder.
        stage_one (dict): the stage-one GNN's state (:class:`~dre_pipeline.model.gnn.StageOneModel`).
        in_the_loop (dict): the GNN-in-the-loop's state after ``--joint`` or ``--node-tokens soft``, else None.
        codes (ndarray): ``[N, T, K]`` the codes it was trained and scored on, for the graph it trained on;
            None: the GNN computes them (a bundle on a fresh store).
    """

    adapter: Path
    stage_one: dict
    in_the_loop: Optional[dict]
    codes: Optional[np.ndarray]


def from_store(ws: Workspace) -> Trained:
    """The fine-tuned model of ``ws`` in its store (resolved from the cache alone; missing or damaged: refused)."""
    found = ws.plan.store.lookup("finetune", ws.key, force=False, cached_only=True)
    device = ws.plan.placement.device
    loop = found.path / "graph_in_the_loop.pt"  # saved from the device finetune used
    codes = found.path / "codes.parquet"
    return Trained(found.path / "adapter", load_torch(ws.encode.path / "gnn.pt", torch.device("cpu"))["state_dict"],
                   load_torch(loop, device) if loop.is_file() else None,
                   read_codes(codes, ws.cfg.num_views) if ws.cfg.node_tokens != "soft" else None)


def run(ws: Workspace, trained: Trained, node_ids: Optional[list], new: Optional[NewNodes] = None,
        recode: bool = False, part: Optional[str] = None) -> list:
    """One dict per node (id, split, label, prediction, per-class scores, its words, text and prompt) for
    ``node_ids`` (the graph's or the new nodes' ids), or the nodes of split ``part``; neither: every new node,
    or without new nodes every node. All rows at once: :func:`chunks` streams them.
    """
    return [row for chunk in chunks(ws, trained, node_ids, new, recode, part) for row in chunk]


def chunks(ws: Workspace, trained: Trained, node_ids: Optional[list], new: Optional[NewNodes] = None,
           recode: bool = False, part: Optional[str] = None, size: int = CHUNK) -> Iterator[list]:
    """:func:`run`'s rows, ``size`` nodes at a time, each chunk scored as it is asked for: a large graph's answers
    are written as they come, never held whole. The model loads once, before the first chunk.

    Under ``torchrun`` each process scores its share of every chunk and every process yields all rows.
    """
    from peft import PeftModel

    cfg, placement, quiet = ws.cfg, ws.plan.placement, ws.plan.quiet
    old = ws.data.num_nodes
    if new is not None:
        ws = with_new_nodes(ws, new)
    nodes = positions(ws, node_ids, old, part)
    base = load_model(ws.llm, placement.device, placement.quantization, placement.precision)
    model = PeftModel.from_pretrained(base, trained.adapter)
    predictor = predictor_for(ws, model)
    if cfg.node_tokens == "soft":
        node_tokens = graph_in_the_loop(ws, predictor, soft=True, gnn_state=trained.in_the_loop)
        codes = node_tokens.all_codes()  # the soft tokens' slots; shown as the nearest words
    else:  # after --joint: the codes of the jointly trained GNN
        codes = trained.codes
        if codes is None or recode or len(codes) < ws.data.num_nodes:
            fresh = stage_one_codes(ws, trained, predictor)
            codes = fresh if codes is None or recode else np.concatenate([codes, fresh[len(codes):]])
        node_tokens = StoredWords(ws, codes)
    started = time.time()
    for start in range(0, len(nodes), size):
        chunk = nodes[start: start + size]
        scores = score(predictor, node_tokens, ws, chunk, quiet)
        node_tokens.eval()
        with torch.no_grad():
            suffixes, _ = node_tokens.tokens(chunk)
        yield [answer(ws, i, row, codes[i], suffix, i >= old) for i, row, suffix in zip(chunk, scores, suffixes)]
        done = start + len(chunk)
        log.info("predict: %d of %d nodes, %.1f nodes/s", done, len(nodes), done / max(time.time() - started, 1e-9))


def with_new_nodes(ws: Workspace, new: NewNodes) -> Workspace:
    """``ws`` on its graph extended by ``new``: their features made as the graph's were, their text tokens; they
    are in no split (-1)."""
    plan, data = ws.plan, ws.data
    made = plan.store.find("features", plan.keys["features"]) if "features" in plan.keys else None
    x = (features.new_node_features(made, data.text, new.text, ws.llm, plan.placement, plan.quiet)
         if made is not None else None)
    extended = extend(data, new, x)
    added = np.arange(data.num_nodes, extended.num_nodes)
    text_ids = ws.text_ids + (text_token_ids(ws.tokenizer, extended, ws.cfg.max_text_tokens, added)
                              if prompts_with_text(plan) else [[] for _ in added])
    split = np.concatenate([plan.split, np.full(len(added), -1, dtype=plan.split.dtype)])
    return replace(ws, plan=replace(plan, data=extended, split=split), text_ids=text_ids)


def positions(ws: Workspace, node_ids: Optional[list], old: int, part: Optional[str] = None) -> np.ndarray:
    """Positions of ``node_ids`` in ``ws``'s graph (ids as the command line spells them), or of split ``part``'s
    nodes; neither: the nodes after the first ``old`` (the new ones), or every node where there are none."""
    if part is not None:
        return np.flatnonzero(ws.split == SPLIT_NAMES.index(part))
    if node_ids is None:
        return np.arange(old if old < ws.data.num_nodes else 0, ws.data.num_nodes)
    position = {str(node): i for i, node in enumerate(ws.data.node_ids.tolist())}
    unknown = [n for n in node_ids if str(n) not in position]
    if unknown:
        known = ws.data.node_ids.tolist()
        raise InputError(f"unknown node ids {unknown[:5]}: {ws.data.name} has ids such as {', '.join(map(str, known[:3]))}")
    return np.array([position[str(n)] for n in node_ids], dtype=np.int64)


def stage_one_codes(ws: Workspace, trained: Trained, predictor) -> np.ndarray:
    """``[N, T, K]`` every node's codes as the model's GNN picks them on ``ws``'s graph (no dropout)."""
    if trained.in_the_loop is not None:  # the jointly trained GNN
        return graph_in_the_loop(ws, predictor, soft=False, gnn_state=trained.in_the_loop).all_codes()
    codes, _, _ = stage_one_model(ws, trained.stage_one).inference(ws.data.x, ws.data.edge_index)
    return codes.numpy()


def answer(ws: Workspace, i: int, row: torch.Tensor, codes: np.ndarray, suffix: list, new: bool) -> dict:
    names, label = ws.data.class_names, int(ws.data.y[i])
    labelled = label != UNLABELLED
    return {
        "node_id": ws.data.node_ids[i].item() if hasattr(ws.data.node_ids[i], "item") else ws.data.node_ids[i],
        "split": "new" if new else split_names(ws.split[[i]])[0],
        "label": names[label] if labelled else None,
        "prediction": names[int(row.argmax())],
        "correct": int(row.argmax()) == label if labelled else None,
        "scores": {name: round(float(s), 4) for name, s in zip(names, row)},
        "words": [[ws.codebook.words[c] for c in view] for view in codes],
        "text": ws.data.text[i] if ws.data.text is not None else None,
        **dict(zip(("title", "abstract"), title_and_rest(ws.data, i) if ws.data.text is not None else (None, None))),
        "prompt": render(ws.tokenizer, ws.template, suffix),
    }
