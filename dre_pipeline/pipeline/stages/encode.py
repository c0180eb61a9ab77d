"""``dre-pipeline encode``: train the multi-view GNN + residual VQ, write each node's words.

One plain loop: forward, the four losses, backward, step; every ``eval_epochs`` epochs,
evaluate the label head on validation, keep the best state, stop early. Under ``--keyword-weight``
the views are first fitted to their hops' keywords alone (:func:`fit_keywords`), and the keyword
loss stays in the sum after. Then every node's codes go to
``codes.parquet`` and the run's history to ``metrics.json``. At an evaluation, at most every
``checkpoint_seconds()``, the whole training state is saved; a killed run resumes from it and
ends as an uninterrupted one would.
"""

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...model import losses
from ..artifacts import Artifact, Store, artifact_key, save_torch, write_json
from ...model.codebook import Codebook
from ..config import EncodeConfig, key_fields, subset
from ...data import GraphData
from ...model.gnn import MultiViewSAGE, StageOneModel
from ...model.grounding import hop_keyword_targets, keyword_loss, seed_rows
from ...model.quantizer import perplexity
from ...model.evaluation import split_accuracy
from ...model.sampling import NeighborSampler
from .. import distributed, run_file
from ..metrics_log import ScalarLog
from ..runtime import EarlyStopping, TrainingState, log, progress, seed_everything, snapshot
from . import codebook as codebook_stage
from .code_table import write_codes

# Above FULL_BATCH_BYTES for a full-batch step (:func:`full_batch_bytes`), stage one trains on sampled
# mini-batches of AUTO_BATCH_NODES seeds. 256 seeds with 15,10,5 neighbours reach about 150k nodes on a 1M-node
# graph of degree 10: a few GB a step. The budget is the graph's, never the machine's: the choice changes the
# result and the key does not hold it. 20 GiB keeps what the former 200,000-node threshold chose at SmolLM2's
# 576 dimensions (ogbn-arxiv: 17 GB, full batch; bench --scale's 300k nodes: 28 GB, batched); ogbn-arxiv at a
# 7B model's 4,096 (121 GB) is batched.
FULL_BATCH_BYTES = 20 * 2**30
AUTO_BATCH_NODES = 256
# What a full-batch step keeps for backward per view, in [N, d] tensors: the convolution's aggregate and output,
# dropout's output and mask, ELU's, the normalised view, the quantizer's residual and straight-through output,
# the next hop's input, the decoders' share of their concatenation.
TENSORS_PER_VIEW = 10
# Keyword fitting moves the views far from where they start: at stage one's 1e-3 they barely
# moved in 50 full-batch steps (Cora-ML, cosine to the target 0.1), at 1e-2 200 steps reach 0.7.
KEYWORD_LR = 1e-2


def full_batch_bytes(num_nodes: int, num_edges: int, num_features: int, width: int, num_views: int) -> int:
    r"""Bytes a full-batch step of stage one holds, in fp32:

    .. math:: 4\,\big(N\,(c\,T\,d + 3F) + E\,\max(F, d)\big)

    with :data:`TENSORS_PER_VIEW` :math:`c` activations of width d per view, the features, their
    reconstruction and its gradient (:math:`3F`), and one hop's messages, one per edge. The adjacency
    loss adds a bounded chunk (:func:`~dre_pipeline.model.losses.pair_chunk`), not a term in N or E.
    """
    per_node = TENSORS_PER_VIEW * num_views * width + 3 * num_features
    return 4 * (num_nodes * per_node + num_edges * max(num_features, width))


def mini_batch_size(cfg: EncodeConfig, num_nodes: int, num_edges: int, num_features: int, width: int) -> int:
    """Seed nodes per stage-one step, or 0 for full batch: ``--batch-nodes``, by default :data:`AUTO_BATCH_NODES`
    where a full-batch step on codebook width ``width`` would exceed :data:`FULL_BATCH_BYTES` (a graph's sizes
    only, so that ``plan`` decides as ``encode`` will)."""
    step = full_batch_bytes(num_nodes, num_edges, num_features, width, cfg.num_views)
    size = cfg.batch_nodes or (AUTO_BATCH_NODES if step > FULL_BATCH_BYTES else 0)
    return size if size < num_nodes else 0


