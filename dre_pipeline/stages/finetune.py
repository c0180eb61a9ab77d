"""``dre-pipeline finetune``: LoRA-finetune the LLM on graph-word prompts; optional joint pass.

One plain loop: shuffle the training nodes, batch, answer-token loss, backward, step;
score validation at the end of each epoch (or every ``eval_every`` steps), keep the best
adapter, stop early. Then score validation and test, write the adapter, predictions and
metrics. With ``--joint``, a second loop trains GNN and LLM together: the GNN's code
words enter the LLM as straight-through embeddings, so the LLM's loss reaches the GNN.
"""

import copy
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch_geometric.utils import k_hop_subgraph

from ..artifacts import Artifact, Store, artifact_key, write_json
from ..codebook import Codebook
from ..config import EncodeConfig, FinetuneConfig, key_fields, subset
from ..data import SPLIT_NAMES, GraphData
from ..evaluation import classification_report
from ..llm import load_model, load_tokenizer, quantization_config, resolve_device, resolve_llm
from ..predictor import GraphWordPredictor
from ..prompts import PromptTemplate, build_template, node_suffix
from ..quantizer import straight_through_words
from ..runtime import EarlyStopping, log, progress, seed_everything
from . import encode as encode_stage

EVAL_BATCH = 32


@dataclass
class Workspace:
    """Everything stage two reads, resolved from the config (shared by finetune and predict)."""

    cfg: FinetuneConfig
    encode: Artifact
    data: GraphData
    split: np.ndarray
    codebook: Codebook
    tokenizer: object
    template: PromptTemplate
    text_ids: list  # per node: its truncated text tokens (empty without --use-text)
    key: str


def prepare(cfg: FinetuneConfig, store: Store, quiet: bool = False, cached_only: bool = False) -> Workspace:
    encode = encode_stage.run(subset(cfg, EncodeConfig), store, quiet=quiet, cached_only=cached_only)
    llm = resolve_llm(cfg.llm_path, store)
    data, split = encode_stage.load_graph(cfg, store)
    codebook = Codebook.load(store.root / "codebook" / encode.manifest["codebook"])
    tokenizer = load_tokenizer(llm)
    use_text = cfg.use_text and data.text is not None
    if cfg.use_text and not use_text:
        log.warning("--use-text: %s has no text column; prompts hold graph words only", data.name)
    template = build_template(tokenizer, data.class_names, cfg.num_views, use_text)
    text_ids = ([tokenizer(t, add_special_tokens=False).input_ids[: cfg.max_text_tokens] for t in data.text]
                if use_text else [[] for _ in range(data.num_nodes)])
    own = key_fields(cfg, exclude=tuple(EncodeConfig.__dataclass_fields__))
    key = artifact_key({"settings": own, "encode": encode.key, "llm": llm.identity})
    return Workspace(cfg, encode, data, split, codebook, tokenizer, template, text_ids, key)


def suffixes_for(ws: Workspace, node_codes: np.ndarray, nodes) -> tuple:
    """Prompt suffixes and code positions for ``nodes``; ``node_codes`` is their ``[n, T, K]`` code ids."""
    token_ids = ws.codebook.token_ids[node_codes]  # n t k
    built = [node_suffix(ws.template, views, ws.text_ids[i]) for i, views in zip(nodes, token_ids)]
    return [ids for ids, _ in built], [pos for _, pos in built]


def codes_from_table(table: pa.Table, num_views: int) -> np.ndarray:
    return np.stack([np.stack(table[f"view{t}_codes"].to_numpy(zero_copy_only=False))
                     for t in range(1, num_views + 1)], axis=1)


def score(predictor: GraphWordPredictor, ws: Workspace, codes: np.ndarray, nodes: np.ndarray, quiet: bool,
          desc: str = "score") -> torch.Tensor:
    """``[n, C]`` class log-probabilities for ``nodes``, batched by prompt length."""
    suffixes, _ = suffixes_for(ws, codes[nodes], nodes)
    order = np.argsort([len(s) for s in suffixes], kind="stable")
    scores = torch.empty(len(nodes), len(ws.data.class_names))
    predictor.model.eval()
    for start in progress(range(0, len(order), EVAL_BATCH), quiet=quiet, desc=desc):
        batch = order[start: start + EVAL_BATCH]
        scores[batch] = predictor.class_scores([suffixes[i] for i in batch])
    return scores


