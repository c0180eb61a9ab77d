"""The node-table loader (nodes.csv + edges.csv, as users hold their graphs), on tables the tests
write and on the shared copy of Cora with its titles and abstracts (``cora-text``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dre_pipeline.data import load_dataset, make_split, split_titles, title_and_rest
from dre_pipeline.errors import InputError

CORA_TEXT_COUNTS = {"Rule Learning": 180, "Neural Networks": 818, "Case Based": 298, "Genetic Algorithms": 418,
                    "Theory": 351, "Reinforcement Learning": 217, "Probabilistic Methods": 426}


def write_tables(folder: Path, nodes: list, edges: list, node_header=("node_id", "label", "text"),
                 edge_header=("src", "dst")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, header, rows in (("nodes", node_header, nodes), ("edges", edge_header, edges)):
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return folder


PAPERS = [
    ("p-a", "Theory", 'Learning with "noise", revisited : We study, at length, a model.\nA second line.'),
    ("p-b", "Neural_Networks", "Deep nets : Layers, and more layers."),
    ("p-c", "Theory", "Bounds for boosting : Margins explain it."),
]


def test_string_ids_quoted_text_and_undirected_edges(tmp_path: Path) -> None:
    folder = write_tables(tmp_path / "papers", PAPERS, [("p-a", "p-b"), ("p-c", "p-b"), ("p-b", "p-a"),
                                                        ("p-c", "p-c")])
    data = load_dataset(str(folder), None, tmp_path / "cache")
    assert data.node_ids.tolist() == ["p-a", "p-b", "p-c"]
    assert data.class_names == ["Neural Networks", "Theory"] and data.y.tolist() == [1, 0, 1]
    # commas, quotes and a line break inside one quoted value survive
    assert data.text[0] == 'Learning with "noise", revisited : We study, at length, a model.\nA second line.'
    # a repeated link and a self-loop go; each link is there both ways
    assert set(zip(*data.edge_index.tolist())) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert data.x.shape == (3, 0) and not data.has_features  # text alone: --features makes them
    assert data.titles == ['Learning with "noise", revisited', "Deep nets", "Bounds for boosting"]
    assert title_and_rest(data, 0) == ('Learning with "noise", revisited', "We study, at length, a model.\nA second line.")


def test_title_and_abstract_columns_and_feature_columns(tmp_path: Path) -> None:
    rows = [(1, "a", "Title one", "Abstract one.", 0.5, 1), (2, "b", "Title two", "Abstract two.", 0.25, 0)]
    folder = write_tables(tmp_path / "t", rows, [(1, 2)],
                          node_header=("node_id", "label", "title", "abstract", "f0", "f1"))
    data = load_dataset(str(folder), None, tmp_path / "cache")
    assert data.node_ids.dtype == np.int64 and data.node_ids.tolist() == [1, 2]
    assert data.x.tolist() == [[0.5, 1.0], [0.25, 0.0]]
    assert data.titles == ["Title one", "Title two"]
    assert title_and_rest(data, 1) == ("Title two", "Abstract two.")
    assert data.text[0].startswith("Title one") and "Abstract one." in data.text[0]


def test_titles_are_split_only_where_the_table_follows_the_convention() -> None:
    # most texts carry " : ", so the others' first ": " or ". " ends their titles
    assert split_titles(["A title : the abstract.", "B title : b.", "Another: its abstract. More.",
                         "Third. Its text."]) is None  # half is not most
    assert split_titles(["A title : the abstract.", "B title : b.", "C : c.", "Another: its abstract. More.",
                         "Third. Its text."]) == ["A title", "B title", "C", "Another", "Third"]
    assert split_titles(["just some words, no title", "a product : cheap", "more words. And more."]) is None


@pytest.mark.parametrize("nodes, edges, message", [
    ([("a", "x", "t"), ("b", "y", "t")], [("a", "zz")], r"edges.csv row 1: dst names node_id 'zz'"),
    ([(0, "x", "t"), (1, "y", "t"), (2, "y", "t")], [(0, 1), (1, 7)], r"edges.csv row 2: dst names node_id 7"),
    ([(0, "x", "t"), (1, "", "t")], [(0, 1)], r"nodes.csv row 2: the label is empty"),
    ([(0, "x", "t"), (0, "y", "t")], [(0, 0)], r"nodes.csv row 2: node_id 0 repeats row 1"),
    ([("a", "x", "t"), ("", "y", "t")], [("a", "a")], r"nodes.csv row 2: column 'node_id' is empty"),
    ([(0, "x", 12), (1, "y", 3)], [(0, 1)], r"nodes.csv row 1: column 'text' must hold text, not int64"),
    ([(0, 1, "t"), (1, None, "t")], [(0, 1)], r"nodes.csv row 2: the label is missing"),
])
def test_malformed_tables_stop_with_one_line_naming_the_row(tmp_path: Path, nodes, edges, message) -> None:
    folder = write_tables(tmp_path / "bad", nodes, edges)
    with pytest.raises(InputError, match=message) as error:
        load_dataset(str(folder), None, tmp_path / "cache")
    assert "\n" not in str(error.value)


def test_unreadable_and_incomplete_tables(tmp_path: Path) -> None:
    folder = write_tables(tmp_path / "ragged", [(0, "x", "t")], [(0, 1)])
    (folder / "nodes.csv").write_text("node_id,label,text\n0,x,t,one too many\n")
    with pytest.raises(InputError, match="cannot read .*nodes.csv"):
        load_dataset(str(folder), None, tmp_path / "cache")
    (folder / "nodes.csv").write_text("node_id,text\n0,t\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) label"):
        load_dataset(str(folder), None, tmp_path / "cache")
    (folder / "nodes.csv").write_text("node_id,label,text\n0,x,t\n")
    (folder / "edges.csv").unlink()
    with pytest.raises(InputError, match="missing .*edges.csv"):
        load_dataset(str(folder), None, tmp_path / "cache")
    bare = write_tables(tmp_path / "bare", [(0, "x"), (1, "y")], [(0, 1)], node_header=("node_id", "label"))
    with pytest.raises(InputError, match="no features and no text"):
        load_dataset(str(bare), None, tmp_path / "cache")


def test_cora_text_from_the_shared_copy(datasets_root: Path, tmp_path: Path) -> None:
    data = load_dataset("cora-text", datasets_root / "planetoid", tmp_path)
    assert data.name == "cora-text" and data.num_nodes == 2708 and data.edge_index.size(1) == 2 * 5278
    counts = {name: int((data.y == c).sum()) for c, name in enumerate(data.class_names)}
    assert counts == CORA_TEXT_COUNTS
    assert data.class_names[int(data.y[0])] == "Rule Learning"  # not Planetoid's node order
    assert all(data.text) and not data.has_features
    title, abstract = title_and_rest(data, 0)
    assert title == "Stochastic pro-positionalization of non-determinate background knowledge"
    assert abstract.startswith("It is a well-known fact")
    assert sum(bool(t) for t in data.titles) > 0.99 * data.num_nodes
    assert (make_split(data, "random", 0) == 0).sum() == round(0.6 * 2708)


def test_the_prompt_carries_the_title_first_and_keeps_to_the_text_budget(tmp_path: Path, smollm2_tokenizer) -> None:
    from dre_pipeline.pipeline.stages.finetune.workspace import text_token_ids

    folder = write_tables(tmp_path / "papers", PAPERS, [("p-a", "p-b"), ("p-b", "p-c")])
    data = load_dataset(str(folder), None, tmp_path / "cache")
    whole = [smollm2_tokenizer.decode(ids) for ids in text_token_ids(smollm2_tokenizer, data, 10_000)]
    assert whole[1] == " Title: Deep nets. Abstract: Layers, and more layers."
    assert whole[0].startswith(' Title: Learning with "noise", revisited. Abstract: We study, at length')
    cut = text_token_ids(smollm2_tokenizer, data, 6)
    assert all(len(ids) <= 6 for ids in cut)
    full = text_token_ids(smollm2_tokenizer, data, 10_000)
    assert all(short == long[:6] for short, long in zip(cut, full))  # the budget cuts the end, never the title
    untitled = load_dataset(str(write_tables(tmp_path / "plain", [(0, "a", "some words"), (1, "b", "other words")],
                                             [(0, 1)])), None, tmp_path / "cache")
    assert untitled.titles is None
    assert smollm2_tokenizer.decode(text_token_ids(smollm2_tokenizer, untitled, 100)[0]) == " some words"
