"""``dre-pipeline finetune``: LoRA-finetune the LLM on graph-word prompts; optional joint pass.

:func:`run` takes the command's workspace (:mod:`.workspace`), picks what fills each node's slots
(:mod:`.node_tokens`), trains with the loop of :mod:`.training`, and writes the artifact:
the adapter, the codes the model reads, predictions and metrics.
"""

import json
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ... import distributed, run_file
from ...artifacts import Artifact, Store, save_torch, write_json
from ...config import key_fields
from ....data import split_names
from ...llm import attach_lora, load_model
from ...runtime import log, peak_memory_mb, reset_peak_memory, seed_everything
from ..code_table import read_codes, write_codes
from .node_tokens import GraphInTheLoop, StoredWords, graph_in_the_loop, sampled_codes
from .training import evaluate, train
from .workspace import Workspace, head_distribution, predictor_for, with_settings


def run(ws: Workspace, targets: list, force: bool = False) -> Artifact:
    """Fine-tune on ``ws`` (or find the cached result); ``--joint`` continues from the plain run's adapter.
    ``targets``: the modules LoRA adapts (:func:`~...llm.lora_targets`, checked by the command before any work).

    Under ``torchrun`` every process runs this; the first decides on the cache and writes.
    """
    cfg, llm, store, placement, quiet = ws.cfg, ws.llm, ws.plan.store, ws.plan.placement, ws.plan.quiet
    device = placement.device
    found = store.lookup("finetune", ws.key, force) if distributed.is_main() else None
    if distributed.agree(found is not None):
        return found or store.find("finetune", ws.key)
    # the joint pass starts from the plain run of the same workspace: stage one is not entered again
    base = run(with_settings(ws, replace(cfg, joint=False)), targets) if cfg.joint else None
    log.info("finetune: reading %s", base.path if base else ws.encode.path)
    started = time.time()
    reset_peak_memory(device)  # this run's own GPU peak, not the plain run's before a joint pass
    seed_everything(cfg.seed)
    model = load_model(llm, device, placement.quantization, placement.precision)
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, base.path / "adapter", is_trainable=True)
    else:
        model = attach_lora(model, cfg, targets)
    predictor = predictor_for(ws, model)
    codes = read_codes(ws.encode.path / "codes.parquet", cfg.num_views)

    if base:  # the joint pass: GNN and LLM end to end
        metrics = {"finetune": json.loads((base.path / "metrics.json").read_text())["finetune"]}
        node_tokens = graph_in_the_loop(ws, predictor, soft=False)
        before = [p.detach().clone() for p in node_tokens.encoder.parameters()]
        joint = train(predictor, node_tokens, ws, cfg.joint_epochs, cfg.seed + 1, quiet, "joint", keep_start=True,
                      store=store)
        codes, old = node_tokens.all_codes(), codes
        joint["gnn_weight_change"] = float(torch.norm(torch.stack(
            [(p.detach() - b).norm() for p, b in zip(node_tokens.encoder.parameters(), before)])))
        joint["codes_changed_fraction"] = float((codes != old).mean())
        log.info("joint: GNN weights moved by %.4f; %.1f%% of codes changed", joint["gnn_weight_change"],
                 100 * joint["codes_changed_fraction"])
        nodes, scores, reports = evaluate(predictor, node_tokens, ws, quiet)
        metrics["joint"] = {**joint, **reports}
    else:
        soft = cfg.node_tokens == "soft"
        node_tokens = (graph_in_the_loop(ws, predictor, soft=True) if soft
                       else StoredWords(ws, codes, sampled_codes(ws, cfg.code_samples, cfg.seed), cfg.seed))
        pseudo_labels = head_distribution(ws) if cfg.distill_weight else None
        metrics = {"finetune": train(predictor, node_tokens, ws, cfg.ft_epochs, cfg.seed, quiet, "finetune",
                                     store=store, pseudo_labels=pseudo_labels)}
        nodes, scores, reports = evaluate(predictor, node_tokens, ws, quiet)
        metrics["finetune"].update(reports, scoring="first-token" if ws.template.first_token_unique else "sequence")
    metrics["final"] = reports
    metrics["seconds"] = round(time.time() - started, 2)
    gnn_state = node_tokens.state_dict() if isinstance(node_tokens, GraphInTheLoop) else None
    written = _write(store, ws, model, codes, nodes, scores, metrics, gnn_state, device) if distributed.is_main() else None
    distributed.barrier()
    return written or store.find("finetune", ws.key, cached=False)


def predictions_table(ws: Workspace, nodes: np.ndarray, scores: torch.Tensor) -> pa.Table:
    names = np.asarray(ws.data.class_names, dtype=object)
    pred = scores.argmax(1).numpy()
    return pa.table({
        "node_id": ws.data.node_ids[nodes],
        "split": split_names(ws.split[nodes]),
        "label": ws.data.y.numpy()[nodes],
        "prediction": pred,
        "label_name": names[ws.data.y.numpy()[nodes]].tolist(),
        "prediction_name": names[pred].tolist(),
        "scores": pa.array(list(scores.numpy().astype(np.float32)), type=pa.list_(pa.float32())),
    })


def _write(store: Store, ws: Workspace, model, codes: np.ndarray, nodes: np.ndarray, scores: torch.Tensor,
           metrics: dict, gnn_state, device: torch.device) -> Artifact:
    final, llm = metrics["final"], ws.llm
    manifest = {
        "dataset": ws.data.name, "encode": ws.encode.key, "llm": {"name": llm.name, "identity": llm.identity},
        "settings": key_fields(ws.cfg), "class_names": ws.data.class_names, "joint": ws.cfg.joint, "node_tokens": ws.cfg.node_tokens,
        "test_accuracy": final["test"]["accuracy"], "test_macro_f1": final["test"]["macro_f1"],
        "val_accuracy": final["val"]["accuracy"],
        "stage_one_test_accuracy": ws.encode.manifest["label_head_accuracy"]["test"], "seconds": metrics["seconds"],
        # the training run's peak, so that a later cache hit can still report it
        "peak_memory_mb": peak_memory_mb(device),
        # how it ran, not what it is (outside the key, as the device is): the LLM's compute dtype
        "dtype": ws.plan.placement.llm_dtype_name,
    }
    with store.writing("finetune", ws.key, manifest) as out:
        model.save_pretrained(out / "adapter")
        write_codes(out / "codes.parquet", ws.data, ws.split, [codes[:, t] for t in range(codes.shape[1])],
                                 ws.codebook)
        pq.write_table(predictions_table(ws, nodes, scores), out / "predictions.parquet")
        write_json(out / "metrics.json", metrics)
        run_file.write(out / "run.toml", ws.cfg)
        write_json(out / "prompt.json", {"instruction": ws.template.instruction,
                                         "scoring": "first-token" if ws.template.first_token_unique else "sequence"})
        if gnn_state is not None:  # the GNN (and projector) the final model reads through
            save_torch(gnn_state, out / "graph_in_the_loop.pt")
    log.info("finetune: test accuracy %.4f (macro-F1 %.4f) → %s", final["test"]["accuracy"],
             final["test"]["macro_f1"], store.root / "finetune" / ws.key)
    return store.find("finetune", ws.key, cached=False)
