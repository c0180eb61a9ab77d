"""New nodes for a graph that is already trained on: a paper that arrives with its text and its references.

:class:`NewNodes` holds them as the graph would (ids, text, feature vectors where the graph has its own, an
optional label to score against) and their edges, to nodes of the graph or to one another; :func:`read_new_nodes`
reads them from two tables as a graph folder holds them (``nodes.csv`` + ``edges.csv``, or parquet), and
:func:`extend` appends them to the graph: the graph's nodes keep their positions, the new ones follow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch_geometric.utils import to_undirected

from ..errors import InputError
from .graph import GraphData, _fingerprint, split_titles
from .tables import _column, _folder_features, _folder_text, _id_column, _is_text, _read_table, _same_kind

UNLABELLED = -1  # a new node's label where none is given: answered, not scored


@dataclass
class NewNodes:
    """Nodes to add to a graph.

    Args:
        node_ids (ndarray): ``[n]`` ids in the graph's kind (integers or names), none of them the graph's.
        edges (Tensor): ``[2, E]`` edges in the extended numbering: the graph's nodes ``0..N-1``, the new ones
            ``N..N+n-1`` in order; each new node's edges, directed either way.
        text (list): per node its text, where the graph has text (else None).
        titles (list): each text's title, where the graph's texts have them.
        x (Tensor): ``[n, F]`` feature vectors where the graph has its own (:func:`extend` checks their width
            where they are read), else ``[n, 0]`` (made from the text).
        y (ndarray): ``[n]`` class ids, :data:`UNLABELLED` where unknown.
    """

    node_ids: np.ndarray
    edges: torch.Tensor
    text: list | None
    titles: list | None
    x: torch.Tensor
    y: np.ndarray


def read_new_nodes(nodes_path: Path, edges_path: Path, graph: GraphData) -> NewNodes:
    """New nodes of ``graph`` from a node table (``node_id``; ``text`` or ``title`` + ``abstract`` on a graph with
    text; feature columns on a graph with feature vectors; optionally ``label``, a class name of the graph) and an
    edge table (``src``, ``dst``: ids of the graph's nodes or of the new ones). Bad tables stop here, one line."""
    nodes_path, edges_path = Path(nodes_path), Path(edges_path)
    for path, what in ((nodes_path, "--new-nodes"), (edges_path, "--new-edges")):
        if not path.is_file():
            raise InputError(f"{what} {path}: no such file")
    nodes = _read_table(nodes_path, ["node_id"])
    ids = _id_column(nodes, "node_id", nodes_path)
    ids = np.asarray([_same_kind(n, graph.node_ids) for n in ids.tolist()], dtype=graph.node_ids.dtype)
    position = {node: i for i, node in enumerate(graph.node_ids.tolist())}
    for row, node in enumerate(ids.tolist()):
        if node in position:
            raise InputError(f"{nodes_path} row {row + 1}: node_id {node!r} is already a node of {graph.name}")
        position.setdefault(node, graph.num_nodes + row)
    if len(position) < graph.num_nodes + len(ids):
        raise InputError(f"{nodes_path}: a node_id repeats")
    text, titles = _folder_text(nodes, nodes_path)
    if graph.text is not None and text is None:
        raise InputError(f"{nodes_path} has no text column, and {graph.name} is a graph with text: "
                         "give each new node its text (a 'text' column, or 'title' and 'abstract')")
    if graph.titles is not None and titles is None and text is not None:
        titles = split_titles(text) or [""] * len(text)
    x = torch.from_numpy(_folder_features(nodes, nodes_path, has_text=text is not None))
    edges = _read_table(edges_path, ["src", "dst"], empty_ok=True)

    def positions(column: str) -> np.ndarray:
        if edges.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        named = _id_column(edges, column, edges_path).tolist()
        found = [position.get(_same_kind(node, graph.node_ids)) for node in named]
        if None in found:
            row = found.index(None)
            raise InputError(f"{edges_path} row {row + 1}: {column} names node_id {named[row]!r}, which is neither "
                             f"a node of {graph.name} nor a new node")
        return np.asarray(found, dtype=np.int64)

    return NewNodes(ids, torch.from_numpy(np.stack([positions("src"), positions("dst")])), text,
                    titles if graph.titles is not None else None, x, _labels(nodes, nodes_path, graph))


def _labels(nodes, path: Path, graph: GraphData) -> np.ndarray:
    """The optional ``label`` column as the graph's class ids (names as the graph spells them, ``_`` as space)."""
    if "label" not in nodes.column_names:
        return np.full(nodes.num_rows, UNLABELLED, dtype=np.int64)
    labels = _column(nodes, "label")
    index = {name: c for c, name in enumerate(graph.class_names)}
    values = labels.to_pylist()
    if not _is_text(labels):
        index = {c: c for c in range(graph.num_classes)}
    y = [UNLABELLED if v in (None, "") else index.get(v.replace("_", " ").strip() if isinstance(v, str) else v)
         for v in values]
    if None in y:
        row = y.index(None)
        raise InputError(f"{path} row {row + 1}: label {values[row]!r} is not a class of {graph.name} "
                         f"({', '.join(graph.class_names)})")
    return np.asarray(y, dtype=np.int64)


def extend(graph: GraphData, new: NewNodes, x: torch.Tensor = None) -> GraphData:
    """``graph`` with ``new`` appended (undirected edges, as every graph here); ``x``: the new nodes' feature rows
    as the graph's ``x`` holds them (made from their text where the graph's are), default ``new.x``, which must
    then be as wide as the graph's."""
    num_nodes = graph.num_nodes + len(new.node_ids)
    edges = torch.cat([graph.edge_index, to_undirected(new.edges, num_nodes=num_nodes)], dim=1)
    edge_index = to_undirected(edges[:, edges[0] != edges[1]], num_nodes=num_nodes)
    if x is None and new.x.size(1) != graph.x.size(1):
        raise InputError(f"{graph.name}'s nodes have {graph.x.size(1)} features, the new ones {new.x.size(1)}: "
                         "give the same feature columns")
    x = torch.cat([graph.x, new.x if x is None else x.to(graph.x.dtype)])
    y = torch.cat([graph.y, torch.from_numpy(new.y)])
    text = graph.text + new.text if graph.text is not None else None
    titles = graph.titles + new.titles if graph.titles is not None else None
    node_ids = np.concatenate([graph.node_ids, new.node_ids]).astype(graph.node_ids.dtype)
    return replace(graph, x=x, edge_index=edge_index, y=y, text=text, titles=titles, node_ids=node_ids,
                   public_split=None, fingerprint=_fingerprint({"graph": [graph.fingerprint], "x": x,
                                                                "edge_index": edge_index, "text": text}))