def train_step(model: StageOneModel, optimizer, data: GraphData, train_mask: torch.Tensor, nodes,
               edges: torch.Tensor, num_seeds: int, cfg: EncodeConfig, keyword_targets: list = None,
               hops: tuple = None, weight: float = 1.0) -> dict:
    """One step on the subgraph of ``nodes`` (the first ``num_seeds`` are the batch's seeds); its losses.

    ``keyword_targets``: the whole graph's :func:`~dre_pipeline.model.grounding.hop_keyword_targets`, or None.
    ``hops``: the sampler's per-hop counts, for a trimmed step: each layer computes only what the seeds need, so
    every loss is the seeds' (the adjacency loss on the sampled edges between them). None: every layer on the whole
    subgraph (full batch: the graph), the label loss the seeds'. ``weight``: this process's share of the step
    (:func:`optimizer_step`).
    """
    x, y, labelled = data.x[nodes], data.y[nodes], train_mask[nodes].clone()
    labelled[num_seeds:] = False
    keywords = seed_rows(keyword_targets, nodes, num_seeds) if keyword_targets is not None else None
    views, *decoded = model(x, edges, hops)
    if hops is not None:
        x, y, labelled, edges = x[:num_seeds], y[:num_seeds], labelled[:num_seeds], seed_edges(edges, num_seeds)
    loss, parts = losses.stage_one_loss(views, *decoded, x, edges, y, labelled, cfg, keywords)
    optimizer_step(optimizer, loss, weight, model.parameters())
    return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


def optimizer_step(optimizer, loss: torch.Tensor, weight: float, params) -> None:
    """Backward on ``weight`` x ``loss`` (this process's share of the step's seeds: 1 in one process), the gradients
    summed over the processes under ``torchrun`` (:mod:`..distributed`), and the step: every process steps alike,
    as one process would on the whole step's loss, the mean of the shares'."""
    optimizer.zero_grad(set_to_none=True)
    (loss * weight).backward()
    distributed.sum_gradients(list(params))
    optimizer.step()


def seed_edges(edges: torch.Tensor, num_seeds: int) -> torch.Tensor:
    """The edges of a subgraph between its first ``num_seeds`` nodes."""
    return edges[:, (edges < num_seeds).all(0)]


def labelled_seeds(batch_nodes: int, share: float) -> int:
    """Training nodes among a mini-batch step's ``batch_nodes`` seeds, ``share`` of them drawn from the others."""
    return max(1, round(batch_nodes * (1 - share)))


def steps_per_epoch(num_train: int, batch_nodes: int, share: float) -> int:
    """Mini-batch steps in an epoch of :func:`epoch_seeds` over ``num_train`` training nodes."""
    return math.ceil(num_train / labelled_seeds(batch_nodes, share))


def epoch_seeds(train_mask: torch.Tensor, batch_nodes: int, share: float, generator: torch.Generator):
    """Each step's seeds for one epoch of mini-batch training: the training nodes (``train_mask`` [N], on the CPU)
    in a random order, each once, :func:`labelled_seeds` a step, each step completed to ``batch_nodes`` by the
    next ones of the other nodes in a random order (round and round; none twice in a step)."""
    train, other = train_mask.nonzero().view(-1), (~train_mask).nonzero().view(-1)
    train = train[torch.randperm(len(train), generator=generator)]
    other = other[torch.randperm(len(other), generator=generator)]
    labelled = labelled_seeds(batch_nodes, share)
    extra = min(batch_nodes - labelled, len(other))
    for step, seeds in enumerate(train.split(labelled)):
        yield torch.cat([seeds, other[(step * extra + torch.arange(extra)) % max(1, len(other))]])


def training_batches(data: GraphData, sampler, batch_nodes: int, train_mask: torch.Tensor, share: float,
                     order: torch.Generator):
    """(nodes, edges, number of seeds, per-hop counts, this process's share) per step, on ``data``'s device. Full
    batch: the whole graph, every node a seed, no counts. Mini-batch: :func:`epoch_seeds` in the order ``order``
    draws, each step's seeds with their sampled neighbourhood, ordered by hop for a trimmed step
    (:func:`train_step`); only the seeds' outputs are exact up to sampling, so only they enter the losses. The
    sampler draws on the CPU, so a device draws the batches a CPU run draws. Under ``torchrun`` each process
    takes its share of every step's seeds (:func:`~..distributed.shard`); a full-batch step is every process's."""
    if sampler is None:  # a slice: the whole graph's tensors as views, not copies
        yield slice(None), data.edge_index, data.num_nodes, None, 1 / distributed.world()
        return
    for seeds in epoch_seeds(train_mask.cpu(), batch_nodes, share, order):
        mine = distributed.shard(seeds)
        weight = len(mine) / len(seeds)
        if not len(mine):  # fewer seeds than processes: a seed at weight 0, so that this process still steps alike
            mine = seeds[:1]
        nodes, edges, *hops = sampler.sample_hops(mine)
        yield nodes.to(data.x.device), edges.to(data.x.device), len(mine), hops, weight


