r"""Node features from the LLM (``--features llm``): the reference's ``x_emb.pt``, made reproducible.

Each node's text is read by the same LLM that stage two fine-tunes. Its feature vector is
the mean of the last hidden states over the text's tokens:

.. math::
    x_i = \frac{1}{|s_i|} \sum_{j \in s_i} H^{(L)}_j(s_i),

where :math:`s_i` is the first 512 tokens of node i's text and :math:`H^{(L)}` the LLM's last hidden states.

Computed once, with a progress bar, and cached in the store under ``features/<key>``
(the graph's fingerprint and the LLM's identity), as zarr.
"""

import time
from dataclasses import replace

import numpy as np
import torch

from ..artifacts import Artifact, Store, artifact_key, digest, read_matrix, write_matrix
from ..data import GraphData
from ..errors import InputError
from ..llm import load_model, load_tokenizer, resolve_device, resolve_llm
from ..runtime import log, progress

MAX_TOKENS = 512
BATCH = 16


def run(data: GraphData, llm_path, store: Store, quiet: bool = False, cached_only: bool = False) -> Artifact:
    if data.text is None:
        raise InputError(f"--features llm embeds each node's text, and {data.name!r} has none: use --features raw")
    llm = resolve_llm(llm_path, store)
    key = artifact_key({"data": data.fingerprint, "llm": llm.identity, "pooling": "mean-last-hidden",
                        "max_tokens": MAX_TOKENS})
    if found := store.lookup("features", key, force=False, cached_only=cached_only):
        return found
    started = time.time()
    device = resolve_device("auto")
    tokenizer = load_tokenizer(llm)
    model = load_model(llm, device).eval()
    tokens = [tokenizer(t, add_special_tokens=False).input_ids[:MAX_TOKENS] or [tokenizer.eos_token_id]
              for t in data.text]
    order = np.argsort([len(t) for t in tokens], kind="stable")  # batches of similar length pad little
    features = torch.empty(data.num_nodes, model.config.hidden_size)
    with torch.no_grad():
        for start in progress(range(0, len(order), BATCH), quiet=quiet, desc="text features"):
            batch = order[start: start + BATCH]
            width = max(len(tokens[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(tokens[i])], mask[row, : len(tokens[i])] = torch.tensor(tokens[i]), 1
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            weights = mask.to(device).unsqueeze(-1).to(hidden.dtype)
            features[torch.from_numpy(batch)] = ((hidden * weights).sum(1) / weights.sum(1)).float().cpu()
    manifest = {"dataset": data.name, "fingerprint": data.fingerprint,
                "llm": {"name": llm.name, "identity": llm.identity}, "pooling": "mean-last-hidden",
                "max_tokens": MAX_TOKENS, "shape": list(features.shape),
                "seconds": round(time.time() - started, 2)}
    with store.writing("features", key, manifest) as out:
        write_matrix(out / "features.zarr", features)
    log.info("features: %d nodes' text embedded by %s in %.1fs", data.num_nodes, llm.name, manifest["seconds"])
    return store.find("features", key, cached=False)


def with_llm_features(data: GraphData, artifact: Artifact) -> GraphData:
    """The same graph with the features of ``artifact`` (from :func:`run`) as ``x``, standardised, and a
    fingerprint that says so.

    Mean-pooled hidden states share one large direction (SmolLM2-135M on Cora-ML: a few
    dimensions reach 40 while the median spread is 0.3). Left in, it dominates the cosine
    code search, every node gets the same words, and stage one stays at chance. Each
    dimension is therefore centred and scaled to unit variance over the nodes (no labels used).
    """
    x = read_matrix(artifact.path / "features.zarr")
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return replace(data, x=x, fingerprint=digest({"graph": data.fingerprint, "features": artifact.key,
                                                   "standardised": True}))
