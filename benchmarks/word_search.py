r"""Stage one's code search, exact against an approximate one over clustered words, side by side in one process.

The approximate search (issue 28's "inverted-file index over the codebook", here in torch): the unit words are
clustered once by spherical k-means into C = sqrt(M) clusters with unit centroids :math:`\mu_c`; each level
scores the residual against the centroids, keeps its P = C / 8 best clusters and searches their words exactly,

.. math::
    c_k = \arg\max_{j \in W(r_{k-1})} r_{k-1} \cdot \hat e_j, \qquad
    W(r) = \{\, j : \mathrm{cluster}(j) \in \mathrm{top}_P(r \cdot \mu) \,\}, \qquad
    r_k = r_{k-1} - e_{c_k},

about C + P M / C products per view and level instead of the exact search's M. It stays here, outside the
package: measured below, it is slower than the exact incremental search on every codebook tried.

    DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=. python benchmarks/word_search.py --store /tmp/ws

- accuracy: ``encode`` on each ``--datasets`` graph trained to its stopping point with each search (the clustered
  one in a store of its own, since its runs share the exact ones' keys): the label
  head's validation and test accuracy, and the training seconds;
- recall: the views of every node and hop of the first graph's exact model, searched both ways, on the
  default codebook (8,192 words), on every refined word (``--max-codes 0``) and on the whole vocabulary
  (``--no-refine --max-codes 0``, too large for the Gram matrix: one product per level): the share of codes
  equal to the exact search's, per level, and the seconds;
- step: mini-batch steps on ``bench --scale``'s generated graph of ``--nodes`` nodes with each search.
"""

import argparse
import datetime
import json
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor

from dre_pipeline.data import make_split
from dre_pipeline.harness.scale import generated_graph, training_steps
from dre_pipeline.harness.markdown import write_markdown
from dre_pipeline.model.quantizer import ResidualVQ, search_dtype
from dre_pipeline.pipeline.artifacts import Store, load_torch
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.pipeline.llm import resolve_llm
from dre_pipeline.pipeline.resolve import resolve
from dre_pipeline.pipeline.stages import codebook as codebook_stage, encode
from trimmed_step import machine

SEARCHES = ("exact", "clustered")
# Clusters probed per level: an eighth of them (86 % of the first codes equal to the exact search's on sums of two
# random words plus noise; 1/16 gave 75 %, 1/4 95 % at about twice the products).
PROBED_SHARE = 1 / 8
KMEANS_ITERATIONS = 10
# The codebooks searched for recall: (name, the options that build it)
CODEBOOKS = (("default", EncodeConfig()), ("every refined word, --max-codes 0", EncodeConfig(max_codes=0)),
             ("the whole vocabulary, --no-refine --max-codes 0", EncodeConfig(refine=False, max_codes=0)))


class WordClusters:
    r"""Spherical k-means clusters of a codebook's unit words, and the search over the best of them.

    Args:
        words (Tensor): ``[M, d]`` word embeddings (the codebook), on the device that searches.
        dtype (torch.dtype): what the products are computed in (the quantizer's ``search_dtype``).
        seed (int): k-means' initial centroids, so that the clusters are the same on every run.
    """

    def __init__(self, words: Tensor, dtype: torch.dtype, seed: int = 0):
        unit = F.normalize(words.float(), dim=-1)
        count = max(1, round(math.sqrt(len(words))))
        generator = torch.Generator().manual_seed(seed)
        centroids = unit[torch.randperm(len(words), generator=generator)[:count].to(words.device)]
        for _ in range(KMEANS_ITERATIONS):
            cluster = (unit @ centroids.T).argmax(dim=-1)
            sums = torch.zeros_like(centroids).index_add_(0, cluster, unit)
            kept = sums.norm(dim=-1) > 0  # an emptied cluster keeps its centroid
            centroids[kept] = F.normalize(sums[kept], dim=-1)
        cluster = (unit @ centroids.T).argmax(dim=-1)
        used = torch.unique(cluster)  # clusters left empty are never probed
        self.words, self.dtype = words.float(), dtype
        self.centroids_t = centroids[used].T.contiguous().to(dtype)  # d C
        self.members = [torch.nonzero(cluster == c).flatten() for c in used.tolist()]
        self.members_t = [unit[m].T.contiguous().to(dtype) for m in self.members]  # per cluster: d size
        self.probes = max(1, min(len(self.members), round(len(self.members) * PROBED_SHARE)))

    @torch.no_grad()
    def search(self, h: Tensor, num_codes: int) -> Tensor:
        """``[N, K]`` codes of ``h`` ``[N, d]``: level by level, the best word of the P best clusters."""
        n = h.size(0)
        codes = torch.empty(n, num_codes, dtype=torch.long, device=h.device)
        rows = torch.arange(n, device=h.device).repeat_interleave(self.probes)
        residual = h.float()
        for k in range(num_codes):
            probed = (residual.to(self.dtype) @ self.centroids_t).topk(self.probes, dim=-1).indices.flatten()  # n*P
            counts = torch.bincount(probed, minlength=len(self.members)).tolist()
            best = torch.full((n,), -math.inf, device=h.device)
            code = torch.zeros(n, dtype=torch.long, device=h.device)
            # cluster by cluster, its views at once: a view is in a cluster's list at most once
            for members, members_t, views in zip(self.members, self.members_t,
                                                 rows[torch.argsort(probed, stable=True)].split(counts)):
                if len(views) == 0:
                    continue
                score, index = (residual[views].to(self.dtype) @ members_t).float().max(dim=-1)
                better = score > best[views]
                best[views] = torch.where(better, score, best[views])
                code[views] = torch.where(better, members[index], code[views])
            codes[:, k] = code
            residual = residual - self.words.index_select(0, code)
        return codes


