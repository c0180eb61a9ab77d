"""Tests for dre_pipeline.data: real Cora from the shared read-only folder, the synthetic
graph, and the parquet folder format.  All offline; Cora is processed once per module."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dre_pipeline.data import (
    DATASETS,
    SPLIT_NAMES,
    GraphData,
    load_dataset,
    make_split,
)
from dre_pipeline.errors import InputError

from conftest import csr_arrays

CORA_COUNTS = {
    "Theory": 351,
    "Reinforcement Learning": 217,
    "Genetic Algorithms": 418,
    "Neural Networks": 818,
    "Probabilistic Methods": 426,
    "Case Based": 298,
    "Rule Learning": 180,
}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and mtime, to prove nothing changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def cora_load(tmp_path_factory: pytest.TempPathFactory, datasets_root: Path) -> tuple[GraphData, dict, dict]:
    root = datasets_root
    before = snapshot(root)
    data = load_dataset("cora", root, tmp_path_factory.mktemp("cache"))
    return data, before, snapshot(root)


@pytest.fixture(scope="module")
def cora(cora_load: tuple[GraphData, dict, dict]) -> GraphData:
    return cora_load[0]


def test_constants() -> None:
    assert SPLIT_NAMES == ("train", "val", "test")
    assert DATASETS == ("cora", "citeseer", "pubmed", "cora-ml", "cora-text", "ogbn-arxiv", "synthetic")


def test_cora_shapes(cora: GraphData) -> None:
    assert cora.name == "cora"
    assert cora.num_nodes == 2708
    assert cora.x.shape == (2708, 1433) and cora.x.dtype == torch.float32
    assert cora.num_classes == 7
    assert cora.edge_index.shape == (2, 10556) and cora.edge_index.dtype == torch.int64
    assert cora.y.dtype == torch.int64 and cora.y.shape == (2708,)
    assert cora.text is None
    assert np.array_equal(cora.node_ids, np.arange(2708))
    assert len(cora.fingerprint) == 16 and set(cora.fingerprint) <= set("0123456789abcdef")  # 64 bits of hex


def test_cora_edges_undirected_without_self_loops(cora: GraphData) -> None:
    src, dst = cora.edge_index.tolist()
    pairs = set(zip(src, dst))
    assert len(pairs) == 10556
    assert all((d, s) in pairs for s, d in pairs)
    assert all(s != d for s, d in pairs)


def test_cora_class_names_and_counts(cora: GraphData) -> None:
    assert cora.class_names[3] == "Neural Networks"
    assert cora.class_names == list(CORA_COUNTS)
    counts = torch.bincount(cora.y, minlength=7).tolist()
    assert dict(zip(cora.class_names, counts)) == CORA_COUNTS


def test_cora_shared_folder_untouched(cora_load: tuple[GraphData, dict, dict]) -> None:
    _, before, after = cora_load
    assert before == after


def test_cora_public_split(cora: GraphData) -> None:
    split = make_split(cora, "public", seed=0)
    assert split.dtype == np.int8
    assert [int((split == code).sum()) for code in (0, 1, 2)] == [140, 500, 1000]
    assert int((split == -1).sum()) == 2708 - 1640


def test_random_split_sizes_and_seeds(cora: GraphData) -> None:
    split = make_split(cora, "random", seed=0)
    assert split.dtype == np.int8 and split.shape == (2708,)
    assert set(np.unique(split).tolist()) == {0, 1, 2}
    sizes = [int((split == code).sum()) for code in (0, 1, 2)]
    for size, ratio in zip(sizes, (0.6, 0.2, 0.2)):
        assert abs(size - ratio * 2708) <= 1
    assert sum(sizes) == 2708
    assert np.array_equal(split, make_split(cora, "random", seed=0))
    assert not np.array_equal(split, make_split(cora, "random", seed=1))


def test_cora_from_env_var_reuses_nothing_shared(
    cora: GraphData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets_root: Path
) -> None:
    monkeypatch.setenv("DRE_DATA_DIR", str(datasets_root))
    again = load_dataset("Cora", None, tmp_path)
    assert again.fingerprint == cora.fingerprint
    # A second load from the same cache copies nothing and gives the same data.
    assert load_dataset("cora", None, tmp_path).fingerprint == cora.fingerprint


def test_planetoid_missing_raw_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="Cora/raw"):
        load_dataset("cora", empty, tmp_path / "cache")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("cora", tmp_path / "nowhere", tmp_path / "cache")


def test_synthetic(tmp_path: Path) -> None:
    data = load_dataset("synthetic", None, tmp_path, seed=3)
    assert data.num_nodes == 300 and data.x.shape == (300, 64)
    assert data.class_names == ["astronomy", "botany", "chemistry", "geology", "music"]
    assert torch.bincount(data.y).tolist() == [60] * 5
    assert data.public_split is None
    assert data.text is not None and len(data.text) == 300
    assert all(len(t.split()) == 8 for t in data.text)

    src, dst = data.edge_index
    assert bool((src != dst).all())
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert all((d, s) in pairs for s, d in pairs)
    homophily = (data.y[src] == data.y[dst]).float().mean().item()
    assert homophily > 0.6

    same = load_dataset("synthetic", None, tmp_path, seed=3)
    assert same.fingerprint == data.fingerprint
    assert torch.equal(same.x, data.x) and same.text == data.text
    assert load_dataset("synthetic", None, tmp_path, seed=4).fingerprint != data.fingerprint


def test_public_split_missing_and_unknown_kind(tmp_path: Path) -> None:
    data = load_dataset("synthetic", None, tmp_path)
    with pytest.raises(InputError, match="public split"):
        make_split(data, "public", seed=0)
    with pytest.raises(InputError, match="unknown split"):
        make_split(data, "stratified", seed=0)
    with pytest.raises(InputError, match="ratios"):
        make_split(data, "random", seed=0, ratios=(0.5, 0.5, 0.5))


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("no-such-dataset", None, tmp_path)


def write_folder(folder: Path, nodes: dict, edges: dict, classes: list[str] | None = None) -> Path:
    folder.mkdir()
    pq.write_table(pa.table(nodes), folder / "nodes.parquet")
    pq.write_table(pa.table(edges), folder / "edges.parquet")
    if classes is not None:
        (folder / "classes.json").write_text(json.dumps(classes))
    return folder


def test_folder_string_labels_and_text(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "tiny",
        nodes={
            "node_id": [10, 20, 30, 40],
            "label": ["music", "botany", "music", "geology_rocks"],
            "text": ["a song", "a leaf", None, "a stone"],
            "features": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]],
            "split": ["train", "val", "test", None],
        },
        edges={"src": [10, 20, 30, 30], "dst": [20, 30, 40, 30]},
    )
    data = load_dataset(str(folder), None, tmp_path / "cache")
    assert data.name == "tiny"
    assert data.class_names == ["botany", "geology rocks", "music"]
    assert data.y.tolist() == [2, 0, 2, 1]
    assert data.text == ["a song", "a leaf", "", "a stone"]
    assert data.node_ids.tolist() == [10, 20, 30, 40]
    assert data.x.dtype == torch.float32 and data.x[3].tolist() == [0.5, 0.5]
    # ids 10-20, 20-30, 30-40 become positions 0-1, 1-2, 2-3; the 30-30 self loop is dropped
    expected = {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    assert set(zip(*data.edge_index.tolist())) == expected
    assert data.edge_index.shape[1] == len(expected)
    assert make_split(data, "public", seed=0).tolist() == [0, 1, 2, -1]


def test_folder_int_labels_with_classes_and_f_columns(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "ints",
        nodes={"node_id": [0, 1, 2], "label": [1, 0, 1], "f0": [1, 2, 3], "f1": [0.5, 0.5, 0.5]},
        edges={"src": [0], "dst": [2]},
        classes=["Case_Based", "Theory"],
    )
    data = load_dataset(str(folder), None, tmp_path / "cache")
    assert data.class_names == ["Case Based", "Theory"]
    assert data.x.tolist() == [[1.0, 0.5], [2.0, 0.5], [3.0, 0.5]]
    assert data.text is None and data.public_split is None


def test_folder_errors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    no_label = write_folder(
        tmp_path / "no_label",
        nodes={"node_id": [0, 1], "features": [[1.0], [2.0]]},
        edges={"src": [0], "dst": [1]},
    )
    with pytest.raises(InputError, match="label"):
        load_dataset(str(no_label), None, cache)

    unknown_id = write_folder(
        tmp_path / "unknown_id",
        nodes={"node_id": [0, 1], "label": [0, 1], "features": [[1.0], [2.0]]},
        edges={"src": [0], "dst": [7]},
    )
    with pytest.raises(InputError, match="node_id 7"):
        load_dataset(str(unknown_id), None, cache)

    out_of_range = write_folder(
        tmp_path / "out_of_range",
        nodes={"node_id": [0, 1], "label": [0, 2], "features": [[1.0], [2.0]]},
        edges={"src": [0], "dst": [1]},
        classes=["a", "b"],
    )
    with pytest.raises(InputError, match="labels must lie in 0..1"):
        load_dataset(str(out_of_range), None, cache)

    no_features = write_folder(
        tmp_path / "no_features",
        nodes={"node_id": [0, 1], "label": ["a", "b"]},
        edges={"src": [0], "dst": [1]},
    )
    with pytest.raises(InputError, match="no features"):
        load_dataset(str(no_features), None, cache)

    no_edges = tmp_path / "no_edges"
    no_edges.mkdir()
    nodes = pa.table({"node_id": [0], "label": [0], "f0": [1.0]})
    pq.write_table(nodes, no_edges / "nodes.parquet")
    with pytest.raises(InputError, match="edges.parquet"):
        load_dataset(str(no_edges), None, cache)


# --------------------------------------------------------------------------- sparse npz


def write_npz(path: Path, spelling: str, names: bool = True, **changes) -> Path:
    """Four nodes: a directed chain 0→1→2 with a self-loop on 3, 0/1 words over a 3-word vocabulary.

    ``changes`` replace arrays by key (``None`` leaves the key out): the files a broken exporter writes.
    """
    from scipy.sparse import csr_matrix

    adjacency = csr_matrix((np.ones(3, np.float32), ([0, 1, 3], [1, 2, 3])), shape=(4, 4))
    attributes = csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]], np.float32))
    arrays = {"labels": np.array([0, 1, 1, 0])}
    for prefix, matrix in (("adj", adjacency), ("attr", attributes)):
        arrays.update(csr_arrays(prefix, matrix, spelling))
    if names:
        arrays.update(node_names=np.array(["101\n", "7\n", "55\n", "3\n"]),
                      attr_names=np.array(["graph", "language", "model"]),
                      class_names=np.array(["AI/ML/Neural_Networks", "AI/ML/Case-Based"]))
    arrays.update(changes)
    np.savez(path, **{key: values for key, values in arrays.items() if values is not None})
    return path


@pytest.mark.parametrize("spelling", ["{}_matrix.{}", "{}_{}"])
def test_npz_either_key_spelling(tmp_path: Path, spelling: str) -> None:
    data = load_dataset(str(write_npz(tmp_path / "toy.npz", spelling)), None, tmp_path)
    assert data.name == "toy" and data.num_nodes == 4 and data.x.shape == (4, 3)
    edges = set(map(tuple, data.edge_index.t().tolist()))
    assert edges == {(0, 1), (1, 0), (1, 2), (2, 1)}  # undirected, self-loop gone
    assert data.text == ["language model", "graph", "graph language", "model"]  # vocabulary order
    assert data.class_names == ["Neural Networks", "Case-Based"]
    assert data.node_ids.tolist() == [101, 7, 55, 3]


def test_npz_without_names_loads_without_text(tmp_path: Path) -> None:
    data = load_dataset(str(write_npz(tmp_path / "bare.npz", "{}_{}", names=False)), None, tmp_path)
    assert data.text is None and data.class_names == ["class 0", "class 1"]
    assert data.node_ids.tolist() == [0, 1, 2, 3]


def test_npz_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"), None, tmp_path)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable"):
        load_dataset(str(tmp_path / "junk.npz"), None, tmp_path)
    np.savez(tmp_path / "nolabels.npz", adj_data=np.ones(1))
    with pytest.raises(InputError, match="labels"):
        load_dataset(str(tmp_path / "nolabels.npz"), None, tmp_path)
    np.savez(tmp_path / "noadj.npz", labels=np.zeros(2, int))
    with pytest.raises(InputError, match="CSR"):
        load_dataset(str(tmp_path / "noadj.npz"), None, tmp_path)
    monkeypatch.chdir(tmp_path)  # no ../shared/datasets beside it either
    with pytest.raises(InputError, match="cora_ml.npz not found"):
        load_dataset("cora-ml", tmp_path, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"labels": np.array([0, np.nan, 1, 0])}, r"'labels' must hold one whole number per node, found float64"),
    ({"labels": np.array(["ML", "AI", "AI", "ML"])}, r"'labels' must hold one whole number per node, found <U2"),
    ({"labels": np.array([0, 1, 1, 0], dtype=object)}, r"cannot read its 'labels' array \(Object arrays"),
    ({"labels": np.array([0, 1, 10**6, 0]), "class_names": None}, r"integer labels must number the classes 0..C-1"),
    # scipy's own reason closes the line; matched on the words every scipy since 1.11 uses
    ({"adj_matrix.shape": np.array([5, 5])}, r"adj CSR arrays disagree with adj_matrix.shape \(5, 5\) "
                                             r"\(index pointer size \(?5\)? should be \(?6\)?\)"),
    ({"attr_matrix.shape": np.array([3, 3])}, r"attr CSR arrays disagree with attr_matrix.shape \(3, 3\)"),
    ({"adj_matrix.indices": np.array([1, 2, 7])}, r"adj CSR arrays disagree .* must be < 4\)"),
    ({"adj_matrix.indices": np.array([1, -2, 3])}, r"adj CSR arrays disagree .* must be >= 0\)"),
    ({"adj_matrix.indptr": np.array([0, 2, 1, 2, 3])}, r"adj CSR arrays disagree .* non-decreasing sequence\)"),
    ({"adj_matrix.indices": np.array([1.5, 2, 3])}, r"adj_matrix.indices must hold whole numbers, found float64"),
    ({"adj_matrix.shape": np.array([4, 5])}, r"the adjacency matrix is 4 x 5, not square"),
    ({"attr_names": np.array(["graph", "language"])}, r"2 attr_names for 3 attribute columns"),
    ({"node_names": np.array(["1", "2"])}, r"2 node_names for 4 nodes"),
    ({"attr_matrix.shape": np.array([4, 2**42]), "attr_names": None}, r"do not fit in memory as a dense matrix"),
])
def test_npz_arrays_that_disagree_stop_with_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_npz(tmp_path / "bad.npz", "{}_matrix.{}", **changes)
    with pytest.raises(InputError, match=message) as error:
        load_dataset(str(path), None, tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _flip_a_label_byte(data: bytes) -> bytes:
    """One byte of the stored labels changed (past the zip's local header and the 128-byte .npy header)."""
    import io
    import struct
    import zipfile

    offset = zipfile.ZipFile(io.BytesIO(data)).getinfo("labels.npy").header_offset
    name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
    at = offset + 30 + name_length + extra_length + 128
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _raw_member(path: Path) -> None:
    """A zip whose 'labels' member is not an .npy array: np.load hands such a member over as bytes."""
    from tests.test_fuzz import _zip_with_a_text_member

    _zip_with_a_text_member(None, dict(np.load(path)), path)


def _npy_instead(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(4))


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b""), r"not a readable .npz file \(no zip archive"),
    (lambda path: path.write_bytes(path.read_bytes()[:700]), r"not a readable .npz file \(no zip archive"),
    (_npy_instead, r"not a readable .npz file \(no zip archive"),
    (lambda path: path.write_bytes(_flip_a_label_byte(path.read_bytes())), r"cannot read its 'labels' array \(Bad CRC"),
    (_raw_member, r"its 'labels' entry is not a .npy array"),
])
def test_npz_files_damaged_on_disk_stop_with_one_line(tmp_path: Path, damage, message) -> None:
    path = write_npz(tmp_path / "damaged.npz", "{}_matrix.{}")
    damage(path)
    with pytest.raises(InputError, match=message) as error:
        load_dataset(str(path), None, tmp_path)
    assert "\n" not in str(error.value)


