"""What each command runs, from its settings: its plan, resolved once (:mod:`.resolve`), then the stages in
order. The CLI, the harness and a script all enter here; the stages below take the plan and derive none of it."""

from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

from . import bundle, distributed
from ..data import GraphData
from ..data.extend import read_new_nodes
from .artifacts import Artifact, Store
from .config import CodebookConfig, EncodeConfig, FinetuneConfig
from .llm import lora_targets, resolve_llm
from .placement import CPU, Placement, resolve_device
from .resolve import Plan, resolve
from .stages import codebook as codebook_stage
from .stages import encode as encode_stage
from .stages.finetune import finetune as finetune_stage
from .stages.finetune import predict as predict_stage
from .stages.finetune import workspace as workspace_stage


def codebook(cfg: CodebookConfig, store: Store, force: bool = False) -> Artifact:
    """The LLM's vocabulary refined into the codebook: all of it (``--text-codebook`` narrows it under encode)."""
    return codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store, force=force)


def encode(cfg: EncodeConfig, store: Store, force: bool = False, quiet: bool = False,
           placement: Placement = CPU, log_dir: Optional[Path] = None) -> Artifact:
    """Stage one (and the codebook and text features it reads) on ``placement``; its training curves under
    ``log_dir`` where one is given. Under ``torchrun`` every process runs this, each on its share of every step
    (:func:`~.stages.encode.training_batches`) on its own device; only the first shows progress."""
    placement = replace(placement, device=distributed.setup(placement.device))
    return encode_stage.run(resolve(cfg, store, placement, quiet or not distributed.is_main(), log_dir=log_dir), force)


def finetune(cfg: FinetuneConfig, store: Store, force: bool = False, quiet: bool = False,
             device="auto", graph: Optional[GraphData] = None, log_dir: Optional[Path] = None) -> Artifact:
    """Stage two, and every stage upstream of it that is not in the store yet (on ``graph``, where it is given
    rather than loaded from ``--dataset``); the training curves of each stage it trains under ``log_dir`` where one
    is given. Under ``torchrun`` every process runs this (:mod:`.distributed`)."""
    plan = _plan(cfg, store, quiet, device, graph=graph, log_dir=log_dir)
    targets = lora_targets(plan.llm, cfg.lora_targets)  # an impossible setting stops before any training
    ws = _workspace(plan)
    return finetune_stage.run(ws, targets, force)


def workspace(cfg: FinetuneConfig, store: Store, quiet: bool = False, cached_only: bool = False,
              device="auto", graph: Optional[GraphData] = None) -> workspace_stage.Workspace:
    """Stage two's inputs under ``cfg`` (stage one built if missing, unless ``cached_only``): report, explain."""
    return _workspace(_plan(cfg, store, quiet, device, cached_only, graph))


def predict(*args, **kwargs) -> list:
    """:func:`predict_chunks`' rows, all at once."""
    return [row for chunk in predict_chunks(*args, **kwargs) for row in chunk]


def predict_chunks(cfg: FinetuneConfig, store: Store, node_ids: Optional[list], device="auto", quiet: bool = False,
                   new_nodes=None, recode: bool = False, graph: Optional[GraphData] = None,
                   part: Optional[str] = None) -> Iterator[list]:
    """Answers for ``node_ids`` (or the nodes of split ``part``) from the fine-tuned model of ``cfg``, read from the
    store alone, a chunk of rows at a time (:func:`~.stages.finetune.predict.chunks`). ``new_nodes``: nodes to add
    to the graph first, as (node table, edge table) or :class:`~dre_pipeline.data.extend.NewNodes`, whose ids
    ``node_ids`` may name (None: all of them); ``recode``: the graph's own nodes take the extended graph's codes."""
    ws = workspace(cfg, store, quiet, cached_only=True, device=device, graph=graph)
    return predict_stage.chunks(ws, predict_stage.from_store(ws), node_ids, _new(new_nodes, ws), recode, part)


def predict_chunks_with_bundle(model: bundle.Bundle, cfg: FinetuneConfig, store: Store, node_ids: Optional[list],
                               device="auto", quiet: bool = False, new_nodes=None, recode: bool = False,
                               graph: Optional[GraphData] = None, part: Optional[str] = None) -> Iterator[list]:
    """:func:`predict_chunks` with a saved bundle on the graph of ``cfg`` (the bundle's settings with the data and LLM
    options of the command): its text features are made in ``store`` where missing, nothing else is built."""
    plan = _plan(cfg, store, quiet, device, graph=graph)
    bundle.check_graph(model, plan.data)
    ws = workspace_stage.with_codebook(plan, bundle.for_llm(model, plan.llm))
    return predict_stage.chunks(ws, bundle.trained(model), node_ids, _new(new_nodes, ws), recode, part)


def export(cfg: FinetuneConfig, store: Store, path, device="auto", quiet: bool = False,
           graph: Optional[GraphData] = None):
    """The fine-tuned model of ``cfg`` (from the store alone) as a bundle in the new folder ``path``."""
    ws = workspace(cfg, store, quiet, cached_only=True, device=device, graph=graph)
    trained = predict_stage.from_store(ws)
    manifest = store.find("finetune", ws.key).manifest
    measured = {name: manifest[name] for name in ("test_accuracy", "val_accuracy", "test_macro_f1")}
    return bundle.save(path, ws, trained, {"finetune_key": ws.key, "measured": measured})


def _new(new_nodes, ws: workspace_stage.Workspace):
    return read_new_nodes(*new_nodes, ws.data) if isinstance(new_nodes, tuple) else new_nodes


def _plan(cfg: FinetuneConfig, store: Store, quiet: bool, device, cached_only: bool = False,
          graph: Optional[GraphData] = None, log_dir: Optional[Path] = None) -> Plan:
    """Stage two's plan on ``--device`` (under ``torchrun``, this process's GPU) with ``--quantization``; only the
    first process shows progress."""
    placement = Placement.resolve(distributed.setup(resolve_device(device)), cfg.quantization, cfg.precision)
    return resolve(cfg, store, placement, quiet or not distributed.is_main(), cached_only, graph, log_dir)


def _workspace(plan: Plan) -> workspace_stage.Workspace:
    workspace_stage.prompts_with_text(plan)  # a prompt that cannot be made stops before stage one runs
    return workspace_stage.prepare(plan, encode_stage.run(plan))