def fit_keywords(model: StageOneModel, data: GraphData, sampler, order: torch.Generator, batch_nodes: int,
                 train_mask: torch.Tensor, share: float, targets: list, epochs: int, quiet: bool) -> None:
    """Fit the views to their keyword targets alone (:mod:`~dre_pipeline.model.grounding`) before the joint objective."""
    if not epochs:
        return
    optimizer = torch.optim.AdamW(model.encoder.parameters(), lr=KEYWORD_LR)
    model.train()
    for _ in progress(range(epochs), quiet=quiet, desc="keyword epoch"):
        for nodes, edges, num_seeds, hops, weight in training_batches(data, sampler, batch_nodes, train_mask, share,
                                                                      order):
            loss = keyword_loss(model.encoder(data.x[nodes], edges, hops), seed_rows(targets, nodes, num_seeds))
            optimizer_step(optimizer, loss, weight, model.encoder.parameters())
    log.info("encode: views fitted to their keywords in %d epochs (keyword loss %.3f)", epochs, loss.item())


# What stage one's key holds besides the codebook's key and the graph's fingerprint.
KEY_FIELDS = ("dataset", "split", "features", "seed", "num_views", "codes_per_view", "text_codebook",
              "keyword_weight", "keyword_epochs", "inter_residual", "word_scale", "dropout", "input_dropout",
              "batch_nodes", "num_neighbors", "lr", "weight_decay", "epochs", "patience", "eval_epochs", "beta",
              "feature_weight", "adjacency_weight", "label_weight")
# ... and where the graph trains in mini-batches (:func:`mini_batch_size`), those only batched training reads: a
# full-batch key is as it was before they existed, and a mini-batch key since steps are trimmed is a new one.
MINI_BATCH_KEY_FIELDS = ("reconstruction_seeds",)


def encode_key(cfg: EncodeConfig, codebook_key: str, data: GraphData, batch_nodes: int) -> str:
    """Stage one's key on ``data``, trained in steps of ``batch_nodes`` seeds (:func:`mini_batch_size`; 0: full batch)."""
    names = KEY_FIELDS + (MINI_BATCH_KEY_FIELDS if batch_nodes else ())
    return artifact_key({"settings": key_fields(cfg, names), "codebook": codebook_key, "data": data.fingerprint})


def build_model(cfg: EncodeConfig, data: GraphData, codebook: Codebook) -> StageOneModel:
    encoder = MultiViewSAGE(data.x.size(1), codebook.vectors, cfg.num_views, cfg.codes_per_view, cfg.dropout,
                            cfg.inter_residual, cfg.word_scale, cfg.input_dropout)
    return StageOneModel(encoder, data.x.size(1), data.num_classes)


def on_device(data: GraphData, device: torch.device) -> GraphData:
    """The graph's features, edges and labels on ``device`` (the same tensors where they are there already)."""
    return replace(data, x=data.x.to(device), edge_index=data.edge_index.to(device), y=data.y.to(device))


