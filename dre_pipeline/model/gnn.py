r"""The multi-view GNN encoder of stage one (Dr.E sections 3.1-3.3).

Layer ``t`` of a T-layer GraphSAGE sees the t-hop neighbourhood: its output is view t.
Each view is quantized into K words (:class:`~dre_pipeline.model.quantizer.ResidualVQ`, the
intra-layer residual, Eq. 5-6) and the quantized view is added back before the next
hop aggregates (the inter-layer residual, Eq. 7):

.. math::
    h^t = \sigma\big(\mathrm{dropout}(\mathrm{SAGE}_t(\tilde h^{t-1}, A))\big), \qquad
    z^t = \mathrm{RVQ}(h^t), \qquad
    \tilde h^t = h^t + z^t, \qquad \tilde h^0 = \mathrm{dropout}_{in}(x).

Hidden size = the LLM's embedding size, so views live where the codebook lives.

On a sampled subgraph (:class:`~dre_pipeline.model.sampling.NeighborSampler`) only the seeds' last
view is wanted, and layer t (0-based) of T matters only for the nodes within T - 1 - t hops of the
seeds: given the per-hop counts, each layer computes its output, and runs the code search, for those
nodes alone, from the edges that end at them (PyG's ``trim_to_layer``, cut one hop further: PyG's
still computes each layer for the nodes of the hop beyond). At 256 seeds with 15,10,5 neighbours that
is about 24k, 2.8k and 256 target nodes where the whole subgraph is 111k (1M nodes, degree 10).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from .quantizer import ResidualVQ

# Target nodes per step of :meth:`StageOneModel.inference`: one chunk's messages stay a few hundred MB.
INFERENCE_CHUNK = 65536


class MultiViewSAGE(nn.Module):
    r"""Args:
        in_channels (int): node feature size F.
        codebook (Tensor): ``[M, d]`` frozen LLM word embeddings; d is the hidden size.
        num_views (int): T, number of SAGEConv layers / hops. (default: 3)
        codes_per_view (int): K. (default: 4)
        dropout (float): after each convolution. (default: 0.5)
        input_dropout (float): on the node features before the first convolution. (default: 0.0)
        inter_residual (bool): add z^t back before hop t+1 (Eq. 7). (default: True)
        word_scale (bool): rescale each view to the norm of a sum of K words,
            :math:`h \leftarrow \sqrt{K}\,\bar{\lVert e\rVert}\, h / \lVert h\rVert`, so that each residual
            level removes a real share of what is left. (default: True)

    Shapes: ``x`` ``[N, F]``, ``edge_index`` ``[2, E]`` → T :class:`Quantized` views of ``[N, d]``;
    with ``hops`` (a sampled subgraph's ``(num_sampled_nodes, num_sampled_edges)``, nodes and edges
    ordered by hop), view t+1 has the rows of the nodes within T - 1 - t hops, the last the seeds'.
    """

    def __init__(self, in_channels: int, codebook: Tensor, num_views: int = 3, codes_per_view: int = 4,
                 dropout: float = 0.5, inter_residual: bool = True, word_scale: bool = True,
                 input_dropout: float = 0.0):
        super().__init__()
        hidden = codebook.shape[1]
        self.convs = nn.ModuleList(
            SAGEConv(in_channels if t == 0 else hidden, hidden) for t in range(num_views)
        )
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)
        # ELU rather than ReLU: word embeddings have negative coordinates too.
        self.act = nn.ELU()
        self.quantizer = ResidualVQ(codebook, codes_per_view)
        self.inter_residual = inter_residual
        # Unscaled views came out ~17x longer than a word on Cora: subtracting a word then
        # barely changed the residual, and the K levels repeated near-synonyms.
        self.view_norm = float(codebook.norm(dim=-1).mean()) * codes_per_view ** 0.5 if word_scale else None

    def forward(self, x: Tensor, edge_index: Tensor, hops: tuple = None) -> list:
        views = []
        x = self.input_dropout(x)
        for t in range(len(self.convs)):
            view, x = self.hop(t, x, edge_index) if hops is None else self.hop(t, *trim(t, x, edge_index, hops))
            views.append(view)
        return views

    def hop(self, t: int, x, edge_index: Tensor) -> tuple:
        """View t+1 and the next hop's input :math:`\tilde h^{t+1}`; ``x`` may be a (sources, targets) pair."""
        h = self.act(self.dropout(self.convs[t](x, edge_index)))
        if self.view_norm is not None:
            h = self.view_norm * F.normalize(h, dim=-1)
        view = self.quantizer(h)
        return view, h + view.z if self.inter_residual else h


