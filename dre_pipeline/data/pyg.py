"""PyG ``Data`` objects in and out: a graph built in Python enters the pipeline without a folder.

:func:`from_pyg` reads ``x`` (optional on a graph with text), ``edge_index``, ``y``, the ``train_mask`` /
``val_mask`` / ``test_mask`` where present (the public split), and the texts and class names from the object
(``data.text``, ``data.class_names``) or beside it; :func:`to_pyg` gives any graph of this package as a ``Data``
with those attributes, so that what a user loads can go straight back in.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .graph import GraphData, _graph, _numbered_classes, _split_from_masks, split_titles

MASKS = ("train_mask", "val_mask", "test_mask")


def from_pyg(data, text: list | None = None, class_names: list | None = None, name: str = "graph") -> GraphData:
    """``data`` (a ``torch_geometric.data.Data``) as a :class:`GraphData`; ``text``, ``class_names``: where they
    are not on the object as ``data.text`` and ``data.class_names`` (default names: "class 0", ...)."""
    text = text if text is not None else getattr(data, "text", None)
    class_names = class_names if class_names is not None else getattr(data, "class_names", None)
    if getattr(data, "edge_index", None) is None or getattr(data, "y", None) is None:
        raise InputError("the Data object needs edge_index and y (one class id per node)")
    num_nodes = data.num_nodes
    if text is not None:
        text = [str(t) for t in text]
        if len(text) != num_nodes:
            raise InputError(f"{len(text)} texts for {num_nodes} nodes: give one text per node")
    x = data.x if getattr(data, "x", None) is not None else torch.zeros(num_nodes, 0)
    if x.size(1) == 0 and text is None:
        raise InputError("the Data object has neither features (x) nor text: give one of them")
    y = data.y.reshape(-1).long()
    if class_names is None:
        class_names = _numbered_classes(y.numpy(), "the Data object's y", "class_names")
    masks = [getattr(data, m, None) for m in MASKS]
    split = _split_from_masks(num_nodes, [m.cpu() for m in masks]) if all(m is not None for m in masks) else None
    return _graph(name=name, x=x.cpu(), edge_index=data.edge_index.cpu(), y=y.cpu(), class_names=list(class_names),
                  text=text, node_ids=np.arange(num_nodes), public_split=split,
                  titles=split_titles(text) if text is not None else None)


def to_pyg(graph: GraphData):
    """``graph`` as a ``torch_geometric.data.Data``: ``x``, ``edge_index``, ``y``, ``text``, ``class_names``,
    ``node_ids`` and, where the graph ships a split, its masks."""
    from torch_geometric.data import Data

    data = Data(x=graph.x, edge_index=graph.edge_index, y=graph.y, text=graph.text,
                class_names=list(graph.class_names), node_ids=graph.node_ids.tolist())
    if graph.public_split is not None:
        for code, mask in enumerate(MASKS):
            data[mask] = torch.from_numpy(graph.public_split == code)
    return data
