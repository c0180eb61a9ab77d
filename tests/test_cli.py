"""The command line through typer's runner: options from the configs, one-line errors."""

import pytest
from typer.testing import CliRunner

from dre_pipeline.cli import app

runner = CliRunner()


def invoke(*args, store=None):
    extra = ["--store", str(store)] if store is not None else []
    return runner.invoke(app, [*args, *extra, "--quiet"])


def test_help_lists_config_options_with_their_help():
    result = runner.invoke(app, ["encode", "--help"])
    assert result.exit_code == 0
    for option in ("--codes-per-view", "--num-views", "--inter-residual", "--dataset", "--llm-path", "--force"):
        assert option in result.output
    assert "--lora-r" in runner.invoke(app, ["finetune", "--help"]).output


@pytest.mark.parametrize("args, message", [
    (["codebook", "--llm-path", "/no/such/model"], "expected a Hugging Face model folder"),
    (["encode", "--split", "weird"], "--split must be"),
    (["encode", "--dataset", "no-such-dataset"], "dataset"),
    (["encode", "--features", "words"], "--features must be"),
    (["encode", "--lr", "-1"], "--lr must be positive, got -1"),
    (["encode", "--codes-per-view", "0"], "--codes-per-view must be at least 1"),
    (["encode", "--num-views", "0"], "--num-views must be at least 1"),
    (["encode", "--dropout", "1"], "--dropout must lie in [0, 1)"),
    (["encode", "--epochs", "0"], "--epochs must be at least 1"),
    (["finetune", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["finetune", "--llm-lr", "0"], "--llm-lr must be positive"),
    (["finetune", "--ft-epochs", "0"], "--ft-epochs must be at least 1"),
    (["finetune", "--lr-schedule", "step"], "--lr-schedule must be one of constant, linear, cosine"),
    (["finetune", "--ft-loss", "answer"], "--distill-weight trains on the class names"),
    (["encode", "--num-neighbors", "15,x"], "--num-neighbors takes comma-separated counts"),
    (["bench", "--seeds", "0"], "--seeds must be at least 1"),
    (["bench", "--speed", "--economy"], "--speed and --economy: one benchmark at a time"),
    (["predict", "--node-ids", " , "], "give --node-ids"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_llm, args, message):
    result = invoke(*args, "--llm-path", str(tiny_llm), store=tmp_path) if "--llm-path" not in args \
        else invoke(*args, store=tmp_path)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert "Traceback" not in result.output
    assert not any((tmp_path / "codebook").glob("[!.]*"))  # refused before any work


@pytest.mark.parametrize("args, env, message", [
    (["encode", "--seed", "4294967296"], {}, "--seed must lie in 0..2147483647, got 4294967296"),
    (["encode", "--min-chars", "1000"], {}, "token refinement keeps none of"),
    (["finetune", "--lora-targets", "nonexistent"], {}, "has no module named nonexistent; its linear layers are"),
    (["finetune", "--lora-targets", " , "], {}, "has no module named (none given)"),
    (["finetune", "--node-tokens", "none", "--no-use-text"], {}, "--node-tokens none prompts with the node's text alone"),
    (["encode"], {"DRE_CHECKPOINT_SECONDS": "soon"}, "$DRE_CHECKPOINT_SECONDS must be a number"),
    (["encode"], {"DRE_CHECKPOINT_SECONDS": "-5"}, "$DRE_CHECKPOINT_SECONDS must be a number"),
    (["finetune"], {"WORLD_SIZE": "two"}, "$WORLD_SIZE must be a whole number"),
    (["finetune", "--device", "meta"], {}, "--device must be auto, cpu or cuda[:N], got 'meta'"),
    (["finetune", "--device", "cuda:x"], {}, "--device must be auto, cpu or cuda[:N]"),
    (["finetune", "--device", "cuda:99"], {}, "--device cuda:99: "),
    (["report", "--device", "tpu"], {}, "--device must be auto, cpu or cuda[:N], got 'tpu'"),
])
def test_options_that_would_fail_after_the_work_are_refused_before_it(tmp_path, tiny_llm, args, env, message):
    """Each of these once passed the checks, built a codebook or trained stage one, then failed."""
    result = runner.invoke(app, [*args, "--dataset", "synthetic", "--epochs", "2", "--llm-path", str(tiny_llm),
                                 "--store", str(tmp_path), "--quiet"], env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    for stage in ("codebook", "encode", "finetune"):
        assert not any((tmp_path / stage).glob("[!.]*")), f"{stage} was written before the refusal"


def test_4bit_on_a_cpu_the_kernels_cannot_serve_stops_clearly(tmp_path, tiny_llm):
    result = invoke("finetune", "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--quantization", "4bit",
                    "--device", "cpu", store=tmp_path)
    assert result.exit_code == 2
    assert "multiples of 64" in result.output
    assert not any((tmp_path / "encode").glob("[!.]*"))  # refused before any work


def test_codebook_command_then_cache_hit(tmp_path, tiny_llm):
    first = invoke("codebook", "--llm-path", str(tiny_llm), "--max-codes", "300", store=tmp_path)
    assert first.exit_code == 0, first.output
    assert "kept 300/49152" in first.output
    second = invoke("codebook", "--llm-path", str(tiny_llm), "--max-codes", "300", store=tmp_path)
    assert second.output.splitlines()[-1] == first.output.splitlines()[-1]
    assert len(list((tmp_path / "codebook").glob("[!.]*"))) == 1  # one artifact (dot files: its lock)


def test_a_store_that_cannot_be_written_is_refused_first(tmp_path, tiny_llm):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke("codebook", "--llm-path", str(tiny_llm), store=blocker / "store")
    assert result.exit_code == 2 and "cannot be written" in result.output.splitlines()[-1]
    assert "Traceback" not in result.output


def test_preset_paper_fills_what_the_command_line_left_at_its_default(tmp_path, monkeypatch):
    from dre_pipeline.harness import report
    from dre_pipeline.pipeline.config import PRESETS

    seen = []
    monkeypatch.setattr(report, "write_report", lambda cfg, store, *args, **kwargs: seen.append(cfg) or tmp_path)
    assert invoke("report", "--preset", "paper", "--batch-size", "8", store=tmp_path).exit_code == 0
    cfg = seen[0]
    assert cfg.batch_size == 8  # given: wins over the preset
    assert all(getattr(cfg, k) == v for k, v in PRESETS["paper"].items() if k != "batch_size")
    assert invoke("report", store=tmp_path).exit_code == 0 and seen[1].quantization == "none"  # no preset
    result = invoke("report", "--preset", "fast", store=tmp_path)
    assert result.exit_code == 2 and "--preset must be one of none, paper" in result.output


def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_finished(tmp_path, tiny_llm, monkeypatch):
    """ENOSPC while a checkpoint is saved: one line, exit 2; the codebook finished before it stays intact."""
    import errno

    from dre_pipeline.pipeline.artifacts import Store, damaged_files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "encode" / ".ckpt.pt"))

    monkeypatch.setattr(Store, "save_checkpoint", full)
    result = runner.invoke(app, ["encode", "--dataset", "synthetic", "--epochs", "3", "--llm-path", str(tiny_llm),
                                 "--store", str(tmp_path), "--quiet"], env={"DRE_CHECKPOINT_SECONDS": "0"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing"), result.output
    (codebook,) = Store(tmp_path).list("codebook")
    assert damaged_files(codebook) == [] and not any((tmp_path / "encode").glob("[!.]*"))
