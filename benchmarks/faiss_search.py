r"""Stage one's code search, exact against FAISS's indexes over the codebook, side by side in one process.

Issue 28 asks for an approximate search "for example FAISS's inverted-file index over the codebook" where the
exact one dominates a step. Each FAISS index here holds the codebook's unit words :math:`\hat e_j` under the
inner product, so its nearest word to a residual is the most cosine-similar one. FAISS has no incremental form,
so each level searches its residual afresh:

.. math::
    c_k = \arg\max_{j \in \mathrm{candidates}(r_{k-1})} r_{k-1} \cdot \hat e_j, \qquad r_k = r_{k-1} - e_{c_k}.

- ``Flat``: every word, in fp32 (BLAS). Exact, so its agreement with ours counts the codes that our bf16
  products round differently.
- ``IVF{C},Flat``: C = 4 sqrt(M) k-means lists (FAISS's rule of thumb), ``nprobe`` of them searched per query.
- ``HNSW32,Flat``: a graph over the words, ``efSearch`` candidates kept per query.

Recall: the share of codes equal to the exact search's (``ResidualVQ.search``), level by level, on the views of
every node and hop of ``--dataset``'s exact model (as ``benchmarks/word_search.py``), on the default codebook,
every refined word and the whole vocabulary. FAISS runs on as many threads as torch.

    pip install -e '.[faiss]'
    DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=.:benchmarks python benchmarks/faiss_search.py --store /tmp/ws
"""

import argparse
import math
import time

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from dre_pipeline.model.quantizer import ResidualVQ
from dre_pipeline.pipeline.artifacts import Store
from trimmed_step import save_rows
from word_search import CODEBOOKS, codebook_vectors, timed, views

IVF_PROBES = (4, 8, 16, 32)
HNSW_CANDIDATES = (32, 128)


class FaissWords:
    """A FAISS index (``factory``: an ``index_factory`` string) over ``words``' unit vectors, searched level by level."""

    def __init__(self, words: torch.Tensor, factory: str):
        unit = F.normalize(words.float(), dim=-1).numpy()
        self.words = words.float()
        self.index = faiss.index_factory(unit.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        self.index.train(unit)
        self.index.add(unit)

    def search(self, h: torch.Tensor, num_codes: int) -> torch.Tensor:
        residual, codes = h.float(), []
        for _ in range(num_codes):
            _, found = self.index.search(np.ascontiguousarray(residual.numpy()), 1)
            code = torch.from_numpy(found[:, 0]).long()
            codes.append(code)
            residual = residual - self.words.index_select(0, code)
        return torch.stack(codes, dim=1)


def indexes(num_words: int) -> list:
    """(factory string, the search parameter's name and value) for each index measured."""
    lists = round(4 * math.sqrt(num_words))
    return ([("Flat", None, None)] + [(f"IVF{lists},Flat", "nprobe", p) for p in IVF_PROBES]
            + [("HNSW32,Flat", "efSearch", e) for e in HNSW_CANDIDATES])


def rows_for(h: torch.Tensor, name: str, words: torch.Tensor, num_codes: int) -> list:
    vq = ResidualVQ(words, num_codes)
    exact, exact_seconds = timed(vq.search, h)
    rows, built = [], {}  # factory -> (index, seconds to build it)
    for factory, parameter, value in indexes(len(words)):
        if factory not in built:
            started = time.perf_counter()
            built[factory] = FaissWords(words, factory), time.perf_counter() - started
        index, build_seconds = built[factory]
        if parameter:
            faiss.ParameterSpace().set_index_parameter(index.index, parameter, value)
        codes, seconds = timed(lambda v: index.search(v, num_codes), h)
        rows.append({"codebook": name, "words": len(words), "views": len(h), "index": factory,
                     "parameter": parameter and f"{parameter} {value}", "build_seconds": build_seconds,
                     "exact_seconds": exact_seconds, "faiss_seconds": seconds, "speedup": exact_seconds / seconds,
                     "recall_by_level": (codes == exact).float().mean(0).tolist()})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cora", help="the graph whose exact model's views are searched")
    parser.add_argument("--store", default="/tmp/word-search-store")
    args = parser.parse_args()
    faiss.omp_set_num_threads(torch.get_num_threads())
    store = Store(args.store)
    h = views(args.dataset, store)
    rows = [{"views_of": args.dataset, **row} for name, cfg in CODEBOOKS
            for row in rows_for(h, name, codebook_vectors(cfg, store), cfg.codes_per_view)]
    save_rows("faiss_search", rows, "DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=.:benchmarks "
              f"python benchmarks/faiss_search.py --dataset {args.dataset}")


if __name__ == "__main__":
    main()
