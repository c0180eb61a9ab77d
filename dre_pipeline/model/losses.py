"""Stage-one training objectives (Dr.E section 3.4).

L = w_f · L_feat + w_a · L_adj (Eq. 10) + w_y · L_label + β · L_commit
  (+ w_k · L_keyword on a graph with text, :mod:`~dre_pipeline.model.grounding`; not in the paper).
Validation and test labels never enter any of them: ``train_mask`` selects the label loss.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import negative_sampling

from .grounding import keyword_loss


def feature_loss(x_rec: Tensor, x: Tensor) -> Tensor:
    """Feature reconstruction: mean squared error."""
    return F.mse_loss(x_rec, x)


# Bytes of one [P, d] row gather of pairs whose logits are computed together: 65,536 pairs at d = 4,096, where
# ogbn-arxiv's 2.3M edges and as many negatives at once kept four [E, d] gathers, 150 GB, for backward.
# Cora, Cora-ML and PubMed fit in one chunk at SmolLM2's 576 (466,033 pairs): computed as before, bit for bit.
PAIR_CHUNK_BYTES = 2**30


def pair_chunk(width: int) -> int:
    """Pairs per chunk of :func:`pair_logits` at embedding width ``width``: a fp32 gather of PAIR_CHUNK_BYTES."""
    return max(1, PAIR_CHUNK_BYTES // (4 * width))


def pair_logits(z: Tensor, pairs: Tensor, chunk: int) -> Tensor:
    r"""``[P]`` the decoder's logits :math:`z_i \cdot z_j / \sqrt d` of ``pairs`` ``[2, P]``, ``chunk`` pairs at a time.

    Each chunk runs under :func:`torch.utils.checkpoint.checkpoint`: its ``[chunk, d]`` gathers are freed
    after its forward and recomputed in its backward, so one chunk's are alive at a time, not P's.
    """
    scale = z.size(-1) ** 0.5

    def logits(z: Tensor, sources: Tensor, targets: Tensor) -> Tensor:
        return (z.index_select(0, sources) * z.index_select(0, targets)).sum(-1) / scale

    if pairs.size(1) <= chunk:  # one chunk: nothing to free early
        return logits(z, pairs[0], pairs[1])
    return torch.cat([checkpoint(logits, z, part[0], part[1], use_reentrant=False, preserve_rng_state=False)
                      for part in pairs.split(chunk, dim=1)])


def adjacency_loss(z: Tensor, edge_index: Tensor, num_nodes: int, chunk: int = None) -> Tensor:
    """Weighted BCE of the inner-product decoder σ(z_i·z_j / √d) (Dr.E Eq. 10, VGAE-style).

    Over the full N×N matrix with E edges, positives are weighted by
    ``pos_weight = (N² - E) / E`` and the sum scaled by ``norm = N² / (2 (N² - E))``.
    The negatives' term is estimated from as many sampled non-edges as there are edges.
    Memory: the logits of ``chunk`` pairs at a time (:func:`pair_logits`, by default :func:`pair_chunk`), whatever E.
    0 where there is no edge (a trimmed mini-batch's seeds, drawn at random, seldom neighbour each other).
    """
    if not edge_index.size(1):
        return z.sum() * 0.0
    chunk = chunk or pair_chunk(z.size(-1))
    n2, e = float(num_nodes) ** 2, edge_index.size(1)
    pos_weight, norm = (n2 - e) / e, n2 / (2 * (n2 - e))
    negatives = negative_sampling(edge_index, num_nodes=num_nodes, num_neg_samples=e)
    pos = F.binary_cross_entropy_with_logits(pair_logits(z, edge_index, chunk), torch.ones(e, device=z.device))
    neg = F.binary_cross_entropy_with_logits(pair_logits(z, negatives, chunk),
                                             torch.zeros(negatives.size(1), device=z.device))
    return norm * (pos_weight * e * pos + (n2 - e) * neg) / n2


def label_loss(logits: Tensor, y: Tensor, train_mask: Tensor) -> Tensor:
    """Cross-entropy on training nodes only (0 for a mini-batch without any)."""
    if not train_mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[train_mask], y[train_mask])


def stage_one_loss(views: list, logits: Tensor, x_rec: Tensor, z: Tensor, x: Tensor, edge_index: Tensor,
                   y: Tensor, train_mask: Tensor, cfg, keyword_targets: list = None) -> tuple:
    """The weighted sum L above and its parts; ``cfg`` carries the weights (an EncodeConfig).

    ``keyword_targets``: the step's seeds' keyword targets, one ``[n, d]`` per view, for L_keyword.
    """
    parts = {
        "feature": feature_loss(x_rec, x),
        "adjacency": adjacency_loss(z, edge_index, x.size(0)),
        "label": label_loss(logits, y, train_mask),
        "commitment": torch.stack([v.commitment for v in views]).mean(),
    }
    loss = (cfg.feature_weight * parts["feature"] + cfg.adjacency_weight * parts["adjacency"]
            + cfg.label_weight * parts["label"] + cfg.beta * parts["commitment"])
    if keyword_targets is not None:
        parts["keyword"] = keyword_loss(views, keyword_targets)
        loss = loss + cfg.keyword_weight * parts["keyword"]
    return loss, parts