def run(plan: "Plan", force: bool = False) -> Artifact:
    """Stage one of ``plan`` (:mod:`..plan`; or its cached result), trained on the plan's device; the artifact
    is the same whatever the device (its key does not hold it), and on the CPU bit for bit."""
    cfg, store, data, split_np = subset(plan.cfg, EncodeConfig), plan.store, plan.data, plan.split
    quiet, cached_only = plan.quiet, plan.cached_only
    codebook_artifact = codebook_stage.run(cfg, plan.llm, store, plan.vocabulary, cached_only=cached_only)
    key = plan.keys["encode"]
    if cached_only:
        return store.lookup("encode", key, force, cached_only)
    # under torchrun every process trains (each its share of every step); the first decides on the cache and writes
    found = store.lookup("encode", key, force) if distributed.is_main() else None
    if distributed.agree(found is not None):
        return found or store.find("encode", key)
    log.info("encode: %s (%d nodes), codebook %s", data.name, data.num_nodes, codebook_artifact.path)

    codebook = codebook_stage.load(codebook_artifact)
    device = plan.placement.device
    graph = on_device(data, device)
    split = torch.from_numpy(split_np).long().to(device)
    started = time.time()
    model, history, train_seconds = train(cfg, data, graph, split, codebook, store, key, quiet, plan.batch_nodes,
                                          plan.log_dir)

    # shrink: the residual norm per level, over views and nodes
    codes, logits, shrink = model.inference(graph.x, graph.edge_index)
    acc = split_accuracy(logits.argmax(-1), graph.y, split)
    metrics = {
        "label_head_accuracy": acc,
        "perplexity": view_perplexities(codes, len(codebook)),
        "residual_norm_by_level": shrink.tolist(),
        "best_epoch": max(history, key=lambda h: h["accuracy"]["val"])["epoch"],
        "epochs_run": history[-1]["epoch"],
        "train_seconds": round(train_seconds, 2),
        "history": history,
    }
    manifest = {
        "dataset": data.name, "fingerprint": data.fingerprint, "codebook": codebook_artifact.key,
        "settings": key_fields(cfg), "label_head_accuracy": acc, "perplexity": metrics["perplexity"],
        "num_nodes": data.num_nodes, "class_names": data.class_names, "seconds": round(time.time() - started, 2),
    }
    if distributed.is_main():
        write(store, key, manifest, data, split_np, codes, codebook, metrics, model, cfg)
    distributed.barrier()
    log.info("encode: label head accuracy train %.4f val %.4f test %.4f; perplexity per view %s; %.1fs → %s",
             acc["train"], acc["val"], acc["test"], [round(p, 1) for p in metrics["perplexity"]], train_seconds,
             store.root / "encode" / key)
    return store.find("encode", key, cached=False)


def write(store: Store, key: str, manifest: dict, data: GraphData, split_np: np.ndarray, codes: torch.Tensor,
          codebook: Codebook, metrics: dict, model: StageOneModel, cfg: EncodeConfig) -> None:
    with store.writing("encode", key, manifest) as out:
        write_codes(out / "codes.parquet", data, split_np, [codes[:, t].cpu().numpy() for t in range(codes.size(1))],
                    codebook)
        write_json(out / "metrics.json", metrics)
        save_torch({"state_dict": {name: t.cpu() for name, t in model.state_dict().items()}}, out / "gnn.pt")
        run_file.write(out / "run.toml", cfg)


