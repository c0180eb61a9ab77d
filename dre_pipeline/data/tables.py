"""A user's graph as a folder of two tables: ``nodes.csv`` + ``edges.csv``, or the same as parquet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..errors import InputError
from .graph import (SPLIT_NAMES, GraphData, _find_shared, _graph, _numbered_classes, _reason, _resolve_data_dir,
                    split_titles)

# Built-in node tables with text: name -> folder under the data root's text/ (see _find_text_folder).
_TEXT_FOLDERS = {"cora-text": "cora"}
_SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


NAMES = tuple(_TEXT_FOLDERS)


def load(name: str, data_dir: str | Path | None, cache_dir: Path, seed: int = 0) -> GraphData:
    """A built-in graph with text, found under the data root's ``text/``."""
    return load_folder(_find_text_folder(_TEXT_FOLDERS[name], _resolve_data_dir(data_dir)), name)


def _find_text_folder(name: str, data_dir: Path | None) -> Path:
    """``<data_dir>/../text/<name>``, ``<data_dir>/text/<name>``, then ``../shared/datasets/text/<name>``."""
    return _find_shared("text", name, data_dir)


def load_folder(folder: Path, name: str | None = None) -> GraphData:
    """A user's own graph as two tables: ``nodes.csv`` + ``edges.csv``, or the same as ``.parquet``.

    ``nodes``: ``node_id`` (integers or names), ``label`` (class names, or integers named by an optional
    ``classes.json``), and optionally ``text`` or ``title`` + ``abstract``, features (a ``features`` list
    column or numeric columns ``f0, f1, ...``) and ``split`` (train/val/test). ``edges``: ``src``, ``dst``.
    A malformed table stops here, naming its row, before any work.
    """
    kind = "csv" if (folder / "nodes.csv").is_file() or (folder / "edges.csv").is_file() else "parquet"
    nodes_path, edges_path = folder / f"nodes.{kind}", folder / f"edges.{kind}"
    nodes = _read_table(nodes_path, ["node_id", "label"])
    edges = _read_table(edges_path, ["src", "dst"])

    node_ids = _id_column(nodes, "node_id", nodes_path)
    first_row = {}
    for row, node in enumerate(node_ids.tolist()):
        if first_row.setdefault(node, row) != row:
            raise InputError(f"{nodes_path} row {row + 1}: node_id {node!r} repeats row {first_row[node] + 1}")

    def positions(column: str) -> np.ndarray:
        """Row positions in ``nodes`` of the node ids an edge column names."""
        ids = _id_column(edges, column, edges_path)
        found = [first_row.get(_same_kind(node, node_ids)) for node in ids.tolist()]
        if None in found:
            row = found.index(None)
            raise InputError(f"{edges_path} row {row + 1}: {column} names node_id {ids.tolist()[row]!r}, "
                             f"which is not in {nodes_path.name}")
        return np.asarray(found, dtype=np.int64)

    edge_index = torch.from_numpy(np.stack([positions("src"), positions("dst")]))
    y, class_names = _folder_labels(nodes, nodes_path, folder)
    text, titles = _folder_text(nodes, nodes_path)
    return _graph(
        name=name or folder.resolve().name,
        x=torch.from_numpy(_folder_features(nodes, nodes_path, has_text=text is not None)),
        edge_index=edge_index,
        y=torch.from_numpy(y),
        class_names=class_names,
        text=text,
        node_ids=node_ids,
        public_split=_folder_split(nodes, nodes_path),
        titles=titles,
    )


