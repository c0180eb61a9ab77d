"""Graphs in the gnn-benchmark sparse-npz layout (Cora-ML and the rest of that collection)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .graph import GraphData, _find_shared, _graph, _numbered_classes, _reason, _resolve_data_dir

# Built-in sparse-npz graphs: name -> file, looked up beside the Planetoid data (see _find_npz).
_NPZ = {"cora-ml": "cora_ml.npz"}
# The two key spellings of the gnn-benchmark layout: "adj_matrix.data" and "adj_data".
_NPZ_SPELLINGS = ("{}_matrix.{}", "{}_{}")


NAMES = tuple(_NPZ)


def load(name: str, data_dir: str | Path | None, cache_dir: Path, seed: int = 0) -> GraphData:
    """A built-in graph of the collection, found beside the Planetoid data."""
    return load_file(_find_npz(_NPZ[name], _resolve_data_dir(data_dir)), name)


def _find_npz(file: str, data_dir: Path | None) -> Path:
    """``<data_dir>/../npz``, ``<data_dir>/npz`` or ``<data_dir>``, then ``../shared/datasets/npz``."""
    return _find_shared("npz", file, data_dir)


def load_file(path: Path, name: str) -> GraphData:
    """A graph in the gnn-benchmark sparse-npz layout, either key spelling.

    CSR adjacency and attributes, ``labels``, optional ``node_names``, ``attr_names`` and
    ``class_names``. Where attribute names exist, a node's text is the names of its nonzero
    attributes in vocabulary order (the layout keeps no word order). Class names keep their
    last path component (``.../Machine_Learning/Neural_Networks`` -> ``Neural Networks``).
    No key is unpickled: the layout's optional object entries are never read. Everything that is
    read is checked (the zip, each matrix's shape against its arrays, indices within the shape,
    whole-number labels, one name per node and per attribute), so a bad file stops here.
    """
    if not zipfile.is_zipfile(path):  # np.load would take anything else for a single .npy array or a pickle
        raise InputError(f"{path}: not a readable .npz file (no zip archive: empty, cut short or another format)")
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as err:
        raise InputError(f"{path}: not a readable .npz file ({_reason(err)})") from err
    with archive:
        if "labels" not in archive.files:
            raise InputError(f"{path}: no 'labels' array")
        adjacency, attributes = _npz_csr(archive, "adj", path).tocoo(), _npz_csr(archive, "attr", path)
        labels = _npz_labels(archive, path)
        node_names, attr_names, class_names = (
            _npz_strings(archive, key, path) for key in ("node_names", "attr_names", "class_names")
        )
    num_nodes = adjacency.shape[0]
    if adjacency.shape[1] != num_nodes:
        raise InputError(f"{path}: the adjacency matrix is {num_nodes} x {adjacency.shape[1]}, not square")
    if attributes.shape[0] != num_nodes or labels.shape[0] != num_nodes:
        raise InputError(f"{path}: adjacency, attributes and labels disagree on the number of nodes "
                         f"({num_nodes}, {attributes.shape[0]} and {labels.shape[0]})")
    if node_names is not None and len(node_names) != num_nodes:
        raise InputError(f"{path}: {len(node_names)} node_names for {num_nodes} nodes")
    if attr_names is not None and len(attr_names) != attributes.shape[1]:
        raise InputError(f"{path}: {len(attr_names)} attr_names for {attributes.shape[1]} attribute columns")
    if class_names:
        class_names = [c.rsplit("/", 1)[-1] for c in class_names]
    else:
        class_names = _numbered_classes(labels, path, "a 'class_names' array")
    try:
        features = attributes.toarray()
    except MemoryError as err:
        raise InputError(f"{path}: attributes of shape {attributes.shape} do not fit in memory as a dense matrix") \
            from err
    text = None
    if attr_names is not None:
        attributes.eliminate_zeros()
        vocabulary, bounds = np.asarray(attr_names, dtype=object), attributes.indptr
        text = [" ".join(vocabulary[np.sort(attributes.indices[a:b])]) for a, b in zip(bounds[:-1], bounds[1:])]
    node_ids = np.arange(adjacency.shape[0])
    numeric = node_names is not None and all(n.isdigit() for n in node_names)
    if numeric and len(set(node_names)) == len(node_names):  # the papers' own ids, where they are ids
        node_ids = np.array([int(n) for n in node_names])
    return _graph(
        name=name,
        x=torch.from_numpy(features),
        edge_index=torch.from_numpy(np.stack([adjacency.row, adjacency.col]).astype(np.int64)),
        y=torch.from_numpy(labels),
        class_names=class_names,
        text=text,
        node_ids=node_ids,
        public_split=None,
    )


# What numpy and zipfile raise on a damaged .npz: an empty file (EOFError), a cut or overwritten zip
# (BadZipFile, a bad CRC), a broken deflate stream (zlib.error), a broken array header or a pickled array
# (ValueError, since pickles are never loaded).
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        values = archive[key]
    except _NPZ_READ_ERRORS as err:
        raise InputError(f"{path}: cannot read its {key!r} array ({_reason(err)})") from err
    if not isinstance(values, np.ndarray):  # numpy hands over a member without the .npy header as raw bytes
        raise InputError(f"{path}: its {key!r} entry is not a .npy array")
    return values


def _npz_csr(archive, prefix: str, path: Path):
    """The ``prefix`` CSR matrix, checked in full: scipy's constructor leaves indices beyond the shape
    and an indptr out of order to whoever indexes with them later."""
    from scipy.sparse import csr_matrix

    for spelling in _NPZ_SPELLINGS:
        keys = [spelling.format(prefix, part) for part in ("data", "indices", "indptr", "shape")]
        if all(k in archive.files for k in keys):
            break
    else:
        raise InputError(f"{path}: no '{prefix}_matrix.data' or '{prefix}_data' CSR arrays")
    data, indices, indptr, shape = (_npz_array(archive, k, path) for k in keys)
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 0).any():
        raise InputError(f"{path}: {keys[3]} must be two whole numbers (rows, columns), none negative; "
                         f"found {np.array2string(shape.ravel(), threshold=4)}")
    for key, values in zip(keys[1:3], (indices, indptr)):
        if not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"{path}: {key} must hold whole numbers, found {values.dtype}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise InputError(f"{path}: {keys[0]} must hold numbers, found {data.dtype}")
    try:
        matrix = csr_matrix((data, indices, indptr), shape=tuple(int(s) for s in shape))
        matrix.check_format(full_check=True)
    except ValueError as err:
        raise InputError(f"{path}: the {prefix} CSR arrays disagree with {keys[3]} {tuple(shape.tolist())} "
                         f"({_reason(err)})") from err
    return matrix


def _npz_labels(archive, path: Path) -> np.ndarray:
    """One whole number per node (floats such as 2.0 too): NaN, fractions and strings are refused, not rounded or parsed."""
    labels = _npz_array(archive, "labels", path)
    whole = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all()
        and np.abs(labels).max(initial=0) < 2**53)
    if labels.ndim != 1 or not whole:
        raise InputError(f"{path}: 'labels' must hold one whole number per node, "
                         f"found {labels.dtype} values of shape {labels.shape}")
    return labels.astype(np.int64)


def _npz_strings(archive, key: str, path: Path) -> list[str] | None:
    if key not in archive.files:
        return None
    values = _npz_array(archive, key, path)
    if values.ndim != 1:
        raise InputError(f"{path}: {key!r} must be a list of names, found an array of shape {values.shape}")
    return [str(v).strip() for v in values]
