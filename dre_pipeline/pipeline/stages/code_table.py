"""``codes.parquet``: each node's code ids and words per view, as stage one (and a joint pass) writes them and
stage two reads them."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...data import GraphData, split_names
from ...model.codebook import Codebook

CODES_ROW_GROUP = 65536


def write_codes(path, data: GraphData, split: np.ndarray, codes: list, codebook: Codebook,
                rows_per_group: int = CODES_ROW_GROUP) -> None:
    """``codes.parquet``: node_id, split, label, and per view t ``view{t}_codes`` (code ids) and
    ``view{t}_words``, one row group at a time, so the words of only one group are ever built
    in memory (a word list per node and view is the bulk of the file on a large graph)."""
    words = np.asarray(codebook.words, dtype=object)
    labels, names = data.y.numpy(), split_names(split)
    writer = None
    for start in range(0, data.num_nodes, rows_per_group):
        rows = slice(start, start + rows_per_group)
        columns = {"node_id": data.node_ids[rows], "split": names[rows], "label": labels[rows]}
        for t, view in enumerate(codes, start=1):
            columns[f"view{t}_codes"] = pa.array(list(view[rows].astype(np.int32)), type=pa.list_(pa.int32()))
            columns[f"view{t}_words"] = pa.array([list(w) for w in words[view[rows]]], type=pa.list_(pa.string()))
        group = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, group.schema)
        writer.write_table(group)
    writer.close()


def read_codes(path, num_views: int) -> np.ndarray:
    """``[N, T, K]`` code ids of the file :func:`write_codes` wrote."""
    table = pq.read_table(path, columns=[f"view{t}_codes" for t in range(1, num_views + 1)])
    return np.stack([np.stack(table[f"view{t}_codes"].to_numpy(zero_copy_only=False))
                     for t in range(1, num_views + 1)], axis=1)