@contextmanager
def clustered_search():
    """Every :class:`ResidualVQ` searches with :class:`WordClusters` (built once per quantizer, device and dtype)."""

    def search(vq: ResidualVQ, h: Tensor, dtype: torch.dtype = None) -> Tensor:
        dtype = dtype or search_dtype(h.device)
        if ("clusters", h.device, dtype) not in vq._tables:
            vq._tables[("clusters", h.device, dtype)] = WordClusters(vq.words.to(h.device), dtype)
        return vq._tables[("clusters", h.device, dtype)].search(h, vq.num_codes)

    with mock.patch.object(ResidualVQ, "search", search):
        yield


def searching(search: str):
    """The context a run of ``search`` (one of :data:`SEARCHES`) takes place in."""
    return clustered_search() if search == "clustered" else nullcontext()


def accuracy(dataset: str, store: Store) -> dict:
    rows = {}
    for search, searched in zip(SEARCHES, (store, Store(store.root / "clustered"))):
        with searching(search):
            artifact = encode.run(resolve(EncodeConfig(dataset=dataset), searched, quiet=True))
        metrics = json.loads((artifact.path / "metrics.json").read_text())
        rows[search] = {**metrics["label_head_accuracy"], "train_seconds": metrics["train_seconds"],
                        "epochs": metrics["epochs_run"]}
    return rows


def views(dataset: str, store: Store) -> torch.Tensor:
    """Every node's view at every hop, as the exact model's quantizer receives them: ``[T N, d]``."""
    plan = resolve(EncodeConfig(dataset=dataset), store, quiet=True)
    artifact = encode.run(plan)
    model = encode.build_model(plan.cfg, plan.data, codebook_stage.load(store.find("codebook", plan.keys["codebook"])))
    model.load_state_dict(load_torch(artifact.path / "gnn.pt", torch.device("cpu"))["state_dict"])
    seen, search = [], model.encoder.quantizer.search
    with mock.patch.object(model.encoder.quantizer, "search", lambda h, *a: seen.append(h) or search(h, *a)):
        model.inference(plan.data.x, plan.data.edge_index)
    return torch.cat(seen)


def timed(search, h: torch.Tensor) -> tuple:
    search(h[:64])  # tables and clusters built once, outside the clock
    begun = time.perf_counter()
    codes = search(h)
    return codes, time.perf_counter() - begun


def codebook_vectors(cfg: EncodeConfig, store: Store) -> Tensor:
    """``[M, d]``: the codebook ``cfg`` names, built into ``store`` if it is not there."""
    return codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store)).vectors


def recall(h: torch.Tensor, store: Store, codebook_name: str, cfg: EncodeConfig) -> dict:
    codebook = codebook_vectors(cfg, store)
    vq = ResidualVQ(codebook, cfg.codes_per_view)
    exact, exact_seconds = timed(vq.search, h)
    with clustered_search():
        clustered, clustered_seconds = timed(vq.search, h)
    return {"codebook": codebook_name, "words": len(codebook), "views": len(h), "exact_seconds": exact_seconds,
            "clustered_seconds": clustered_seconds, "speedup": exact_seconds / clustered_seconds,
            "recall_by_level": (clustered == exact).float().mean(0).tolist()}


def steps(num_nodes: int, store: Store, count: int) -> dict:
    data = generated_graph(num_nodes)
    train_mask = torch.from_numpy(make_split(data, "random", 0)).long() == 0
    rows = {}
    cfg = EncodeConfig(batch_nodes=encode.AUTO_BATCH_NODES)
    codebook = codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store))
    for search in SEARCHES:
        torch.manual_seed(0)
        model = encode.build_model(cfg, data, codebook)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        with searching(search):
            rows[search] = training_steps(model, optimizer, data, train_mask, cfg.batch_nodes, cfg, count)
    return {"nodes": num_nodes, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="cora,cora-text")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--store", default="/tmp/word-search-store")
    parser.add_argument("--out", default="benchmarks")
    args = parser.parse_args()
    store = Store(Path(args.store))
    datasets = args.datasets.split(",")
    h = views(datasets[0], store)
    payload = {
        "command": "DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=. python benchmarks/word_search.py "
                   f"--datasets {args.datasets} --nodes {args.nodes} --steps {args.steps}",
        "machine": machine(), "date": datetime.date.today().isoformat(), "views_of": datasets[0],
        "recall": [recall(h, store, name, cfg) for name, cfg in CODEBOOKS],
        "accuracy": {dataset: accuracy(dataset, store) for dataset in datasets},
        "step": steps(args.nodes, store, args.steps),
    }
    print(json.dumps(payload, indent=1), flush=True)
    out = Path(args.out)
    (out / "results" / "word_search.json").write_text(json.dumps(payload, indent=1) + "\n")
    write_markdown(out)


if __name__ == "__main__":
    main()
