"""explain, report, status and clean on a tiny synthetic run with a tiny random Llama."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.cli import app
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.harness.report import class_shares, explanation_text, write_report
from dre_pipeline.pipeline import commands

SETTINGS = dict(dataset="synthetic", max_codes=300, epochs=3, patience=3, ft_epochs=1, batch_size=32)
FIGURES = ("perplexity.png", "stage_one.png", "stage_two.png", "confusion.png", "words_per_view.png",
           "words_per_class.png")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llm):
    store = Store(tmp_path_factory.mktemp("store"))
    cfg = FinetuneConfig(llm_path=str(tiny_llm), **SETTINGS)
    return cfg, store, commands.finetune(cfg, store, quiet=True, device="cpu")


def cli(cfg, store, command, *args, **changed):
    """Invoke a command with the run's settings, some of them ``changed``."""
    options = []
    for name, value in {"llm_path": cfg.llm_path, **SETTINGS, **changed}.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    result = runner.invoke(app, [command, *args, *options, "--store", str(store.root), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_writes_the_page_and_every_figure(run, tmp_path):
    cfg, store, _ = run
    index = write_report(cfg, store, tmp_path / "report", explain_nodes=3, device="cpu", quiet=True)
    page = index.read_text()
    assert {p.name for p in index.parent.glob("*.png")} == set(FIGURES)
    for name in FIGURES:
        png = (index.parent / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024, name
        assert f"src='{name}'" in page
    assert "http://" not in page and "https://" not in page  # opens with no network
    assert page.count("<summary>show</summary>") == 3  # the explained nodes, each with its prompt
    assert "<th>1-hop words</th>" in page and "<th>text</th>" in page  # the synthetic graph has text


def test_explain_shows_words_prompt_and_scores(run):
    cfg, store, artifact = run
    row = commands.predict(cfg, store, [5], device="cpu", quiet=True)[0]
    assert [len(words) for words in row["words"]] == [cfg.codes_per_view] * cfg.num_views
    assert " ".join(row["words"][0]) in row["prompt"]
    assert list(row["scores"]) == artifact.manifest["class_names"]
    assert sum(class_shares(row["scores"]).values()) == pytest.approx(1)
    assert row["prediction"] == max(row["scores"], key=row["scores"].get)
    text = explanation_text(row)
    assert f"{cfg.num_views}-hop: " in text and row["prompt"] in text

    shown = cli(cfg, store, "explain", "5", device="cpu")
    assert shown.strip().endswith(row["prompt"].strip()) and f"label: {row['label']}" in shown
    assert json.loads(cli(cfg, store, "explain", "5", format="json", device="cpu")) == row


def store_cli(cfg, store, command, *args, **data_options):
    """``status`` or ``clean`` on the run's graph and LLM: they take those options, no training setting."""
    options = []
    for name, value in {"llm_path": cfg.llm_path, "dataset": cfg.dataset, **data_options}.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    result = runner.invoke(app, [command, *args, *options, "--store", str(store.root), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def test_status_marks_artifacts_stale_when_the_graph_they_were_built_from_changes(run):
    cfg, store, artifact = run
    same = store_cli(cfg, store, "status")
    assert artifact.key in same and same.count(" current ") == 3 and " stale " not in same
    changed = store_cli(cfg, store, "status", seed=1)  # the synthetic graph is drawn from its seed: another graph
    rows = {line.split()[0]: line for line in changed.splitlines() if line.split()[:1] in (["codebook"], ["encode"], ["finetune"])}
    assert " current " in rows["codebook"]  # the same LLM
    assert " stale " in rows["encode"] and " stale " in rows["finetune"]
    assert "built from other data: seed 0 → 1" in changed
    other = store_cli(cfg, store, "status", dataset="cora-ml", data_dir="/nonexistent")
    assert "these options:" in other and " ? " in other  # options that cannot be resolved: no verdict


def test_status_and_clean_take_no_training_setting(run):
    cfg, store, _ = run
    for command in (["status"], ["clean", "--dry-run"]):
        for option in ("--codes-per-view", "--lr", "--ft-epochs"):  # stage one's and stage two's settings
            result = runner.invoke(app, [*command, option, "2", "--store", str(store.root)])
            assert result.exit_code == 2 and f"No such option: {option}" in result.output, (command, option)


def test_an_artifact_whose_upstream_is_gone_is_stale(run, tmp_path):
    cfg, store, artifact = run
    copy = Store(shutil.copytree(store.root, tmp_path / "store"))
    shutil.rmtree(copy.root / "codebook")
    rows = {line.split()[0]: line for line in store_cli(cfg, copy, "status").splitlines()
            if line.split()[:1] in (["encode"], ["finetune"])}
    assert " stale " in rows["encode"] and " stale " in rows["finetune"]


def test_clean_dry_run_keeps_everything_and_clean_removes(run, tmp_path):
    cfg, store, _ = run
    copy = Store(shutil.copytree(store.root, tmp_path / "store"))
    dead = copy.root / "encode" / ".tmp-abc-999999999"  # an interrupted write whose process is gone
    live = copy.root / "encode" / f".tmp-def-{os.getpid()}"  # one still being written: never touched
    dead.mkdir()
    live.mkdir()
    before = sorted(p for p in copy.root.rglob("*"))

    listed = store_cli(cfg, copy, "clean", "--dry-run", "--stale-only", seed=1)
    assert sorted(p for p in copy.root.rglob("*")) == before
    assert "would remove 3 folders" in listed and str(dead) in listed and str(live) not in listed

    store_cli(cfg, copy, "clean", "--stale-only", seed=1)
    assert len(copy.list("codebook")) == 1 and not copy.list("encode") and not copy.list("finetune")
    assert not dead.exists() and live.exists()

    store_cli(cfg, copy, "clean")
    assert not copy.list("codebook")
