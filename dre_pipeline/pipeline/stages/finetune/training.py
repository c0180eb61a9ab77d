"""Stage two's training loop (nanoGPT-style, one loop read top to bottom) and its scoring.

:func:`train`: shuffle the training nodes, batch, loss, backward, clip, step, schedule;
score validation every ``eval_every`` steps or each epoch, keep the best state, stop early; under ``--log-dir``
(the plan's) each step's loss and each evaluation go there too, as TensorBoard scalars tagged ``<phase>/``.
:func:`score` / :func:`evaluate` rank the class names for given nodes (predict uses them too).
"""

import math
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from ... import distributed
from ...artifacts import Store
from ...config import FinetuneConfig
from ...metrics_log import ScalarLog
from ....data import SPLIT_NAMES
from ....model.evaluation import classification_report
from ....model.predictor import GraphWordPredictor
from ....model.sampling import stratified_sample
from ...runtime import EarlyStopping, TrainingState, log, progress, snapshot
from .workspace import Workspace


EVAL_BATCH = 32


def score(predictor: GraphWordPredictor, node_tokens: nn.Module, ws: Workspace, nodes: np.ndarray,
          quiet: bool) -> torch.Tensor:
    """``[n, C]`` class log-probabilities for ``nodes``, batched by prompt length (each process scores its share)."""
    mine = distributed.shard(nodes)
    order = np.argsort([len(ws.text_ids[i]) for i in mine], kind="stable")  # the rest is T*K words for all
    scores = torch.empty(len(mine), len(ws.data.class_names))
    predictor.model.eval()
    node_tokens.eval()
    with torch.no_grad():
        for start in progress(range(0, len(order), EVAL_BATCH), quiet=quiet, desc="score"):
            batch = order[start: start + EVAL_BATCH]
            suffixes, words = node_tokens.tokens(mine[batch])
            scores[batch] = predictor.class_scores(suffixes, words)
    return distributed.gather_rows(scores, len(nodes))


def evaluate(predictor, node_tokens: nn.Module, ws: Workspace, quiet: bool, parts=("val", "test")) -> tuple:
    """Scores of the nodes of ``parts`` (validation's: its ``--ft-val-nodes`` sample where set) and a report per
    part (early stopping asks for val only)."""
    wanted = [SPLIT_NAMES.index(p) for p in parts]
    nodes = np.sort(np.concatenate([ws.scored_nodes(p) for p in parts]))
    started = time.time()
    scores = score(predictor, node_tokens, ws, nodes, quiet)
    pred, true, part = scores.argmax(1).numpy(), ws.data.y.numpy()[nodes], ws.split[nodes]
    reports = {SPLIT_NAMES[i]: classification_report(pred[part == i], true[part == i], len(ws.data.class_names))
               for i in wanted}
    reports["inference_nodes_per_second"] = round(len(nodes) / max(time.time() - started, 1e-9), 2)
    return nodes, scores, reports


