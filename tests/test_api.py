"""The Python API: fit on a PyG Data, predict (new nodes too), save a bundle and answer with it on a fresh store."""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from dre_pipeline import DrE, load_pyg
from dre_pipeline.cli import app
from dre_pipeline.data.pyg import from_pyg, to_pyg
from dre_pipeline.data import load_dataset
from dre_pipeline.errors import InputError
from dre_pipeline.pipeline.llm import build_tiny_llama

FAST = dict(epochs=20, patience=20, ft_epochs=1, batch_size=16, lora_layers=1)
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_llm):
    root = tmp_path_factory.mktemp("api")
    data = to_pyg(load_dataset("synthetic", None, root / "cache"))
    model = DrE(store=root / "store", device="cpu", quiet=True, llm_path=str(tiny_llm), **FAST).fit(data)
    return model, data, root


def test_fit_on_a_pyg_data_predicts_its_nodes_and_a_second_fit_is_a_cache_hit(fitted, tiny_llm):
    model, data, root = fitted
    answers = model.predict("test")
    assert len(answers.rows) == 60 and {r["split"] for r in answers.rows} == {"test"}  # 20 % of 300
    assert answers.accuracy == pytest.approx(model.artifact.manifest["test_accuracy"])
    assert answers.scores.shape == (60, data.y.max().item() + 1)
    assert answers.table.num_rows == 60 and answers.predicted.tolist() == answers.scores.argmax(1).tolist()
    again = DrE(store=root / "store", device="cpu", quiet=True, llm_path=str(tiny_llm), **FAST).fit(data)
    assert again.artifact.cached and again.artifact.key == model.artifact.key


def test_a_data_with_masks_is_split_by_them(tmp_path, tiny_llm):
    data = to_pyg(load_dataset("synthetic", None, tmp_path / "cache"))
    data.train_mask = torch.arange(300) < 100
    data.val_mask = (torch.arange(300) >= 100) & (torch.arange(300) < 150)
    data.test_mask = torch.arange(300) >= 150
    graph = from_pyg(data)
    assert (graph.public_split == 0).sum() == 100 and (graph.public_split == 2).sum() == 150
    model = DrE(store=tmp_path / "store", device="cpu", quiet=True, llm_path=str(tiny_llm), **FAST)
    answers = model.fit(data).predict(data.test_mask)
    assert [r["node_id"] for r in answers.rows] == list(range(150, 300)) and {r["split"] for r in answers.rows} == {"test"}


def test_from_pyg_refuses_what_it_cannot_read(tmp_path):
    data = to_pyg(load_dataset("synthetic", None, tmp_path / "cache"))
    with pytest.raises(InputError, match="3 texts for 300 nodes"):
        from_pyg(data, text=["a", "b", "c"])
    data.x, data.text, data.num_nodes = None, None, 300
    with pytest.raises(InputError, match="neither features \\(x\\) nor text"):
        from_pyg(data)


def test_a_saved_bundle_answers_on_a_fresh_store_with_the_same_scores(fitted, tmp_path, tiny_llm):
    model, data, _ = fitted
    path = model.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == ["adapter", "codebook.json", "manifest.json", "settings.json",
                                                      "stage_one.safetensors"]
    assert all(p.suffix in (".json", ".safetensors") for p in path.rglob("*") if p.is_file())
    loaded = DrE.load(path, llm_path=str(tiny_llm), store=tmp_path / "fresh", device="cpu", quiet=True).on(data)
    assert [r["scores"] for r in loaded.predict("test").rows] == [r["scores"] for r in model.predict("test").rows]
    assert not (tmp_path / "fresh" / "encode").exists()  # answered without training stage one


def test_a_bundle_refuses_another_llm_and_damage(fitted, tmp_path):
    model, data, _ = fitted
    path = model.save(tmp_path / "bundle")
    other = build_tiny_llama(tmp_path / "other", width=48)  # another model (a folder is known by its config and files)
    with pytest.raises(InputError, match="was trained on .*, not on other"):
        DrE.load(path, llm_path=str(other), store=tmp_path / "fresh", device="cpu", quiet=True).on(data).predict([0])
    (path / "codebook.json").write_text((path / "codebook.json").read_text().replace("[", "[ ", 1))
    with pytest.raises(InputError, match="codebook.json not as the manifest lists"):
        DrE.load(path, store=tmp_path / "fresh")
    with pytest.raises(InputError, match="exists: export into a new folder"):
        model.save(path)


def test_export_and_predict_model_on_the_command_line(tmp_path, tiny_llm, smollm2_store):
    store, bundle = tmp_path / "store", tmp_path / "bundle"
    options = ["--llm-path", str(tiny_llm), "--dataset", "synthetic", "--device", "cpu", "--quiet",
               *sum((["--" + k.replace("_", "-"), str(v)] for k, v in FAST.items()), [])]
    runner = CliRunner()
    assert runner.invoke(app, ["finetune", *options, "--store", str(store)]).exit_code == 0
    exported = runner.invoke(app, ["export", str(bundle), *options, "--store", str(store)])
    assert exported.exit_code == 0, exported.output
    from_store = runner.invoke(app, ["predict", *options, "--store", str(store), "--node-ids", "0,5", "--format", "json"])
    with_model = runner.invoke(app, ["predict", "--model", str(bundle), "--llm-path", str(tiny_llm), "--device", "cpu",
                                     "--quiet", "--store", str(tmp_path / "fresh"), "--node-ids", "0,5",
                                     "--format", "json"])  # the bundle's own dataset and settings
    assert with_model.exit_code == 0, with_model.output
    assert json.loads(with_model.stdout) == json.loads(from_store.stdout)
    # --out: every node's answer into Parquet, chunk by chunk, the screen one line
    out = tmp_path / "answers.parquet"
    written = runner.invoke(app, ["predict", *options, "--store", str(store), "--out", str(out)])
    assert written.exit_code == 0, written.output
    table = pq.read_table(out)
    assert table.num_rows == 300 and written.stdout.startswith(f"wrote 300 answers to {out}, ")
    shown = {row["node_id"]: row for row in json.loads(from_store.stdout)}
    assert [p for i, p in zip(table["node_id"].to_pylist(), table["prediction"].to_pylist()) if i in shown] == \
        [shown[0]["prediction"], shown[5]["prediction"]]
    for bad, says in ((["--out", str(tmp_path / "a.csv")], "name a .parquet file"),
                      (["--out", str(tmp_path / "b.parquet"), "--format", "json"], "give --out or --format")):
        refused = runner.invoke(app, ["predict", *options, "--store", str(store), *bad])
        assert refused.exit_code == 2 and says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["answers.parquet"]  # nothing half-written
    refused = runner.invoke(app, ["predict", "--model", str(bundle), "--store", str(smollm2_store.root),
                                  "--node-ids", "0", "--quiet"])  # the embedded SmolLM2 is not the bundle's LLM
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "was trained on" in refused.stderr


def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch, tiny_llm, datasets_root):
    """The README's Python example, exactly as it is written, on the tiny model and a few epochs."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 15
    original = DrE.__init__

    def fast(self, store="artifacts", device="auto", quiet=False, **settings):
        original(self, store, "cpu", True, **{**settings, "llm_path": str(tiny_llm), **FAST, "epochs": 5})

    monkeypatch.setattr(DrE, "__init__", fast)
    monkeypatch.setenv("DRE_DATA_DIR", str(datasets_root / "planetoid"))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})
    assert (tmp_path / "cora-text-dre" / "manifest.json").is_file()
