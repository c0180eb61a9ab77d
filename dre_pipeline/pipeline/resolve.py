"""One resolution per command: the LLM, the graph and its split, the codebook's vocabulary and every key.

A command resolves its :class:`Plan` once (:func:`resolve`) and hands it to the stages, which read it and
derive none of it again: the LLM is identified once (a model file is hashed once per path, size and
modification time), the graph is loaded once, with the node features ``--features`` names.

Each stage declares the settings its key holds (``KEY_FIELDS`` in its module); a setting reaches a stage
downstream only through the upstream key:

- codebook = H(the LLM's identity, :data:`.stages.codebook.KEY_FIELDS`, the vocabulary under ``--text-codebook``)
- encode = H(:data:`.stages.encode.KEY_FIELDS`, the codebook's key, the graph's fingerprint), and where the graph
  trains in mini-batches, :data:`.stages.encode.MINI_BATCH_KEY_FIELDS`
- finetune = H(:data:`.stages.finetune.workspace.KEY_FIELDS`, the encode key, the LLM's identity, the prompts'
  tokens), resolved with the stage-one artifact (:func:`.stages.finetune.workspace.prepare`)

The graph's fingerprint covers its features: text features are an artifact of their own (:mod:`.stages.features`),
keyed by the raw graph's fingerprint and the encoder's identity.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .artifacts import Store
from .config import EncodeConfig
from ..data import GraphData, load_dataset, make_split, text_vocabulary
from .llm import ResolvedLLM, embedding_width, quantization_config, resolve_llm
from . import metrics_log
from .placement import CPU, Placement
from .stages import features
from .stages.codebook import codebook_key
from .stages.encode import encode_key, mini_batch_size


@dataclass(frozen=True)
class Plan:
    """What a command runs on, resolved once."""

    cfg: EncodeConfig  # a FinetuneConfig for stage two's commands
    store: Store
    placement: Placement
    llm: ResolvedLLM
    data: GraphData  # with the node features --features names, on the CPU
    split: np.ndarray  # [N] int8: 0 train, 1 val, 2 test
    vocabulary: Optional[frozenset]  # the codebook's words under --text-codebook, else None
    keys: dict = field(default_factory=dict)  # stage -> its key: features (text features only), codebook, encode
    batch_nodes: int = 0  # seeds per stage-one step (:func:`.stages.encode.mini_batch_size`), 0: full batch
    quiet: bool = False
    cached_only: bool = False  # nothing may be built: status, predict
    log_dir: Optional[Path] = None  # --log-dir: each training run's TensorBoard scalars go below it


def resolve(cfg: EncodeConfig, store: Store, placement: Placement = CPU, quiet: bool = False,
            cached_only: bool = False, graph: Optional[GraphData] = None, log_dir: Optional[Path] = None) -> Plan:
    """The plan of ``cfg``; text features are computed here if they are not cached (unless ``cached_only``,
    where a missing one is an :class:`~dre_pipeline.errors.InputError`), nothing else is built.

    ``placement``: the command's, where and how ``--features llm`` runs the LLM; ``graph``: the graph itself
    (one built in Python), instead of loading ``--dataset``; ``log_dir``: ``--log-dir``, refused here, before any
    work, where TensorBoard is missing.
    """
    if log_dir is not None:
        metrics_log.require(log_dir)
    llm = resolve_llm(cfg.llm_path, store)
    quantization_config(placement.quantization, placement.device, llm)  # an impossible placement stops here
    data, split, vocabulary, text_features = load_graph(cfg, llm, store, quiet, cached_only, placement, graph)
    keys = {"features": text_features.key} if text_features is not None else {}
    keys["codebook"] = codebook_key(cfg, llm, vocabulary)
    batch_nodes = mini_batch_size(cfg, data.num_nodes, data.edge_index.size(1), data.x.size(1), embedding_width(llm))
    keys["encode"] = encode_key(cfg, keys["codebook"], data, batch_nodes)
    return Plan(cfg, store, placement, llm, data, split, vocabulary, keys, batch_nodes, quiet, cached_only, log_dir)


def load_graph(cfg: EncodeConfig, llm: Optional[ResolvedLLM], store: Store, quiet: bool = False,
               cached_only: bool = False, placement: Placement = CPU, graph: Optional[GraphData] = None) -> tuple:
    """(the graph with the features ``--features`` names, its split, the words of its text where
    ``--text-codebook`` narrows the codebook to them (else None), the features' artifact or None for its own);
    ``llm``: the one ``--features llm`` embeds with (None where the features do not need it); ``graph``: the
    graph, where it is not loaded from ``--dataset``."""
    data = graph or load_dataset(cfg.dataset, cfg.data_dir, store.root / "data", seed=cfg.seed)
    split = make_split(data, cfg.split, cfg.seed)
    vocabulary = text_vocabulary(data.text) if cfg.text_codebook and data.text is not None else None
    data, text_features = features.load(cfg.features, data, llm, store, quiet, cached_only, placement)
    return data, split, vocabulary, text_features