def test_cora_ml_from_the_shared_folder(datasets_root: Path, tmp_path: Path) -> None:
    data = load_dataset("cora-ml", datasets_root / "planetoid", tmp_path)
    assert data.num_nodes == 2995 and data.x.shape == (2995, 2879) and data.num_classes == 7
    assert "Neural Networks" in data.class_names and all("/" not in c for c in data.class_names)
    assert data.edge_index.size(1) == 16316  # 8,416 directed links, symmetrised, loops and repeats removed
    assert all(text for text in data.text)
    assert int((data.y == data.class_names.index("Neural Networks")).sum()) == 857


def test_bad_graphs_are_refused_and_isolated_nodes_are_fine(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def folder(name, features, labels, src, dst, split=None, classes=None):
        nodes = {"node_id": list(range(len(labels))), "label": labels, "features": features}
        if split is not None:
            nodes["split"] = split
        return str(write_folder(tmp_path / name, nodes, {"src": src, "dst": dst}, classes))

    nan = folder("nan", [[1.0], [float("nan")], [0.0]], [0, 1, 0], [0], [1])
    with pytest.raises(InputError, match="NaN or infinite values \\(first at row 1\\)"):
        load_dataset(nan, None, cache)
    one_class = folder("one_class", [[1.0], [2.0]], [0, 0], [0], [1], classes=["only"])
    with pytest.raises(InputError, match="at least two classes"):
        load_dataset(one_class, None, cache)
    no_edges = folder("loops_only", [[1.0], [2.0]], [0, 1], [0, 1], [0, 1])
    with pytest.raises(InputError, match="no edges"):
        load_dataset(no_edges, None, cache)
    empty = folder("empty", pa.array([], pa.list_(pa.float64())), pa.array([], pa.int64()), [], [],
                   classes=["a", "b"])
    with pytest.raises(InputError, match="nodes.parquet has a header but no rows"):
        load_dataset(empty, None, cache)
    untrained = folder("untrained", [[1.0], [2.0], [3.0]], [0, 1, 0], [0], [1], split=["val", "test", "val"])
    data = load_dataset(untrained, None, cache)
    with pytest.raises(InputError, match="no training nodes"):
        make_split(data, "public", 0)

    twice = write_folder(tmp_path / "twice", {"node_id": [0, 0], "label": [0, 1], "features": [[1.0], [2.0]]},
                         {"src": [0], "dst": [0]})
    with pytest.raises(InputError, match="row 2: node_id 0 repeats row 1"):
        load_dataset(str(twice), None, cache)

    isolated = folder("isolated", [[float(i)] for i in range(6)], [0, 1, 0, 1, 0, 1], [0, 1], [1, 2])
    data = load_dataset(isolated, None, cache)  # nodes 3..5 have no edge at all
    assert data.num_nodes == 6 and set(data.edge_index.flatten().tolist()) == {0, 1, 2}
    assert data.x[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # kept, in their rows
    split = make_split(data, "random", 0)  # every node, isolated or not, in exactly one part, 60/20/20 of 6
    assert split.shape == (6,) and np.bincount(split, minlength=3).tolist() == [4, 1, 1]


EDGES_CSV = b"src,dst\n0,1\n1,2\n"


@pytest.mark.parametrize("nodes_csv, message", [
    (b"node_id,label,label,f0\n0,a,b,1\n1,b,a,2\n2,a,b,3\n", r"nodes.csv: column\(s\) label appear more than once"),
    (b"node_id,label,f0\n0,0,1\n1,1000000,2\n2,1,3\n", r"nodes.csv: integer labels must number the classes 0..C-1 "
                                                     r"\(or classes.json must name them\); found label 1000000"),
    (b"node_id,label,f0\n0,a,1\n1,b,1e39\n2,a,3\n", r"nodes.csv row 2: feature 0 is 1e\+39, beyond the range of f"),
    (b"node_id,label,text\n0,a,fine\n1,b,caf\xe9\n2,a,ok\n", r"nodes.csv row 2: column 'text' is not UTF-8 text"),
    (b"node_id,label,f0\n", r"nodes.csv has a header but no rows"),
])
def test_tables_that_escaped_as_tracebacks_warnings_or_hangs_stop_with_one_line(tmp_path: Path, nodes_csv: bytes,
                                                                                  message: str) -> None:
    folder = tmp_path / "graph"
    folder.mkdir()
    (folder / "nodes.csv").write_bytes(nodes_csv)
    (folder / "edges.csv").write_bytes(EDGES_CSV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cast that overflows would warn on the user's stderr
        with pytest.raises(InputError, match=message) as error:
            load_dataset(str(folder), None, tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_unsigned_ids_beyond_int64_are_refused_rather_than_wrapped(tmp_path: Path) -> None:
    ids = pa.array([2**64 - 1, 2**64 - 2, 5], pa.uint64())
    folder = write_folder(tmp_path / "ids", {"node_id": ids, "label": ["a", "b", "a"], "f0": [1.0, 2.0, 3.0]},
                          {"src": ids[:2], "dst": ids[1:]})
    with pytest.raises(InputError, match=r"nodes.parquet: column 'node_id' holds integers beyond 64 bits"):
        load_dataset(str(folder), None, tmp_path / "cache")


def write_ogb_arxiv(root: Path, num_nodes: int = 30, num_classes: int = 3) -> Path:
    """A small ogbn-arxiv in OGB's raw layout: gzipped CSVs, the time split, the label mapping."""
    import gzip

    folder = root / "ogbn_arxiv"
    rng = np.random.default_rng(0)
    labels = np.arange(num_nodes) % num_classes
    src = np.arange(num_nodes)
    edges = np.stack([src, (src + 1) % num_nodes]).T  # a directed ring: ogb adds no inverse edges for arxiv
    order = rng.permutation(num_nodes)
    files = {
        "raw/edge.csv.gz": edges, "raw/num-node-list.csv.gz": [[num_nodes]], "raw/num-edge-list.csv.gz": [[len(edges)]],
        "raw/node-feat.csv.gz": rng.normal(size=(num_nodes, 8)).round(4), "raw/node-label.csv.gz": labels[:, None],
        "raw/node_year.csv.gz": np.full((num_nodes, 1), 2020),
        "split/time/train.csv.gz": order[:18, None], "split/time/valid.csv.gz": order[18:24, None],
        "split/time/test.csv.gz": order[24:, None],
    }
    for name, rows in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / name, "wt") as handle:
            handle.writelines(",".join(str(v) for v in row) + "\n" for row in np.asarray(rows))
    (folder / "mapping").mkdir()
    with gzip.open(folder / "mapping" / "labelidx2arxivcategeory.csv.gz", "wt") as handle:
        handle.write("label idx,arxiv category\n0,arxiv cs na\n1,arxiv cs mm\n2,arxiv cs lo\n")
    (folder / "RELEASE_v1.txt").write_text("ogbn-arxiv v1\n")
    return folder


def test_ogbn_arxiv_through_the_ogb_loader(tmp_path: Path) -> None:
    write_ogb_arxiv(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    data = load_dataset("ogbn-arxiv", tmp_path / "data", tmp_path / "cache")
    assert data.num_nodes == 30 and data.x.shape == (30, 8) and data.text is None
    assert data.class_names[:3] == ["cs.NA", "cs.MM", "cs.LO"]
    assert data.edge_index.size(1) == 60  # the ring, made undirected
    split = make_split(data, "public", 0)
    assert [int((split == k).sum()) for k in (0, 1, 2)] == [18, 6, 6]
    assert snapshot(tmp_path / "data") == before  # processed in the cache, never in the data folder
