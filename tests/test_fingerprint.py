"""Zero wrong cache hits: every field of a dataset folder, edited in place, gives a new fingerprint
and so new codebook-to-finetune keys; an unchanged folder keeps its fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dre_pipeline.data import load_dataset
from tests.test_csv import write_tables

HEADER = ("node_id", "label", "title", "abstract", "f0", "f1", "split")
NODES = [
    (10, "Theory", "Bounds", "Margins explain boosting.", 0.5, 1.0, "train"),
    (11, "Neural_Networks", "Deep nets", "Layers and more layers.", 0.25, 0.0, "train"),
    (12, "Theory", "PAC learning", "Samples suffice.", 1.0, 0.5, "val"),
    (13, "Neural_Networks", "Backprop", "Gradients flow back.", 0.0, 0.25, "test"),
]
EDGES = [(10, 11), (11, 12), (12, 13)]


def edited(column: int, value, row: int = 0) -> list:
    rows = [list(r) for r in NODES]
    rows[row][column] = value
    return rows


EDITS = {
    "node_id renumbered": [[r[0] + 100, *r[1:]] for r in NODES],
    "label": edited(1, "Neural_Networks"),
    "title": edited(2, "Bounds, revisited"),
    "abstract": edited(3, "Margins explain boosting!"),
    "feature": edited(4, 0.75),
    "split reversed": [[*r[:6], s[6]] for r, s in zip(NODES, reversed(NODES))],
    "split cell emptied": edited(6, "", row=3),
    "node order": [NODES[1], NODES[0], *NODES[2:]],
}


def fingerprint(folder: Path, nodes, edges=EDGES) -> str:
    write_tables(folder, nodes, edges, node_header=HEADER)
    return load_dataset(str(folder), None, folder / "cache").fingerprint


def test_each_field_edited_in_place_is_a_new_fingerprint(tmp_path: Path) -> None:
    folder = tmp_path / "graph"
    before = fingerprint(folder, NODES)
    assert fingerprint(folder, NODES) == before  # the same tables: the cache still answers
    seen = {before}
    for name, nodes in {**EDITS, "edge added": NODES, "class names": NODES}.items():
        edges = {"edge added": [*EDGES, (10, 13)],
                 "node_id renumbered": [(a + 100, b + 100) for a, b in EDGES]}.get(name, EDGES)
        if name == "class names":  # integer labels named by classes.json
            nodes = [[r[0], i % 2, *r[2:]] for i, r in enumerate(NODES)]
            (folder / "classes.json").write_text(json.dumps(["Theory", "Neural Networks"]))
            first = fingerprint(folder, nodes)
            (folder / "classes.json").write_text(json.dumps(["Theory", "Deep Learning"]))
        after = fingerprint(folder, nodes, edges)
        assert after not in seen, f"{name}: edited in place, yet the same fingerprint"
        seen.add(after)
        (folder / "classes.json").unlink(missing_ok=True)
    assert first != after


def test_texts_cannot_run_into_each_other(tmp_path: Path) -> None:
    """A NUL (or any separator) inside a text must not make two different tables hash alike."""
    prints = []
    for texts in (["a\x00b", "c"], ["a", "b\x00c"]):
        folder = tmp_path / str(len(prints))
        folder.mkdir()
        pq.write_table(pa.table({"node_id": [0, 1], "label": ["x", "y"], "text": texts}), folder / "nodes.parquet")
        pq.write_table(pa.table({"src": [0], "dst": [1]}), folder / "edges.parquet")
        prints.append(load_dataset(str(folder), None, folder / "cache").fingerprint)
    assert prints[0] != prints[1]


@pytest.mark.parametrize("split", ["random", "public"])
def test_an_edit_is_a_new_encode_key(tmp_path: Path, tiny_llm, split) -> None:
    """The key encode (and so finetune) looks up: a reversed split column is a new one (the review's stale hit
    was under ``--split public``), and so is a retitled node under either split."""
    from dre_pipeline.pipeline.artifacts import Store
    from dre_pipeline.pipeline.config import EncodeConfig
    from dre_pipeline.pipeline.resolve import resolve

    folder, store = tmp_path / "graph", Store(tmp_path / "store")
    cfg = EncodeConfig(dataset=str(folder), llm_path=str(tiny_llm), split=split)
    keys = []
    for nodes in (NODES, EDITS["split reversed"], EDITS["title"]):
        write_tables(folder, nodes, EDGES, node_header=HEADER)
        keys.append(resolve(cfg, store).keys["encode"])
    assert len(set(keys)) == 3