def layer_targets(hops: tuple) -> list:
    """Per layer t, how many target nodes a trimmed step computes: the nodes within T - 1 - t hops of the seeds
    (T = ``len(num_sampled_edges)``), first on a subgraph ordered by hop."""
    num_sampled_nodes, num_sampled_edges = hops
    return [sum(num_sampled_nodes[: len(num_sampled_edges) - t]) for t in range(len(num_sampled_edges))]


def trim(t: int, x: Tensor, edge_index: Tensor, hops: tuple) -> tuple:
    """Layer t's (sources, targets) inputs and edges on a subgraph ordered by hop: the targets are
    :func:`layer_targets`' t-th count, the edges those that end at them; ``x`` holds the nodes within T - t hops,
    layer t - 1's targets (all nodes at t = 0), every edge's source among them."""
    edges = sum(hops[1][: len(hops[1]) - t])
    return (x, x[: layer_targets(hops)[t]]), edge_index[:, :edges]


class StageOneModel(nn.Module):
    """Encoder plus the three decoders that train it: labels, features, adjacency.

    Shapes: returns the views, class logits ``[N, C]``, reconstructed features ``[N, F]``
    and node embeddings ``[N, d]`` for the inner-product adjacency decoder: the last view's
    quantized output only (the widest neighbourhood). With ``hops`` (a trimmed step), N is the seeds.
    """

    def __init__(self, encoder: MultiViewSAGE, num_features: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        width = encoder.quantizer.words.shape[1] * len(encoder.convs)
        self.label_head = nn.Linear(width, num_classes)
        self.feature_decoder = nn.Linear(width, num_features)

    def forward(self, x: Tensor, edge_index: Tensor, hops: tuple = None):
        views = self.encoder(x, edge_index, hops)
        return (views, *self.decode(views))

    def decode(self, views: list) -> tuple:
        """The decoders on the last view's nodes (the first rows of every view: all of them where untrimmed)."""
        seeds = views[-1].z.size(0)
        z = torch.cat([v.z[:seeds] for v in views], dim=-1)
        return self.label_head(z), self.feature_decoder(z), views[-1].z

    @torch.no_grad()
    def inference(self, x: Tensor, edge_index: Tensor, chunk: int = INFERENCE_CHUNK) -> tuple:
        """Every node's codes ``[N, T, K]``, class logits ``[N, C]`` and mean residual norm per level ``[K + 1]``,
        hop by hop over whole neighbourhoods, ``chunk`` target nodes at a time.

        Memory is two ``[N, d]`` hop inputs plus one chunk's messages, never the whole graph's,
        so a graph too large for :meth:`forward` is still encoded exactly. Runs in evaluation mode.
        """
        self.eval()
        n, d = x.size(0), self.encoder.quantizer.words.size(1)
        order = torch.argsort(edge_index[1], stable=True)
        sources, targets = edge_index[0, order], edge_index[1, order]
        rowptr = torch.searchsorted(targets, torch.arange(0, n + chunk, chunk, device=x.device).clamp(max=n))
        num_views, k = len(self.encoder.convs), self.encoder.quantizer.num_codes
        codes = torch.empty(n, num_views, k, dtype=torch.long, device=x.device)
        logits = self.label_head.bias.expand(n, -1).clone()
        norms = torch.zeros(k + 1, device=x.device)
        for t in range(num_views):
            head = self.label_head.weight[:, t * d: (t + 1) * d]  # the head is linear: view by view
            following = torch.empty(n, d, device=x.device)
            for i, start in enumerate(range(0, n, chunk)):
                rows = slice(start, min(start + chunk, n))
                edges = torch.stack([sources[rowptr[i]: rowptr[i + 1]], targets[rowptr[i]: rowptr[i + 1]] - start])
                view, following[rows] = self.encoder.hop(t, (x, x[rows]), edges)
                codes[rows, t] = view.codes
                logits[rows] += view.z @ head.T
                norms += self.encoder.quantizer.residual_norms(view.h, view.codes).sum(0)
            x = following
        return codes, logits, norms / (n * num_views)

