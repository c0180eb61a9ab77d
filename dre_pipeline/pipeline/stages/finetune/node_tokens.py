"""What fills a node's slots in a stage-two prompt.

- :class:`StoredWords` — the code words stage one wrote (Dr.E stage two), optionally with
  stochastic code samples for training prompts;
- :class:`GraphInTheLoop` — the GNN runs inside each step: its code words enter the LLM
  as straight-through embeddings, so the LLM's loss reaches the GNN (``--joint``), or its
  continuous views enter through a learned projector as soft prompt tokens
  (``--node-tokens soft``, the LLaGA / G-Retriever-style baseline without quantization).

Both answer ``tokens(nodes) -> (suffixes, words)``: the prompt suffixes, and for the GNN in
the loop the ``(row, position, vector)`` input embeddings that replace the code slots.
"""

from typing import Optional

import numpy as np
import torch
from torch import nn
from torch_geometric.utils import k_hop_subgraph

from ....model import losses
from ....model.predictor import GraphWordPredictor
from ....model.quantizer import straight_through_words
from ....model.gnn import INFERENCE_CHUNK
from ..encode import build_model
from .workspace import Workspace, stage_one_model, suffixes_for


class StoredWords(nn.Module):
    """The code words stage one wrote, placed by token id; nothing here is trained.

    Args:
        codes (ndarray): ``[N, T, K]`` the deterministic codes; evaluation always reads these.
        samples (list): ``[N, T, K]`` arrays of codes from stochastic (dropout-on) GNN passes.
            In training, each node reads the deterministic codes or one of these, drawn at
            random per step, so training prompts are as noisy as a GNN's view of an unseen node.
    """

    def __init__(self, ws: Workspace, codes: np.ndarray, samples: tuple = (), seed: int = 0):
        super().__init__()
        self.ws, self.codes = ws, codes
        self.variants = np.stack([codes, *samples])  # s n t k
        self.generator = np.random.default_rng(seed)
        self.stage_one_loss = None

    def tokens(self, nodes: np.ndarray) -> tuple:
        variant = self.generator.integers(len(self.variants), size=len(nodes)) if self.training else 0
        suffixes, _ = suffixes_for(self.ws, self.variants[variant, nodes], nodes)
        return suffixes, None


class GraphInTheLoop(nn.Module):
    """The stage-one GNN inside each step, run on the nodes' T-hop subgraph (exact for them).

    In the joint pass, each training step also leaves the stage-one loss of that subgraph in
    ``stage_one_loss`` (labels of the batch's nodes only, all of them training nodes); the loop
    adds it at ``--joint-stage-one-weight`` so the GNN keeps reconstructing its graph while the
    LLM's loss moves it.

    Args:
        ws (Workspace): prompts, data, codebook.
        stage_one (StageOneModel): the encoder and its decoders, initialised from stage one.
        word_embeddings (Tensor): ``[M, d]`` the LLM's embeddings of the codebook words.
        soft (bool): False: straight-through code words (Dr.E joint pass); True: continuous
            views through a learned projector, K soft tokens per view (no quantization).
    """

    def __init__(self, ws: Workspace, stage_one: nn.Module, word_embeddings: torch.Tensor, soft: bool):
        super().__init__()
        self.ws, self.stage_one, self.soft = ws, stage_one, soft
        self.stage_one_loss, self.generator = None, None  # draws nothing at random itself
        self.register_buffer("word_embeddings", word_embeddings, persistent=False)
        d, k = word_embeddings.shape[1], ws.cfg.codes_per_view
        self.projector = nn.Linear(d, k * d) if soft else None
        self.register_buffer("x", ws.data.x, persistent=False)
        self.register_buffer("edge_index", ws.data.edge_index, persistent=False)
        self.register_buffer("y", ws.data.y, persistent=False)

    @property
    def encoder(self) -> nn.Module:
        return self.stage_one.encoder

    def tokens(self, nodes: np.ndarray) -> tuple:
        device = self.x.device
        subset_nodes, edges, centre, _ = k_hop_subgraph(torch.from_numpy(nodes).to(device), len(self.encoder.convs),
                                                        self.edge_index, relabel_nodes=True,
                                                        num_nodes=self.ws.data.num_nodes)
        # The joint pass picks codes as evaluation does (no dropout), so training reads what prediction reads.
        self.encoder.train(self.training and self.soft)
        x = self.x[subset_nodes]
        views = self.encoder(x, edges)
        self.stage_one_loss = None
        if self.training and not self.soft and self.ws.cfg.joint_stage_one_weight:
            labels = self.y[subset_nodes]
            centre_mask = torch.zeros(len(subset_nodes), dtype=torch.bool, device=device).index_fill_(0, centre, True)
            self.stage_one_loss, _ = losses.stage_one_loss(views, *self.stage_one.decode(views), x, edges, labels,
                                                           centre_mask, self.ws.cfg)
        codes = torch.stack([v.codes[centre] for v in views], dim=1)  # b t k
        suffixes, positions = suffixes_for(self.ws, codes.cpu().numpy(), nodes)
        if self.soft:
            k, d = codes.size(2), self.word_embeddings.size(1)
            vectors = torch.cat([self.projector(v.h[centre]).view(len(nodes), k, d) for v in views], dim=1)
        else:
            # Stage one's commitment term alone, without the reconstruction and label terms it is
            # weighed against there, rewrote the codes (measured on Cora: 84 % of codes changed,
            # test accuracy 83.8 → 69.7); so the whole stage-one loss comes along, or none of it.
            vectors = torch.cat([straight_through_words(v.z[centre], v.codes[centre], self.word_embeddings)
                                 for v in views], dim=1)
        row_index = torch.arange(len(nodes)).repeat_interleave(vectors.size(1))
        position = torch.tensor([p for row in positions for view in row for p in view])
        return suffixes, (row_index, position, vectors.flatten(0, 1))

    def all_codes(self, chunk: int = INFERENCE_CHUNK) -> np.ndarray:
        """``[N, T, K]`` every node's codes as the GNN now picks them (no dropout), ``chunk`` target nodes at a
        time (:meth:`~dre_pipeline.model.gnn.StageOneModel.inference`): the whole graph's messages are never held."""
        codes, _, _ = self.stage_one.inference(self.x, self.edge_index, chunk)
        return codes.cpu().numpy()


def graph_in_the_loop(ws: Workspace, predictor: GraphWordPredictor, soft: bool,
                      gnn_state: Optional[dict] = None) -> GraphInTheLoop:
    """Build the GNN-in-the-loop module from the stage-one GNN (or a saved state of this module)."""
    stage_one = stage_one_model(ws) if gnn_state is None else build_model(ws.cfg, ws.data, ws.codebook)
    module = GraphInTheLoop(ws, stage_one, ws.codebook.vectors.to(predictor.embed.weight.dtype), soft)
    if gnn_state is not None:  # the whole module's state: the GNN's with it
        module.load_state_dict(gnn_state)
    return module.to(predictor.device)


def sampled_codes(ws: Workspace, samples: int, seed: int) -> list:
    """``samples`` code arrays ``[N, T, K]`` from the stage-one GNN with dropout on (training-time noise)."""
    if not samples:
        return []
    model = stage_one_model(ws).train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return [torch.stack([v.codes for v in model.encoder(ws.data.x, ws.data.edge_index)], dim=1).numpy()
                for _ in range(samples)]