def evaluate(predictor, ws: Workspace, codes: np.ndarray, quiet: bool) -> tuple:
    """Scores of validation and test nodes and their reports."""
    nodes = np.flatnonzero(ws.split >= 1)
    scores = score(predictor, ws, codes, nodes, quiet, desc="evaluate")
    pred, true, part = scores.argmax(1).numpy(), ws.data.y.numpy()[nodes], ws.split[nodes]
    reports = {name: classification_report(pred[part == i], true[part == i], len(ws.data.class_names))
               for i, name in enumerate(SPLIT_NAMES) if i > 0}
    return nodes, scores, reports


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def attach_lora(model, cfg: FinetuneConfig, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=[m.strip() for m in cfg.lora_targets.split(",") if m.strip()],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train_batches(nodes: np.ndarray, batch_size: int, generator: np.random.Generator):
    shuffled = generator.permutation(nodes)
    return [shuffled[i: i + batch_size] for i in range(0, len(shuffled), batch_size)]


def run(cfg: FinetuneConfig, store: Store, force: bool = False, quiet: bool = False,
        device: str = "auto") -> Artifact:
    device = resolve_device(device)
    quantization_config(cfg.quantization, device)  # an impossible setting stops before any work
    ws = prepare(cfg, store, quiet)
    if found := store.lookup("finetune", ws.key, force):
        return found
    log.info("finetune: reading %s", ws.encode.path)
    run_started = time.time()
    seed_everything(cfg.seed)
    llm = resolve_llm(cfg.llm_path, store)
    model = attach_lora(load_model(llm, device, cfg.quantization), cfg, cfg.quantization != "none")
    predictor = GraphWordPredictor(model, ws.template, ws.tokenizer.pad_token_id)
    codes = codes_from_table(pq.read_table(ws.encode.path / "codes.parquet"), cfg.num_views)
    train_nodes = np.flatnonzero(ws.split == 0)
    labels = ws.data.y.numpy()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.llm_lr,
                                  weight_decay=cfg.ft_weight_decay)
    generator = np.random.default_rng(cfg.seed)

    history, step, trained_tokens = [], 0, 0
    stopper = EarlyStopping(cfg.ft_patience, lambda: lora_state(model))

    def checkpoint(epoch: int, losses: list, seconds: float) -> None:
        _, _, reports = evaluate(predictor, ws, codes, quiet)
        record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                  "val_accuracy": reports["val"]["accuracy"], "val_macro_f1": reports["val"]["macro_f1"],
                  "seconds": round(seconds, 2)}
        history.append(record)
        stopper.update(record["val_accuracy"])
        log.info("finetune: epoch %d step %d loss %.4f val accuracy %.4f", epoch + 1, step, record["train_loss"],
                 record["val_accuracy"])

    started = time.time()
    for epoch in range(cfg.ft_epochs):
        epoch_start, losses = time.time(), []
        for batch in progress(train_batches(train_nodes, cfg.batch_size, generator), quiet=quiet,
                              desc=f"finetune epoch {epoch + 1}"):
            model.train()
            suffixes, _ = suffixes_for(ws, codes[batch], batch)
            loss = predictor.loss(suffixes, labels[batch].tolist())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            trained_tokens += len(ws.template.prefix_ids) + sum(map(len, suffixes))
            step += 1
            if cfg.eval_every and step % cfg.eval_every == 0:
                checkpoint(epoch, losses, time.time() - epoch_start)
                if stopper.stop:
                    break
        if not cfg.eval_every:
            checkpoint(epoch, losses, time.time() - epoch_start)
        if stopper.stop:
            break
    train_seconds = time.time() - started
    model.load_state_dict(stopper.best_state, strict=False)
    nodes, scores, reports = evaluate(predictor, ws, codes, quiet)
    metrics = {"finetune": {**reports, "history": history, "train_seconds": round(train_seconds, 2),
                            "trained_tokens_per_second": round(trained_tokens / max(train_seconds, 1e-9), 1),
                            "scoring": "first-token" if ws.template.first_token_unique else "sequence"}}

    gnn_state = None
    if cfg.joint:
        codes, gnn_state, joint_metrics = joint_pass(cfg, predictor, ws, quiet)
        nodes, scores, reports = evaluate(predictor, ws, codes, quiet)
        metrics["joint"] = {**reports, **joint_metrics}
    metrics["final"] = reports
    metrics["seconds"] = round(time.time() - run_started, 2)
    return _write(store, ws, model, codes, nodes, scores, metrics, gnn_state, llm)



