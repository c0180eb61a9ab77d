"""``dre-pipeline predict``: answer for given nodes with a saved adapter, without retraining."""

import numpy as np
import torch

from ...artifacts import load_torch
from ....data import split_names, title_and_rest
from ....errors import InputError
from ...llm import load_model
from ....model.prompts import render
from ..code_table import read_codes
from .node_tokens import StoredWords, graph_in_the_loop
from .training import score
from .workspace import Workspace, predictor_for


def run(ws: Workspace, node_ids: list) -> list:
    """One dict per node of ``ws`` (resolved from the cache alone): id, label, prediction, per-class scores, its
    words and prompt.

    Under ``torchrun`` each process scores its share of the nodes and every process returns all rows.
    """
    from peft import PeftModel

    cfg, store, placement, quiet = ws.cfg, ws.plan.store, ws.plan.placement, ws.plan.quiet
    device = placement.device
    found = store.lookup("finetune", ws.key, force=False, cached_only=True)  # missing or damaged: refused
    position = {str(node): i for i, node in enumerate(ws.data.node_ids.tolist())}  # ids as the command line spells them
    unknown = [n for n in node_ids if str(n) not in position]
    if unknown:
        known = ws.data.node_ids.tolist()
        raise InputError(f"unknown node ids {unknown[:5]}: {ws.data.name} has ids such as {', '.join(map(str, known[:3]))}")
    nodes = np.array([position[str(n)] for n in node_ids], dtype=np.int64)

    model = PeftModel.from_pretrained(load_model(ws.llm, device, placement.quantization),
                                      found.path / "adapter")
    predictor = predictor_for(ws, model)
    if cfg.node_tokens == "soft":
        gnn_state = load_torch(found.path / "graph_in_the_loop.pt", device)  # saved from the device finetune used
        node_tokens = graph_in_the_loop(ws, predictor, soft=True, gnn_state=gnn_state)
        codes = node_tokens.all_codes()  # the soft tokens' slots; shown as the nearest words
    else:  # after --joint these are the codes of the jointly trained GNN
        codes = read_codes(found.path / "codes.parquet", cfg.num_views)
        node_tokens = StoredWords(ws, codes)
    scores = score(predictor, node_tokens, ws, nodes, quiet)
    node_tokens.eval()
    with torch.no_grad():
        suffixes, _ = node_tokens.tokens(nodes)
    names, parts, ids = ws.data.class_names, split_names(ws.split[nodes]), ws.data.node_ids.tolist()
    return [{
        "node_id": ids[i],
        "split": part,
        "label": names[int(ws.data.y[i])],
        "prediction": names[int(row.argmax())],
        "correct": int(row.argmax()) == int(ws.data.y[i]),
        "scores": {name: round(float(s), 4) for name, s in zip(names, row)},
        "words": [[ws.codebook.words[c] for c in view] for view in codes[i]],
        "text": ws.data.text[i] if ws.data.text is not None else None,
        **dict(zip(("title", "abstract"), title_and_rest(ws.data, i) if ws.data.text is not None else (None, None))),
        "prompt": render(ws.tokenizer, ws.template, suffix),
    } for i, part, row, suffix in zip(nodes, parts, scores, suffixes)]