def train(predictor: GraphWordPredictor, node_tokens: nn.Module, ws: Workspace, epochs: int, seed: int,
          quiet: bool, phase: str, keep_start: bool = False, store: Optional[Store] = None,
          pseudo_labels: Optional[torch.Tensor] = None) -> dict:
    """The training loop; returns its metrics and leaves the best state (LoRA + node tokens) loaded.

    ``keep_start``: the starting state competes too, so training that does not beat it on
    validation leaves the model as it was (the joint pass starts from a validated model).
    ``store``: after an epoch, at most every ``checkpoint_seconds()``, the training state is
    saved under the run's key; a killed run resumes at the next epoch and ends as an
    uninterrupted one would.
    ``pseudo_labels``: ``[N, C]`` class distributions; every node outside the training and
    validation sets then trains too, toward its row, at weight ``--distill-weight`` (GLEM's pseudo-labels).
    Under ``torchrun`` each process trains on its share of every batch (:mod:`..distributed`).
    """
    cfg, trained = ws.cfg, TrainedParameters(predictor.model)
    targets, weights = training_targets(ws, pseudo_labels)
    train_nodes = np.flatnonzero(weights > 0)
    classes = (targets.argmax(-1) if targets.dim() == 2 else targets).numpy()  # the strata of a prompt budget
    epoch_prompts = min(cfg.ft_prompts_per_epoch or len(train_nodes), len(train_nodes))
    optimizer, scheduler = optimizer_for(trained, node_tokens, cfg, epochs * math.ceil(epoch_prompts / cfg.batch_size))
    stopper = EarlyStopping(cfg.ft_patience,
                            lambda: (snapshot(trained.state_dict()), snapshot(node_tokens.state_dict())))
    generator = np.random.default_rng(seed)
    state = TrainingState(store, "finetune", ws.key, predictor.device, distributed.is_main(), trainable=trained,
                          node_tokens=node_tokens, optimizer=optimizer, scheduler=scheduler, stopper=stopper,
                          batches_rng=generator, node_tokens_rng=node_tokens.generator)
    history, step, tokens, prompts, gnn_norms, start_epoch, start_accuracy = [], 0, 0, 0, [], 0, None
    board = ScalarLog(ws.plan.log_dir, f"finetune-{ws.key}", distributed.is_main())
    if resumed := state.resume():
        history, step, tokens, prompts, gnn_norms, start_epoch, start_accuracy = (resumed[k] for k in (
            "history", "step", "tokens", "prompts", "gnn_norms", "epoch", "start_accuracy"))
        log.info("%s: resuming an interrupted run after epoch %d", phase, start_epoch)
    elif keep_start:
        start_accuracy = evaluate(predictor, node_tokens, ws, quiet, parts=("val",))[2]["val"]["accuracy"]
        stopper.update(start_accuracy)
    for epoch in range(start_epoch, epochs):
        epoch_start, losses, batches = time.time(), [], train_batches(
            stratified_sample(train_nodes, classes, epoch_prompts, generator), cfg.batch_size)
        for i, batch in enumerate(progress(batches, quiet=quiet, desc=f"{phase} epoch {epoch + 1}"), start=1):
            loss, batch_tokens, gnn_norm = train_step(predictor, node_tokens, optimizer, scheduler, batch,
                                                      targets, weights, cfg)
            losses.append(loss)
            if gnn_norm is not None:
                gnn_norms.append(gnn_norm)
            tokens, prompts, step = tokens + batch_tokens, prompts + len(batch), step + 1
            if cfg.eval_every and step % cfg.eval_every == 0 or i == len(batches):  # every epoch ends evaluated
                history.append(validation(predictor, node_tokens, ws, quiet, phase, epoch, step, losses, epoch_start))
                board.stage_two(phase, history[-1], losses)
                stopper.update(history[-1]["val_accuracy"])
                if stopper.stop:
                    break
        if stopper.stop:
            break
        state.save(history=history, step=step, tokens=tokens, prompts=prompts, gnn_norms=gnn_norms, epoch=epoch + 1,
                   start_accuracy=start_accuracy)
    train_seconds = state.seconds
    board.close()
    lora, tokens_state = stopper.best_state
    trained.load_state_dict(lora)
    node_tokens.load_state_dict(tokens_state)
    return training_metrics(history, train_seconds, step, tokens, prompts, gnn_norms, start_accuracy, phase)


class TrainedParameters:
    """The parameters a run trains (``requires_grad``), by name: what early stopping and the checkpoint keep.

    Not ``model.state_dict()``: on CPU, bitsandbytes' 4-bit layers come out of it changed in place
    (measured: class scores moved by 10 nats), so a checkpoint taken that way broke the model it was taken from.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state, strict=False)


def optimizer_for(trained: TrainedParameters, node_tokens: nn.Module, cfg: FinetuneConfig,
                  total_steps: int) -> tuple:
    """AdamW over the LoRA parameters at ``--llm-lr`` and, in a second group where there are any, the node tokens'
    own at ``--gnn-lr``, every process starting from the same values; and its schedule: (optimizer, scheduler)."""
    groups = [{"params": list(trained.state_dict().values()), "lr": cfg.llm_lr}]
    gnn_params = [p for p in node_tokens.parameters() if p.requires_grad]
    if gnn_params:
        groups.append({"params": gnn_params, "lr": cfg.gnn_lr})
    distributed.same_start([p for group in groups for p in group["params"]])
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.ft_weight_decay)
    return optimizer, lr_scheduler(optimizer, cfg, total_steps)


def train_step(predictor: GraphWordPredictor, node_tokens: nn.Module, optimizer, scheduler, batch: np.ndarray,
               targets: torch.Tensor, weights: torch.Tensor, cfg: FinetuneConfig) -> tuple:
    """One optimiser step on ``batch``, this process's share of it: (the batch's loss, its prompt tokens, over
    every process; the node tokens' gradient norm before clipping, or None where they train nothing)."""
    predictor.model.train()
    node_tokens.train()
    optimizer.zero_grad(set_to_none=True)
    mine, batch_loss, batch_tokens = distributed.shard(batch), 0.0, 0
    if len(mine):  # a process can be left without a row of the last, short batch
        suffixes, words = node_tokens.tokens(mine)
        loss = predictor.loss(suffixes, targets[mine], words, kind=cfg.ft_loss, weights=weights[mine])
        if node_tokens.stage_one_loss is not None:
            loss = loss + cfg.joint_stage_one_weight * node_tokens.stage_one_loss
        share = len(mine) / len(batch)  # summed over the processes, the shares make the batch mean
        (loss * share).backward()
        batch_loss = loss.item() * share
        batch_tokens = predictor.tokens_run(suffixes)
    trained_params = [p for group in optimizer.param_groups for p in group["params"]]
    distributed.sum_gradients(trained_params)
    gnn_norm = None
    if len(optimizer.param_groups) > 1:  # the node tokens' group (:func:`optimizer_for`)
        gnn_norm = float(torch.norm(torch.stack(
            [p.grad.norm() for p in optimizer.param_groups[1]["params"] if p.grad is not None])))
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trained_params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    batch_loss, batch_tokens = distributed.total([batch_loss, batch_tokens])
    return batch_loss, batch_tokens, gnn_norm


