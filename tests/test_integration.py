"""The embedded SmolLM2-135M on real data: Cora's codebook and encode, as `make all` runs them; Cora-ML end to end."""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dre_pipeline.cli import app
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.data.npz import _npz_csr
from dre_pipeline.pipeline.llm import resolve_llm
from dre_pipeline.pipeline import commands

from conftest import csr_arrays

pytestmark = pytest.mark.integration


def test_gguf_is_dequantized_once(smollm2_store):
    started = time.time()
    llm = resolve_llm(None, smollm2_store)
    assert time.time() - started < 5  # the session fixture converted it; this is a cache hit
    assert (llm.folder / "model.safetensors").is_file() and llm.name.endswith(".gguf")


def test_codebook_and_encode_on_cora(smollm2_store, datasets_root):
    cfg = EncodeConfig(dataset="cora", data_dir=str(datasets_root / "planetoid"), epochs=4, patience=4)
    book = commands.codebook(cfg, smollm2_store)
    assert book.manifest["total"] == 49152 and book.manifest["dim"] == 576
    assert book.manifest["kept"] == cfg.max_codes

    artifact = commands.encode(cfg, smollm2_store, quiet=True)
    table = pq.read_table(artifact.path / "codes.parquet")
    assert table.num_rows == 2708
    assert table.column("split").to_pylist().count("train") == 1625
    words = [w for row in table["view1_words"].to_pylist() for w in row]
    assert all(w.isalpha() and len(w) >= 3 for w in words)
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and len(metrics["perplexity"]) == 3
    assert metrics["label_head_accuracy"]["train"] > 1 / 7  # it learned something in four epochs

    again = commands.encode(cfg, smollm2_store, quiet=True)
    assert again.cached and again.path == artifact.path


def cora_ml_subgraph(source: Path, target: Path, per_class: int = 30) -> Path:
    """Real Cora-ML papers, a breadth-first neighbourhood around one paper per class, as a sparse npz.

    The words, links, labels and class names are the shared file's; only the node count is cut, so
    the whole chain runs in CI time. The other key spelling (``adj_data``, ...) is tested in test_data.
    """
    archive = np.load(source, allow_pickle=True)
    adjacency, labels = _npz_csr(archive, "adj", source), archive["labels"]
    undirected = (adjacency + adjacency.T).tocsr()
    chosen: list[int] = []
    for label in range(labels.max() + 1):
        queue, taken = [int(np.flatnonzero(labels == label)[0])], 0
        while queue and taken < per_class:
            node = queue.pop(0)
            if node not in chosen:
                chosen.append(node)
                taken += 1
                queue.extend(undirected.indices[undirected.indptr[node]:undirected.indptr[node + 1]].tolist())
    keep = np.array(sorted(chosen))
    arrays = {"labels": labels[keep], "node_names": archive["node_names"][keep],
              "attr_names": archive["attr_names"], "class_names": archive["class_names"]}
    for prefix, matrix in (("adj", adjacency[keep][:, keep]), ("attr", _npz_csr(archive, "attr", source)[keep])):
        arrays.update(csr_arrays(prefix, matrix))
    np.savez(target, **arrays)
    return target


def test_finetune_on_real_cora_ml_text_through_the_cli(smollm2_store, datasets_root, tmp_path):
    """`dre-pipeline finetune --dataset x.npz` with the embedded SmolLM2: the paper's words in the prompt."""
    graph = cora_ml_subgraph(datasets_root / "npz" / "cora_ml.npz", tmp_path / "cora_ml_part.npz")
    result = CliRunner().invoke(app, ["finetune", "--dataset", str(graph), "--epochs", "3", "--patience", "3",
                                      "--ft-epochs", "1", "--store", str(smollm2_store.root), "--quiet"])
    assert result.exit_code == 0, result.output

    artifact = next(path.parent for path in (smollm2_store.root / "finetune").glob("*/manifest.json")
                    if json.loads(path.read_text())["dataset"] == "cora_ml_part")
    predictions = pq.read_table(artifact / "predictions.parquet").to_pydict()
    names = ["Case-Based", "Theory", "Genetic Algorithms", "Probabilistic Methods", "Neural Networks",
             "Rule Learning", "Reinforcement Learning"]
    assert set(predictions["split"]) == {"val", "test"} and len(predictions["split"]) == 84  # 40 % of 7 * 30
    assert set(predictions["prediction_name"]) <= set(names)
    prompt = json.loads((artifact / "prompt.json").read_text())
    assert "then by its own text" in prompt["instruction"] and all(n in prompt["instruction"] for n in names)
    final = json.loads((artifact / "metrics.json").read_text())["final"]
    assert final["test"]["accuracy"] > 1 / 7  # one epoch on 126 training papers reads past chance


