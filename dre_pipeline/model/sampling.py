"""Neighbour sampling for mini-batch stage one (GraphSAGE's, Hamilton et al. 2017).

Each hop draws up to ``num_neighbors[l]`` in-neighbours of every node the previous hop
reached, uniformly without replacement, as PyG's ``NeighborLoader`` does. PyG needs
``pyg-lib`` or ``torch-sparse`` for it, and neither installs here (no wheel for this torch),
so this is the same sampling in plain torch, vectorised over the whole frontier.

:func:`stratified_sample` draws the class-stratified node samples of stage two's budgets (training
prompts per epoch, validation nodes scored).
"""

import numpy as np
import torch
from torch import Tensor


class NeighborSampler:
    r"""Args:
        edge_index (Tensor): ``[2, E]``, messages flow from ``edge_index[0]`` to ``edge_index[1]``.
        num_nodes (int): N.
        num_neighbors (list): per hop, the seeds' hop first; -1 keeps every neighbour.
        seed (int): of the sampler's own generator.

    :meth:`sample_hops` returns the subgraph's nodes ordered by hop (the seeds first, in their
    order, then the nodes first reached at hop 1, 2, ...), its edges relabelled to positions in
    that list and ordered by the hop that drew them (hop l's edges end at the nodes first reached
    at hop l - 1), and the counts of both per hop, as PyG's ``num_sampled_nodes_per_hop`` and
    ``num_sampled_edges_per_hop``: ``[T + 1]`` and ``[T]``. The nodes within h hops of the seeds
    are the first ``sum(num_sampled_nodes[: h + 1])``, and the edges that end at them the first
    ``sum(num_sampled_edges[: h + 1])`` (:meth:`~dre_pipeline.model.gnn.MultiViewSAGE.forward`
    trims each layer to them). :meth:`sample` is the subgraph alone.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, num_neighbors: list, seed: int = 0):
        order = torch.argsort(edge_index[1], stable=True)
        self.sources = edge_index[0, order]
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.rowptr[1:] = torch.bincount(edge_index[1], minlength=num_nodes).cumsum(0)
        self.num_neighbors = num_neighbors
        self.generator = torch.Generator().manual_seed(seed)
        self.local = torch.full((num_nodes,), -1, dtype=torch.long)  # global id -> position, reset after each sample

    def sample(self, seeds: Tensor) -> tuple:
        return self.sample_hops(seeds)[:2]

    def sample_hops(self, seeds: Tensor) -> tuple:
        nodes, sources, targets = [seeds], [], []
        self.local[seeds] = torch.arange(len(seeds))
        frontier, count = seeds, len(seeds)
        for k in self.num_neighbors:
            first, degree = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
            segment = torch.repeat_interleave(torch.arange(len(frontier)), degree)
            rank = torch.arange(len(segment)) - torch.repeat_interleave(degree.cumsum(0) - degree, degree)
            if k >= 0:  # a random order within each node's edges; keep the first k
                shuffled = torch.argsort(segment + torch.rand(len(segment), generator=self.generator))
                keep = shuffled[rank < k]
                segment, rank = segment[keep], rank[keep]
            source = self.sources[first[segment] + rank]
            new = torch.unique(source[self.local[source] < 0])
            self.local[new] = torch.arange(count, count + len(new))
            count += len(new)
            nodes.append(new)
            sources.append(self.local[source])
            targets.append(self.local[frontier[segment]])
            frontier = new
        num_sampled_nodes, num_sampled_edges = [len(n) for n in nodes], [len(s) for s in sources]
        nodes = torch.cat(nodes)
        self.local[nodes] = -1
        return nodes, torch.stack([torch.cat(sources), torch.cat(targets)]), num_sampled_nodes, num_sampled_edges


def stratified_sample(nodes: np.ndarray, classes: np.ndarray, size: int, generator: np.random.Generator) -> np.ndarray:
    """``nodes`` in a random order: all of them, or where ``size`` is fewer, a sample of ``size`` without
    replacement, stratified by ``classes`` ([N]): each class's quota is its share of ``size``, rounded by largest
    remainder (Hamilton's method), so the sample's class counts are the nodes'."""
    if size >= len(nodes):
        return generator.permutation(nodes)
    labels = classes[nodes]
    kinds, counts = np.unique(labels, return_counts=True)
    exact = size * counts / len(nodes)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact, kind="stable")[: size - quota.sum()]] += 1
    picked = [generator.choice(nodes[labels == kind], count, replace=False) for kind, count in zip(kinds, quota)]
    return generator.permutation(np.concatenate(picked))
