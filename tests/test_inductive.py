"""Inductive prediction: nodes that were not in the graph when it was trained, answered without retraining."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch
from typer.testing import CliRunner

from dre_pipeline.cli import app
from dre_pipeline.data import load_dataset
from dre_pipeline.data.extend import extend, read_new_nodes
from dre_pipeline.errors import InputError
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.pipeline.stages.finetune import workspace

SETTINGS = dict(epochs=20, patience=20, ft_epochs=1, batch_size=16, lora_layers=1)
HELD_OUT = 30


def write_tables(folder, data, rows, edges, label=True, text=True, features=True):
    """``rows`` of the synthetic graph ``data`` as nodes.csv, ``edges`` (pairs of node ids) as edges.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {"node_id": data.node_ids[rows]}
    if label:
        columns["label"] = [data.class_names[int(data.y[i])] for i in rows]
    if text:
        columns["text"] = [data.text[i] for i in rows]
    if features:
        columns.update({f"f{j}": data.x[rows, j].numpy() for j in range(data.x.size(1))})
    pacsv.write_csv(pa.table(columns), folder / "nodes.csv")
    pacsv.write_csv(pa.table({"src": edges[:, 0], "dst": edges[:, 1]}), folder / "edges.csv")
    return folder


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, tiny_llm):
    """The synthetic graph without its last 30 nodes, fitted; those nodes and their edges as new-node tables."""
    root = tmp_path_factory.mktemp("inductive")
    data = load_dataset("synthetic", None, root / "cache")
    kept, new = np.arange(data.num_nodes - HELD_OUT), np.arange(data.num_nodes - HELD_OUT, data.num_nodes)
    pairs = data.edge_index.t().numpy()
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    touches = (pairs >= kept.size).any(1)
    graph = write_tables(root / "graph", data, kept, pairs[~touches])
    tables = write_tables(root / "new", data, new, pairs[touches])
    store = Store(root / "store")
    cfg = FinetuneConfig(llm_path=str(tiny_llm), dataset=str(graph), **SETTINGS)
    commands.finetune(cfg, store, quiet=True, device="cpu")
    return cfg, store, data, tables


def test_new_nodes_are_answered_with_the_codes_of_the_gnn_on_the_extended_graph(held_out):
    cfg, store, full, tables = held_out
    rows = commands.predict(cfg, store, None, "cpu", True, (tables / "nodes.csv", tables / "edges.csv"))
    assert [r["node_id"] for r in rows] == full.node_ids[-HELD_OUT:].tolist()
    assert {r["split"] for r in rows} == {"new"}
    assert all(r["prediction"] in full.class_names and r["label"] == full.class_names[int(full.y[r["node_id"]])]
               for r in rows)
    assert all(r["correct"] == (r["prediction"] == r["label"]) for r in rows)
    # the words read are those of the trained GNN run over the graph with the new nodes added back: the full graph
    ws = commands.workspace(cfg, store, quiet=True, cached_only=True, device="cpu")
    extended = extend(ws.data, read_new_nodes(tables / "nodes.csv", tables / "edges.csv", ws.data))
    assert sorted(map(tuple, extended.edge_index.t().tolist())) == sorted(map(tuple, full.edge_index.t().tolist()))
    codes, _, _ = workspace.stage_one_model(ws).inference(extended.x, extended.edge_index)
    words = [[[ws.codebook.words[c] for c in view] for view in node] for node in codes[-HELD_OUT:].tolist()]
    assert [r["words"] for r in rows] == words


def test_the_graphs_own_nodes_keep_their_codes_unless_recoded(held_out):
    cfg, store, full, tables = held_out
    new = (tables / "nodes.csv", tables / "edges.csv")
    neighbours = sorted({int(v) for u, v in full.edge_index.t().tolist() if u >= full.num_nodes - HELD_OUT
                         and v < full.num_nodes - HELD_OUT})[:4]
    before = commands.predict(cfg, store, neighbours, "cpu", True)
    kept = commands.predict(cfg, store, neighbours, "cpu", True, new)
    recoded = commands.predict(cfg, store, neighbours, "cpu", True, new, recode=True)
    assert [r["words"] for r in kept] == [r["words"] for r in before]
    assert [r["scores"] for r in kept] == [r["scores"] for r in before]
    assert [r["words"] for r in recoded] != [r["words"] for r in before]  # their neighbourhoods grew


def test_a_new_node_without_edges_reads_its_own_features_alone(held_out, tmp_path):
    cfg, store, full, tables = held_out
    lonely = write_tables(tmp_path, full, np.array([full.num_nodes - 1]), np.zeros((0, 2), dtype=np.int64))
    row, = commands.predict(cfg, store, None, "cpu", True, (lonely / "nodes.csv", lonely / "edges.csv"))
    ws = commands.workspace(cfg, store, quiet=True, cached_only=True, device="cpu")
    x = read_new_nodes(lonely / "nodes.csv", lonely / "edges.csv", ws.data).x
    alone, _, _ = workspace.stage_one_model(ws).inference(x, torch.empty(2, 0, dtype=torch.long))
    assert row["words"] == [[ws.codebook.words[c] for c in view] for view in alone[0].tolist()]