def _read_table(path: Path, required: list[str], empty_ok: bool = False) -> pa.Table:
    """A CSV file (pyarrow's reader: quoted commas, quotes and line breaks inside values) or a parquet file;
    ``empty_ok``: a header alone is a table without rows (new nodes' edges: a paper may cite none)."""
    if not path.is_file():
        raise InputError(f"missing {path}: a dataset folder needs nodes.csv and edges.csv (or nodes.parquet "
                         "and edges.parquet)")
    try:
        if path.suffix == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path, parse_options=csv.ParseOptions(newlines_in_values=True),
                                 convert_options=csv.ConvertOptions(strings_can_be_null=False))
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read {path}: {_reason(err)}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path} lacks column(s) {', '.join(missing)} (expected {', '.join(required)})"
        )
    repeated = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    if table.num_rows == 0 and not empty_ok:  # a header alone reads as columns of type null, which every later check would misname
        raise InputError(f"{path} has a header but no rows")
    for name in table.column_names:
        if path.suffix == ".csv" and pa.types.is_binary(table.schema.field(name).type):  # how pyarrow reads non-UTF-8
            raise InputError(f"{path} row {_first_non_utf8(table.column(name).to_pylist())}: column {name!r} "
                             "is not UTF-8 text (save the file as UTF-8)")
    return table


def _first_non_utf8(values: list[bytes]) -> int:
    """The 1-based row of the first value that is not UTF-8."""
    for row, value in enumerate(values, 1):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return row


def _column(table: pa.Table, name: str) -> pa.Array:
    """One contiguous array; dictionary columns (pandas categoricals) become plain values."""
    array = table.column(name).combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _is_text(array: pa.Array) -> bool:
    return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _first_row(mask) -> int:
    """The 1-based row of the first true entry."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def _id_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """Node ids: int64, or str (paper ids, names); never missing or blank."""
    array = _column(table, name)
    if array.null_count:
        raise InputError(f"{path} row {_first_row(array.is_null())}: column {name!r} is empty")
    if pa.types.is_integer(array.type):
        return _int64(array, name, path)
    if not _is_text(array):
        raise InputError(f"{path}: column {name!r} must hold integers or names, not {array.type} "
                         f"(row 1 reads {array[0].as_py()!r})")
    values = np.asarray([v.strip() for v in array.to_pylist()], dtype=object)
    if (values == "").any():
        raise InputError(f"{path} row {_first_row(values == '')}: column {name!r} is empty")
    return values


def _int64(array: pa.Array, name: str, path: Path) -> np.ndarray:
    """An integer column as int64, in a writable copy (torch warns on read-only arrays); numpy's cast would
    wrap unsigned values beyond int64 round to negative ones."""
    try:
        return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False, writable=True)
    except pa.ArrowInvalid as err:
        raise InputError(f"{path}: column {name!r} holds integers beyond 64 bits ({_reason(err)})") from err


def _same_kind(node, node_ids: np.ndarray):
    """An edge's id in the node table's kind: "7" finds node 7 in a table of integer ids, 7 finds "7"."""
    if node_ids.dtype == object:
        return str(node)
    if isinstance(node, str):
        return int(node) if node.lstrip("-").isdigit() else node
    return node


def _folder_labels(nodes: pa.Table, path: Path, folder: Path) -> tuple[np.ndarray, list[str]]:
    """String labels name themselves; integer labels take names from ``classes.json``."""
    labels = _column(nodes, "label")
    if labels.null_count:
        raise InputError(f"{path} row {_first_row(labels.is_null())}: the label is missing")
    if _is_text(labels):
        values = np.asarray([v.strip() for v in labels.to_pylist()], dtype=object)
        if (values == "").any():
            raise InputError(f"{path} row {_first_row(values == '')}: the label is empty")
        class_names, y = np.unique(values, return_inverse=True)
        return y.astype(np.int64), [str(c) for c in class_names]
    if not pa.types.is_integer(labels.type):
        raise InputError(
            f"{path}: column 'label' must hold integers or strings, not {labels.type}"
        )
    y = _int64(labels, "label", path)
    classes_file = folder / "classes.json"
    if not classes_file.is_file():
        return y, _numbered_classes(y, path, "classes.json")
    try:
        class_names = json.loads(classes_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {classes_file} as JSON: {err}") from err
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise InputError(f"{classes_file} must be a JSON list of class names")
    return y, class_names


_FEATURE_COLUMN = re.compile(r"f\d+")


def _folder_features(nodes: pa.Table, path: Path, has_text: bool) -> np.ndarray:
    """A ``features`` list column, else the numeric columns ``f0, f1, ...``; ``[N, 0]`` for a graph of text alone."""
    if "features" in nodes.column_names:
        array = _column(nodes, "features")
        if not (
            pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)
        ):
            raise InputError(f"{path}: column 'features' must be a list of numbers per node")
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        values = array.flatten()
        if array.null_count or values.null_count or not (
            pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
        ):
            raise InputError(f"{path}: column 'features' must hold numbers without nulls")
        if lengths.size and (lengths != lengths[0]).any():
            raise InputError(f"{path}: every node's 'features' list must have the same length")
        width = int(lengths[0]) if lengths.size else 0
        return _float32(values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(array), width), path)
    columns = [name for name in nodes.column_names if _FEATURE_COLUMN.fullmatch(name)]
    if not columns:
        if has_text:  # --features makes them from the text
            return np.zeros((nodes.num_rows, 0), dtype=np.float32)
        raise InputError(
            f"{path} has no features and no text: add a list column 'features', "
            "numeric columns named f0, f1, ... or a 'text' column"
        )
    stacked = []
    for name in columns:
        array = _column(nodes, name)
        if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
            raise InputError(f"{path}: feature column {name!r} must hold numbers, not {array.type}")
        if array.null_count:
            raise InputError(f"{path} row {_first_row(array.is_null())}: feature column {name!r} is empty")
        stacked.append(array.to_numpy(zero_copy_only=False).astype(np.float64))
    return _float32(np.stack(stacked, axis=1), path)


def _float32(features: np.ndarray, path: Path) -> np.ndarray:
    """Features as float32; a finite number beyond its range is refused, as the cast would make it infinite
    with a warning on the user's stderr."""
    beyond = np.isfinite(features) & (np.abs(features) > np.finfo(np.float32).max)
    if beyond.any():
        row, column = np.argwhere(beyond)[0]
        raise InputError(f"{path} row {row + 1}: feature {column} is {features[row, column]:g}, "
                         "beyond the range of float32")
    return features.astype(np.float32)


