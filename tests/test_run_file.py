"""Run files (``--config run.toml``): their precedence, their one-line refusals, and the artifact's own run.toml."""

import json
import shutil
import tomllib
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from conftest import TINY_RUN, artifact_times
from dre_pipeline.cli import app
from dre_pipeline.pipeline.artifacts import MANIFEST, Store, damaged_files
from dre_pipeline.pipeline.config import PRESETS, CodebookConfig, EncodeConfig, FinetuneConfig
from dre_pipeline.pipeline.run_file import toml_value, write

runner = CliRunner()
CONFIGS = {"codebook": CodebookConfig, "encode": EncodeConfig, "finetune": FinetuneConfig}


@pytest.fixture
def reported(tmp_path, monkeypatch):
    """``report``'s resolved settings and options, without the report: (invoke(args, run file text), calls)."""
    from dre_pipeline.harness import report

    calls = []
    monkeypatch.setattr(report, "write_report", lambda cfg, store, out, explain_nodes, **kw:
                        calls.append((cfg, explain_nodes)) or tmp_path)

    def invoke(args, text):
        (tmp_path / "run.toml").write_text(text)
        result = runner.invoke(app, ["report", "--config", str(tmp_path / "run.toml"), "--store", str(tmp_path),
                                     "--quiet", *args])
        assert result.exit_code == 0, result.output
        return calls[-1]

    return invoke


def test_defaults_then_preset_then_run_file_then_command_line(reported):
    cfg, explain_nodes = reported(["--preset", "paper", "--batch-size", "5", "--ft-epochs", "20"],
                                  'batch_size = 6\nllm-lr = 0.01\nft_epochs = 3\nmax-codes = 300\nexplain_nodes = 2\n')
    assert cfg.batch_size == 5  # command line over the file over the preset
    assert cfg.ft_epochs == 20  # given on the command line, at its default value: it still wins over the file
    assert cfg.llm_lr == 0.01 and cfg.max_codes == 300  # the file over the preset, in either spelling
    assert cfg.lora_layers == PRESETS["paper"]["lora_layers"]  # the preset over the default
    assert cfg.lora_r == FinetuneConfig.lora_r  # left to its default by all three
    assert explain_nodes == 2  # a command's own options, not only its config's


def test_a_run_file_may_name_the_preset(reported):
    cfg, _ = reported([], 'preset = "paper"\nbatch_size = 6\n')
    assert cfg.batch_size == 6 and cfg.quantization == PRESETS["paper"]["quantization"]


@pytest.mark.parametrize("command, text, message", [
    ("finetune", None, "no such file"),
    ("finetune", "lr = \n", "is not valid TOML"),
    ("finetune", "lora_rank = 4\n", "finetune has no option 'lora_rank' (did you mean lora_r?)"),
    ("codebook", "lora_r = 4\n", "codebook has no option 'lora_r'"),
    ("finetune", 'lr = "fast"\n', "lr must be a number, got 'fast'"),
    ("finetune", "epochs = 2.5\n", "epochs must be a whole number, got 2.5"),
    ("finetune", "joint = 1\n", "joint must be true or false, got 1"),
    ("finetune", "dataset = 3\n", "dataset must be a string, got 3"),
    ("finetune", "[finetune]\nlr = 0.1\n", "[finetune] is a section"),
    ("finetune", "max_codes = 1\nmax-codes = 2\n", "max_codes is given twice"),
    ("finetune", "lr = -1.0\n", "--lr must be positive, got -1.0"),  # the config's own check
    ("status", "store = 4\n", "store must be a path (a string), got 4"),
])
def test_bad_run_files_are_one_line_exit_2_and_write_nothing(tmp_path, command, text, message):
    path = tmp_path / "run.toml"
    if text is not None:
        path.write_text(text)
    result = runner.invoke(app, [command, "--config", str(path), "--store", str(tmp_path / "store"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (tmp_path / "store").exists()


def test_written_values_read_back_as_they_were(tmp_path):
    odd = 'a "quoted"\\ path\twith\x7f and é'
    assert tomllib.loads(f"v = {toml_value(odd)}")["v"] == odd
    cfg = FinetuneConfig(dataset=odd, lr=1e-05, llm_lr=0.5)
    write(tmp_path / "run.toml", cfg)
    read = tomllib.loads((tmp_path / "run.toml").read_text())
    assert FinetuneConfig(**read) == cfg and "llm_path" not in read  # None: left out


def test_each_artifact_keeps_every_setting_of_its_stage_in_its_checksums(tiny_run):
    store, _ = tiny_run
    found = {stage: Store(store).list(stage) for stage in CONFIGS}
    assert [len(found[stage]) for stage in CONFIGS] == [1, 1, 2]  # finetune: the plain run and the joint pass
    for stage, listed in found.items():
        for artifact in listed:
            assert "run.toml" in artifact.manifest["files"] and damaged_files(artifact) == []
            settings = tomllib.loads((artifact.path / "run.toml").read_text())
            assert set(settings) == {f.name for f in fields(CONFIGS[stage])} - {"data_dir"}  # None: left out
            assert {k: v for k, v in artifact.manifest["settings"].items() if v is not None}.items() <= settings.items()


@pytest.mark.parametrize("stage", list(CONFIGS))
def test_an_artifacts_run_file_repeats_its_run_as_a_cache_hit(tiny_run, stage):
    store, _ = tiny_run
    before = artifact_times(store)
    for artifact in Store(store).list(stage):
        result = runner.invoke(app, [stage, "--config", str(artifact.path / "run.toml"), "--store", str(store),
                                     "--quiet"])
        assert result.exit_code == 0, result.output
        assert str(artifact.path) in result.output.splitlines()[-1]
    assert artifact_times(store) == before  # nothing computed again


def test_a_store_written_before_run_files_still_serves(tiny_run, tmp_path, tiny_llm):
    """Artifacts without run.toml (and without it in their manifests), as older versions wrote them."""
    store = tmp_path / "old"
    shutil.copytree(tiny_run[0], store, ignore=shutil.ignore_patterns(".*"))
    for manifest in store.glob(f"*/*/{MANIFEST}"):
        (manifest.parent / "run.toml").unlink()
        payload = json.loads(manifest.read_text())
        del payload["files"]["run.toml"]
        manifest.write_text(json.dumps(payload))
    before = artifact_times(store)
    args = [*TINY_RUN, "--llm-path", str(tiny_llm), "--store", str(store)]
    assert runner.invoke(app, ["finetune", *args]).exit_code == 0
    status = runner.invoke(app, ["status", "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--store",
                                 str(store), "--quiet"])
    assert status.exit_code == 0 and "damaged" not in status.output, status.output
    assert runner.invoke(app, ["predict", *args, "--node-ids", "0,1"]).exit_code == 0
    assert artifact_times(store) == before