def test_new_nodes_via_the_cli(held_out):
    cfg, store, full, tables = held_out
    result = CliRunner().invoke(app, ["predict", "--llm-path", cfg.llm_path, "--dataset", cfg.dataset,
                                      *sum((["--" + k.replace("_", "-"), str(v)] for k, v in SETTINGS.items()), []),
                                      "--store", str(store.root), "--quiet", "--device", "cpu", "--format", "json",
                                      "--new-nodes", str(tables / "nodes.csv"), "--new-edges", str(tables / "edges.csv"),
                                      "--node-ids", f"{full.num_nodes - 1},0"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["node_id"] for r in rows] == [full.num_nodes - 1, 0] and [r["split"] for r in rows][0] == "new"


def bad_tables(tmp, full, case):
    last = full.num_nodes - 1
    if case == "unknown edge":
        return write_tables(tmp, full, np.array([last]), np.array([[last, 10**6]]))
    if case == "no text":
        return write_tables(tmp, full, np.array([last]), np.array([[last, 0]]), text=False)
    if case == "no features":
        return write_tables(tmp, full, np.array([last]), np.array([[last, 0]]), features=False)
    if case == "existing id":
        return write_tables(tmp, full, np.array([0]), np.array([[0, 1]]))
    raise AssertionError(case)


@pytest.mark.parametrize("case, message", [
    ("unknown edge", "names node_id 1000000, which is neither a node of graph nor a new node"),
    ("no text", "has no text column, and graph is a graph with text"),
    ("no features", "graph's nodes have 64 features, the new ones 0"),
    ("existing id", "node_id 0 is already a node of graph"),
])
def test_bad_new_nodes_are_one_line_and_write_nothing(held_out, tmp_path, case, message):
    cfg, store, full, _ = held_out
    tables = bad_tables(tmp_path / "new", full, case)
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    result = CliRunner().invoke(app, ["predict", "--llm-path", cfg.llm_path, "--dataset", cfg.dataset,
                                      *sum((["--" + k.replace("_", "-"), str(v)] for k, v in SETTINGS.items()), []),
                                      "--store", str(store.root), "--quiet", "--device", "cpu",
                                      "--new-nodes", str(tables / "nodes.csv"), "--new-edges", str(tables / "edges.csv")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before


def test_new_nodes_need_both_tables(held_out):
    cfg, store, _, tables = held_out
    result = CliRunner().invoke(app, ["predict", "--llm-path", cfg.llm_path, "--dataset", cfg.dataset,
                                      "--store", str(store.root), "--quiet", "--new-nodes", str(tables / "nodes.csv")])
    assert result.exit_code == 2 and "give --new-nodes and --new-edges together" in result.stderr


def test_labels_of_new_nodes_must_be_classes_of_the_graph(held_out, tmp_path):
    cfg, store, full, _ = held_out
    tables = write_tables(tmp_path, full, np.array([full.num_nodes - 1]), np.array([[full.num_nodes - 1, 0]]))
    nodes = pacsv.read_csv(tables / "nodes.csv")
    pacsv.write_csv(nodes.set_column(1, "label", pa.array(["astrology"])), tables / "nodes.csv")
    ws = commands.workspace(cfg, store, quiet=True, cached_only=True, device="cpu")
    with pytest.raises(InputError, match="label 'astrology' is not a class of graph"):
        read_new_nodes(tables / "nodes.csv", tables / "edges.csv", ws.data)


def test_on_text_features_new_nodes_take_the_graphs_bag_of_words(held_out, tiny_llm):
    cfg, store, full, tables = held_out
    bow = FinetuneConfig(llm_path=cfg.llm_path, dataset=cfg.dataset, features="bow", **SETTINGS)
    commands.finetune(bow, store, quiet=True, device="cpu")
    rows = commands.predict(bow, store, None, "cpu", True, (tables / "nodes.csv", tables / "edges.csv"))
    ws = commands.workspace(bow, store, quiet=True, cached_only=True, device="cpu")
    from sklearn.feature_extraction.text import CountVectorizer

    vocabulary = CountVectorizer(binary=True, stop_words="english", max_features=1433).fit(ws.data.text)
    x = torch.from_numpy(vocabulary.transform(full.text[-HELD_OUT:]).toarray().astype("float32"))
    extended = extend(ws.data, read_new_nodes(tables / "nodes.csv", tables / "edges.csv", ws.data), x)
    codes, _, _ = workspace.stage_one_model(ws).inference(extended.x, extended.edge_index)
    assert [r["words"] for r in rows] == [[[ws.codebook.words[c] for c in view] for view in node]
                                          for node in codes[-HELD_OUT:].tolist()]