def _text_column(nodes: pa.Table, name: str, path: Path) -> list[str] | None:
    if name not in nodes.column_names:
        return None
    array = _column(nodes, name)
    if not _is_text(array):
        example = next((v for v in array.to_pylist() if v is not None), None)
        raise InputError(f"{path} row 1: column {name!r} must hold text, not {array.type} (row 1 reads {example!r})")
    return [t.strip() if t is not None else "" for t in array.to_pylist()]


def _folder_text(nodes: pa.Table, path: Path) -> tuple[list[str] | None, list[str] | None]:
    """Each node's text and its title: a ``title`` column beside ``abstract`` or ``text``, or a ``text`` column
    alone (whose titles are split off where the table follows TAPE's "Title : Abstract" convention)."""
    title, abstract, text = (_text_column(nodes, name, path) for name in ("title", "abstract", "text"))
    body = abstract if abstract is not None else text
    if title is None:
        return body, split_titles(body) if body is not None else None
    if body is None:
        return title, None
    return [f"{t}\n{b}".strip() for t, b in zip(title, body)], title


def _folder_split(nodes: pa.Table, path: Path) -> np.ndarray | None:
    """An optional ``split`` column of train/val/test; empty cells mean "unused" (-1)."""
    if "split" not in nodes.column_names:
        return None
    values = [v.strip() if isinstance(v, str) else v for v in _column(nodes, "split").to_pylist()]
    bad = sorted({str(v) for v in values if v not in (None, "") and v not in _SPLIT_CODES})
    if bad:
        raise InputError(
            f"{path}: column 'split' must hold {', '.join(SPLIT_NAMES)} or nothing, "
            f"found {', '.join(bad)}"
        )
    return np.array([_SPLIT_CODES.get(v, -1) for v in values], dtype=np.int8)
