"""Baselines for the benchmark: GCN, GraphSAGE and an MLP (no graph) on the same features and split.

Two layers, hidden 256, dropout 0.5, Adam (lr 0.01, weight decay 5e-4), full batch; the
test accuracy is read at the epoch of best validation accuracy.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv, SAGEConv

from ..data import GraphData
from ..model.evaluation import classification_report, split_accuracy
from ..pipeline.runtime import EarlyStopping, seed_everything, snapshot

class Linear(nn.Linear):
    """A layer that ignores the graph: two of them make the MLP baseline."""

    def forward(self, x, edge_index=None):
        return super().forward(x)


LAYERS = {"gcn": GCNConv, "sage": SAGEConv, "mlp": Linear}


class TwoLayerGNN(nn.Module):
    def __init__(self, kind: str, in_channels: int, hidden: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        conv = LAYERS[kind]
        self.conv1, self.conv2, self.dropout = conv(in_channels, hidden), conv(hidden, num_classes), dropout

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


def train_gnn(kind: str, data: GraphData, split: np.ndarray, seed: int, epochs: int = 300,
              patience: int = 50) -> dict:
    """Train one baseline; return its validation and test reports, wall time, throughput and the model
    (in eval mode, at its best validation epoch)."""
    seed_everything(seed)
    model = TwoLayerGNN(kind, data.x.size(1), 256, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    split_t = torch.from_numpy(split)
    train = split_t == 0
    stopper = EarlyStopping(patience, lambda: snapshot(model.state_dict()))
    started = time.time()
    for _ in range(epochs):
        model.train()
        loss = F.cross_entropy(model(data.x, data.edge_index)[train], data.y[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x, data.edge_index).argmax(1)
        stopper.update(split_accuracy(pred, data.y, split_t)["val"])
        if stopper.stop:
            break
    train_seconds = time.time() - started
    model.load_state_dict(stopper.best_state)
    model.eval()
    started = time.time()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(1).numpy()
    infer_seconds = time.time() - started
    reports = {part: classification_report(pred[split == i], data.y.numpy()[split == i], data.num_classes)
               for i, part in ((1, "val"), (2, "test"))}
    return {**reports, "train_seconds": train_seconds,
            "inference_nodes_per_second": data.num_nodes / max(infer_seconds, 1e-9), "model": model}