def train(cfg: EncodeConfig, data: GraphData, graph: GraphData, split: torch.Tensor, codebook: Codebook,
          store: Store, key: str, quiet: bool, batch_nodes: int, log_dir: Optional[Path] = None) -> tuple:
    """Stage one's loop on ``graph`` (``data`` on the training device; ``split`` [N] there too) in steps of
    ``batch_nodes`` seeds (0: full batch), resumed from the checkpoint a killed run left under ``key``: (the model
    at its best validation, the history, the training seconds over every run it resumes). ``log_dir``: each
    evaluation goes there too, as TensorBoard scalars."""
    device = graph.x.device
    seed_everything(cfg.seed)
    model = build_model(cfg, data, codebook).to(device)  # initialised on the CPU: the same weights on any device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = batch_sampler(cfg, data, batch_nodes)
    # the epochs' seed order, the same in every process; one process draws it from the sampler's generator
    order = sampler and (sampler.generator if distributed.world() == 1 else torch.Generator().manual_seed(cfg.seed))
    own_order = {"order_rng": order} if sampler and order is not sampler.generator else {}
    log.info("encode: training on %s", device)
    keyword_targets = keyword_targets_for(cfg, data, codebook, model, device)
    # Patience is in epochs; the stopper counts evaluations.
    stopper = EarlyStopping(math.ceil(cfg.patience / cfg.eval_epochs), lambda: snapshot(model.state_dict()))
    state = TrainingState(store, "encode", key, device, distributed.is_main(), model=model, optimizer=optimizer,
                          stopper=stopper, sampler_rng=sampler.generator if sampler else None,
                          **own_order)
    history, start_epoch, losses_since_eval, train_mask = [], 0, [], split == 0
    board = ScalarLog(log_dir, f"encode-{key}", distributed.is_main())
    if resumed := state.resume():
        history, start_epoch = resumed["history"], resumed["epoch"]
        log.info("encode: resuming an interrupted run after epoch %d", start_epoch)
    elif keyword_targets is not None:  # a resumed run has fitted them already
        fit_keywords(model, graph, sampler, order, batch_nodes, train_mask, cfg.reconstruction_seeds, keyword_targets,
                     cfg.keyword_epochs, quiet)
    bar = progress(range(start_epoch, cfg.epochs), quiet=quiet, desc="encode epoch")
    for epoch in bar:
        model.train()
        # a mini-batch epoch of a large graph runs for many minutes: its steps show progress of their own
        steps = progress(training_batches(graph, sampler, batch_nodes, train_mask, cfg.reconstruction_seeds, order),
                         quiet=quiet or sampler is None, desc="encode step",
                         total=sampler and steps_per_epoch(int(train_mask.sum()), batch_nodes, cfg.reconstruction_seeds))
        for nodes, edges, num_seeds, hops, weight in steps:
            losses_since_eval.append(train_step(model, optimizer, graph, train_mask, nodes, edges, num_seeds, cfg,
                                                keyword_targets, hops, weight))
        if (epoch + 1) % cfg.eval_epochs and epoch + 1 < cfg.epochs:
            continue
        history.append(evaluation(model, graph, split, len(codebook), epoch + 1, losses_since_eval))
        losses_since_eval = []
        board.stage_one(history[-1])
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val=f"{history[-1]['accuracy']['val']:.3f}")
        stopper.update(history[-1]["accuracy"]["val"])
        if stopper.stop:  # no checkpoint: the run ends here
            break
        state.save(history=history, epoch=epoch + 1)
    train_seconds = state.seconds
    board.close()
    model.load_state_dict(stopper.best_state)
    return model, history, train_seconds


def batch_sampler(cfg: EncodeConfig, data: GraphData, batch_nodes: int):
    """The neighbour sampler of mini-batch training in steps of ``batch_nodes`` seeds, or None: full batch. It
    samples the CPU graph ``data``, so that every device trains on the batches a CPU run draws."""
    if not batch_nodes:
        return None
    log.info("encode: mini-batches of %d seeds (%.0f%% from outside the training set), %s neighbours sampled "
             "per hop, each layer computed for the seeds' reach only", batch_nodes, 100 * cfg.reconstruction_seeds,
             cfg.num_neighbors)
    # under torchrun each process samples its share's neighbourhoods, from a generator of its own
    seed = cfg.seed if distributed.world() == 1 else cfg.seed + 1 + distributed.rank()
    return NeighborSampler(data.edge_index, data.num_nodes, cfg.neighbors(), seed)


def keyword_targets_for(cfg: EncodeConfig, data: GraphData, codebook: Codebook, model: StageOneModel,
                        device: torch.device):
    """Under ``--keyword-weight`` on a graph with text, each hop's keyword targets on ``device``; else None."""
    if not cfg.keyword_weight or data.text is None:
        return None
    return [target.to(device) for target in hop_keyword_targets(
        data.text, codebook.words, model.encoder.quantizer.words.cpu(), data.edge_index, data.num_nodes,
        cfg.num_views, cfg.codes_per_view)]


def evaluation(model: StageOneModel, graph: GraphData, split: torch.Tensor, codebook_size: int, epochs: int,
               step_losses: list) -> dict:
    """The history's entry after ``epochs``: each loss's mean over ``step_losses`` (the steps since the last
    entry), the label head's accuracy per split, each view's code perplexity."""
    codes, logits, _ = model.inference(graph.x, graph.edge_index)
    mean_losses = {k: float(np.mean([step[k] for step in step_losses])) for k in step_losses[0]}
    return {"epoch": epochs, **mean_losses, "accuracy": split_accuracy(logits.argmax(-1), graph.y, split),
            "perplexity": view_perplexities(codes, codebook_size)}


def view_perplexities(codes: torch.Tensor, codebook_size: int) -> list:
    """Per view, the perplexity of its codes (``codes`` [N, T, K])."""
    return [perplexity(codes[:, t], codebook_size) for t in range(codes.size(1))]
