r"""Keyword grounding: on a text-attributed graph, view t of a node should read as its hop's keywords.

Nearest-word search alone picks whichever words separate the classes ("collab", "prelim"):
nothing asks a code to *mean* anything. Where nodes have text, view t of node i gets a target:
the K most telling words of the text within t hops, by an idf-weighted bag widened by one
hop per view,

.. math::
    T^0 = \mathrm{rownorm}(B\,\mathrm{diag}(\mathrm{idf})), \qquad
    T^t = \mathrm{rownorm}\big(T^{t-1} + S\,T^{t-1}\big), \qquad S = D^{-1}A,

and the sum of those K words' embeddings, :math:`g^t_i = \sum_{j \in \mathrm{top}_K(T^t_i)} e_j`.
The view is pulled towards it by cosine, the measure the search ranks by:

.. math::
    L_{keyword} = \frac{1}{T}\sum_t \frac{1}{|I|}\sum_{i \in I} \big(1 - \cos(h^t_i, g^t_i)\big),

over the nodes :math:`I` with any codebook word in reach. Residual VQ recovers a sum of 4
word embeddings nearly exactly (99 % of the words on Cora-ML), so a view close to its target
is quantized into its keywords. Only text is read, never a label.
"""

import numpy as np
import scipy.sparse as sparse
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import text_vocabulary

ROWS_PER_CHUNK = 4096  # dense [rows, M] weights at a time: 128 MiB for an 8,192-word codebook


def hop_keyword_targets(texts: list, codebook_words: list, words: Tensor, edge_index: Tensor,
                        num_nodes: int, num_views: int, keywords: int) -> list:
    """``[g^1, .., g^T]``: ``[N, d]`` sums of each hop's top-``keywords`` words (zero rows where none)."""
    column = {word.lower(): j for j, word in enumerate(codebook_words)}
    rows, cols = [], []
    for i, text in enumerate(texts):
        found = {column[w] for w in text_vocabulary([text]) if w in column}
        rows += [i] * len(found)
        cols += sorted(found)
    bag = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                            shape=(num_nodes, len(codebook_words)))
    document_frequency = np.asarray(bag.sum(0)).ravel()
    idf = (np.log((1 + num_nodes) / (1 + document_frequency)) + 1).astype(np.float32)  # smooth idf, as scikit-learn
    src, dst = edge_index.numpy()
    degree = np.maximum(np.bincount(dst, minlength=num_nodes), 1).astype(np.float32)
    mean_of_neighbours = sparse.csr_matrix((1 / degree[dst], (dst, src)), shape=(num_nodes, num_nodes))
    targets, current = [], _row_normalized(bag @ sparse.diags(idf))
    for _ in range(num_views):
        current = _row_normalized(current + mean_of_neighbours @ current)
        targets.append(torch.cat([_keyword_sum(current[start:start + ROWS_PER_CHUNK], words, keywords)
                                  for start in range(0, num_nodes, ROWS_PER_CHUNK)]))
    return targets


def _keyword_sum(rows: sparse.csr_matrix, words: Tensor, keywords: int) -> Tensor:
    weights, top = torch.from_numpy(rows.toarray()).topk(keywords, dim=-1)
    return (words[top] * (weights > 0).unsqueeze(-1)).sum(1)


def _row_normalized(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    totals = np.asarray(matrix.sum(1)).ravel()
    return sparse.csr_matrix(sparse.diags(np.divide(1, totals, out=np.zeros_like(totals), where=totals > 0)) @ matrix)


def keyword_loss(views: list, targets: list) -> Tensor:
    """:math:`L_{keyword}` above; ``targets`` are the step's seeds' rows of each view's target, in seed order."""
    total = []
    for view, target in zip(views, targets):
        reachable = target.norm(dim=-1) > 0
        cosine = F.cosine_similarity(view.h[: target.size(0)][reachable], target[reachable], dim=-1)
        total.append((1 - cosine).mean())
    return torch.stack(total).mean()


def seed_rows(targets: list, nodes, num_seeds: int) -> list:
    """Each view's target rows of a step's seeds: the first ``num_seeds`` of ``nodes`` (a slice: the whole graph)."""
    seeds = nodes if isinstance(nodes, slice) else nodes[:num_seeds]
    return [target[seeds] for target in targets]