def validation(predictor: GraphWordPredictor, node_tokens: nn.Module, ws: Workspace, quiet: bool, phase: str,
               epoch: int, step: int, losses: list, epoch_start: float) -> dict:
    """The history's entry after ``step``: the mean of the epoch's ``losses`` so far and validation's scores."""
    _, _, reports = evaluate(predictor, node_tokens, ws, quiet, parts=("val",))
    entry = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
             "val_accuracy": reports["val"]["accuracy"], "val_macro_f1": reports["val"]["macro_f1"],
             "seconds": round(time.time() - epoch_start, 2)}
    log.info("%s: epoch %d step %d loss %.4f val accuracy %.4f", phase, epoch + 1, step, entry["train_loss"],
             entry["val_accuracy"])
    return entry


def training_metrics(history: list, seconds: float, steps: int, tokens: int, prompts: int, gnn_norms: list,
                     start_accuracy: Optional[float], phase: str) -> dict:
    """The run's metrics; ``start_accuracy``: under ``keep_start``, the starting state's validation accuracy."""
    metrics = {"history": history, "train_seconds": round(seconds, 2), "steps": steps,
               "trained_tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
               "trained_prompts_per_second": round(prompts / max(seconds, 1e-9), 2)}
    if start_accuracy is not None:
        metrics["val_accuracy_at_start"] = start_accuracy
        metrics["kept_start"] = not any(h["val_accuracy"] > start_accuracy for h in history)
        if metrics["kept_start"]:
            log.info("%s: no evaluation beat the starting validation accuracy %.4f; the starting state is kept",
                     phase, start_accuracy)
    if gnn_norms:
        metrics["gnn_grad_norm_mean"] = float(np.mean(gnn_norms))
    return metrics


def training_targets(ws: Workspace, pseudo_labels: Optional[torch.Tensor]) -> tuple:
    """Per node, what it trains toward and at what weight (0: not trained on).

    Without pseudo-labels: training nodes, their labels, weight 1. With them, the nodes outside
    training and validation join, toward their pseudo-label rows; training nodes keep their
    labels (as one-hot rows). Validation nodes stay out, so validation still measures the LLM
    on nodes it never trained on, not its agreement with the head that made the pseudo-labels.
    """
    train = ws.split == SPLIT_NAMES.index("train")
    labels = ws.data.y
    if pseudo_labels is None:
        return labels, torch.from_numpy(train.astype(np.float32))
    targets = pseudo_labels.clone()
    targets[train] = torch.nn.functional.one_hot(labels[train], targets.size(1)).to(targets.dtype)
    unlabelled = ws.split != SPLIT_NAMES.index("val")
    weights = np.where(train, 1.0, np.where(unlabelled, ws.cfg.distill_weight, 0.0))
    return targets, torch.from_numpy(weights.astype(np.float32))


def lr_scheduler(optimizer, cfg: FinetuneConfig, total_steps: int):
    """Linear warmup over ``warmup_ratio`` of the steps, then constant, linear or cosine decay to 0."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def train_batches(nodes: np.ndarray, batch_size: int) -> list:
    return [nodes[i: i + batch_size] for i in range(0, len(nodes), batch_size)]