def cora_text_part(source: Path, target: Path, per_class: int = 20) -> Path:
    """Real Cora-text papers (title and abstract), a breadth-first neighbourhood around one paper per class,
    written back as the node tables users hold, with the ids as names ("paper-17")."""
    with open(source / "nodes.csv", newline="", encoding="utf-8") as handle:
        nodes = list(csv.DictReader(handle))
    with open(source / "edges.csv", newline="", encoding="utf-8") as handle:
        edges = [(row["src"], row["dst"]) for row in csv.DictReader(handle)]
    neighbours: dict = {}
    for src, dst in edges:
        neighbours.setdefault(src, []).append(dst)
        neighbours.setdefault(dst, []).append(src)
    label = {row["node_id"]: row["label"] for row in nodes}
    chosen: list = []
    for name in sorted(set(label.values())):
        queue, taken = [next(n for n, lab in label.items() if lab == name)], 0
        while queue and taken < per_class:
            node = queue.pop(0)
            if node not in chosen:
                chosen.append(node)
                taken += 1
                queue.extend(neighbours.get(node, []))
    keep = set(chosen)
    target.mkdir()
    with open(target / "nodes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["node_id", "label", "text"])
        writer.writerows([f"paper-{row['node_id']}", row["label"], row["text"]] for row in nodes
                         if row["node_id"] in keep)
    with open(target / "edges.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["src", "dst"])
        writer.writerows((f"paper-{s}", f"paper-{d}") for s, d in edges if s in keep and d in keep)
    return target


def test_finetune_and_explain_on_real_cora_text_tables_through_the_cli(smollm2_store, datasets_root, tmp_path):
    """`dre-pipeline finetune --dataset folder/` on real titles and abstracts: sentence-encoder features,
    the title first in the prompt, then `explain` by the paper's name."""
    folder = cora_text_part(datasets_root / "text" / "cora", tmp_path / "cora_text_part")
    options = ["--dataset", str(folder), "--epochs", "3", "--patience", "3", "--ft-epochs", "1",
               "--max-text-tokens", "48", "--store", str(smollm2_store.root), "--quiet"]
    result = CliRunner().invoke(app, ["finetune", *options])
    assert result.exit_code == 0, result.output

    artifact = next(path.parent for path in (smollm2_store.root / "finetune").glob("*/manifest.json")
                    if json.loads(path.read_text())["dataset"] == "cora_text_part")
    predictions = pq.read_table(artifact / "predictions.parquet").to_pydict()
    assert len(predictions["split"]) == round(0.4 * 140) and predictions["node_id"][0].startswith("paper-")
    assert json.loads((artifact / "metrics.json").read_text())["final"]["test"]["accuracy"] > 1 / 7
    features = [json.loads(p.read_text()) for p in (smollm2_store.root / "features").glob("*/manifest.json")]
    assert any(m["dataset"] == "cora_text_part" and m["kind"] == "sbert" for m in features)  # text alone: sbert

    node = predictions["node_id"][0]
    shown = CliRunner().invoke(app, ["explain", node, *options])
    assert shown.exit_code == 0, shown.output
    assert f"node {node}" in shown.output and "\ntitle: " in shown.output and "\nabstract: " in shown.output
    assert "Its own text: Title: " in shown.output  # the prompt names the parts, the title first