def joint_pass(cfg: FinetuneConfig, predictor: GraphWordPredictor, ws: Workspace, quiet: bool) -> tuple:
    """Train GNN and LLM end to end; return the new codes ``[N, T, K]``, the GNN state and metrics.

    Each step runs the GNN on the batch's T-hop subgraph only (exact for its centre nodes),
    quantizes, and puts the code words into the prompt as straight-through embeddings.
    """
    device = predictor.device
    stage_one = encode_stage.build_model(subset(cfg, EncodeConfig), ws.data, ws.codebook)
    stage_one.load_state_dict(torch.load(ws.encode.path / "gnn.pt")["state_dict"])
    encoder = stage_one.encoder.to(device)
    before = [p.detach().clone() for p in encoder.parameters()]
    lora = [p for p in predictor.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": lora, "lr": cfg.llm_lr}, {"params": encoder.parameters(), "lr": cfg.gnn_lr}],
                                  weight_decay=cfg.ft_weight_decay)
    words = ws.codebook.vectors.to(device, predictor.embed.weight.dtype)
    x, edge_index = ws.data.x.to(device), ws.data.edge_index.to(device)
    labels, generator, gnn_grad_norms, started = ws.data.y.numpy(), np.random.default_rng(cfg.seed + 1), [], time.time()
    for epoch in range(cfg.joint_epochs):
        for batch in progress(train_batches(np.flatnonzero(ws.split == 0), cfg.batch_size, generator), quiet=quiet,
                              desc=f"joint epoch {epoch + 1}"):
            encoder.train()
            predictor.model.train()
            nodes, sub_edges, centre, _ = k_hop_subgraph(torch.from_numpy(batch).to(device), cfg.num_views, edge_index,
                                                         relabel_nodes=True, num_nodes=ws.data.num_nodes)
            views = encoder(x[nodes], sub_edges)
            batch_codes = torch.stack([v.codes[centre] for v in views], dim=1)  # b t k
            suffixes, positions = suffixes_for(ws, batch_codes.cpu().numpy(), batch)
            vectors = torch.cat([straight_through_words(v.z[centre], v.codes[centre], words) for v in views], 1)
            row_index = torch.arange(len(batch)).repeat_interleave(vectors.size(1))
            position = torch.tensor([p for row in positions for view in row for p in view])
            loss = predictor.loss(suffixes, labels[batch].tolist(), (row_index, position, vectors.flatten(0, 1)))
            loss = loss + cfg.beta * torch.stack([v.commitment for v in views]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnn_grad_norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in encoder.parameters()
                                                                 if p.grad is not None]))))
            optimizer.step()
    encoder.eval()
    with torch.no_grad():
        codes = torch.stack([v.codes for v in encoder(x, edge_index)], dim=1).cpu().numpy()
    old = codes_from_table(pq.read_table(ws.encode.path / "codes.parquet"), cfg.num_views)
    metrics = {
        "seconds": round(time.time() - started, 2),
        "gnn_grad_norm_mean": float(np.mean(gnn_grad_norms)),
        "gnn_weight_change": float(torch.norm(torch.stack([(p.detach() - b).norm() for p, b in zip(encoder.parameters(), before)]))),
        "codes_changed_fraction": float((codes != old).mean()),
    }
    log.info("joint: GNN weights moved by %.4f; %.1f%% of codes changed", metrics["gnn_weight_change"],
             100 * metrics["codes_changed_fraction"])
    return codes, stage_one.state_dict(), metrics


def predictions_table(ws: Workspace, nodes: np.ndarray, scores: torch.Tensor) -> pa.Table:
    names = np.asarray(ws.data.class_names, dtype=object)
    pred = scores.argmax(1).numpy()
    return pa.table({
        "node_id": ws.data.node_ids[nodes],
        "split": [SPLIT_NAMES[s] for s in ws.split[nodes]],
        "label": ws.data.y.numpy()[nodes],
        "prediction": pred,
        "label_name": names[ws.data.y.numpy()[nodes]].tolist(),
        "prediction_name": names[pred].tolist(),
        "scores": pa.array(list(scores.numpy().astype(np.float32)), type=pa.list_(pa.float32())),
    })


def _write(store: Store, ws: Workspace, model, codes: np.ndarray, nodes: np.ndarray, scores: torch.Tensor,
           metrics: dict, gnn_state, llm) -> Artifact:
    final = metrics["final"]
    manifest = {
        "dataset": ws.data.name, "encode": ws.encode.key, "llm": {"name": llm.name, "identity": llm.identity},
        "settings": key_fields(ws.cfg), "class_names": ws.data.class_names, "joint": gnn_state is not None,
        "test_accuracy": final["test"]["accuracy"], "test_macro_f1": final["test"]["macro_f1"],
        "val_accuracy": final["val"]["accuracy"],
        "stage_one_test_accuracy": ws.encode.manifest["label_head_accuracy"]["test"], "seconds": metrics["seconds"],
    }
    with store.writing("finetune", ws.key, manifest) as out:
        model.save_pretrained(out / "adapter")
        pq.write_table(encode_stage.codes_table(ws.data, ws.split, [codes[:, t] for t in range(codes.shape[1])],
                                                ws.codebook), out / "codes.parquet")
        pq.write_table(predictions_table(ws, nodes, scores), out / "predictions.parquet")
        write_json(out / "metrics.json", metrics)
        write_json(out / "prompt.json", {"instruction": ws.template.instruction,
                                         "scoring": "first-token" if ws.template.first_token_unique else "sequence"})
        if gnn_state is not None:
            torch.save({"state_dict": gnn_state}, out / "gnn.pt")
    log.info("finetune: test accuracy %.4f (macro-F1 %.4f) → %s", final["test"]["accuracy"],
             final["test"]["macro_f1"], store.root / "finetune" / ws.key)
    return store.find("finetune", ws.key, cached=False)
