"""``--log-dir``: each training run's curves as TensorBoard scalars, one folder per run, in no key."""

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from conftest import TINY_RUN, artifact_times
from dre_pipeline.cli import app
from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.metrics_log import ScalarLog


runner = CliRunner()


def scalars(folder) -> dict:
    """tag -> [(step, value)] of every event file in ``folder``."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_each_stage_that_trains_writes_its_curves_in_a_folder_of_its_own(tiny_run):
    store, logs = tiny_run
    runs = {f"{a.stage}-{a.key}": a for stage in ("encode", "finetune") for a in Store(store).list(stage)}
    assert {p.name for p in logs.iterdir()} == set(runs)  # one folder per run, named by its artifact's key
    encode, = (scalars(logs / run) for run, a in runs.items() if a.stage == "encode")
    assert [step for step, _ in encode["encode/val_accuracy"]] == [1, 2]  # --epochs 2 --eval-epochs 1
    for tag in ("loss", "feature_loss", "adjacency_loss", "train_accuracy", "test_accuracy", "view3_perplexity"):
        assert len(encode[f"encode/{tag}"]) == 2, tag
    for run, artifact in runs.items():
        if artifact.stage == "finetune":
            phase = "joint" if artifact.manifest["joint"] else "finetune"
            curves = scalars(logs / run)
            assert {tag.split("/")[0] for tag in curves} == {phase}  # the joint pass under its own tags
            (last_step, _), = curves[f"{phase}/val_accuracy"]  # --ft-epochs 1 (--joint-epochs 1): one evaluation
            assert [step for step, _ in curves[f"{phase}/loss"]] == list(range(1, last_step + 1))  # every step


def test_log_dir_enters_no_key_and_a_cache_hit_writes_nothing(tiny_run, tmp_path, tiny_llm):
    store, _ = tiny_run
    before = artifact_times(store)
    for log_dir in ([], ["--log-dir", str(tmp_path / "logs")]):
        result = runner.invoke(app, ["finetune", *TINY_RUN, "--llm-path", str(tiny_llm), "--store", str(store), *log_dir])
        assert result.exit_code == 0, result.output
    assert artifact_times(store) == before  # the run under --log-dir found the same keys without it
    assert not (tmp_path / "logs").exists()


def test_without_tensorboard_log_dir_is_refused_before_any_work(tmp_path, tiny_llm, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it fails, as when missing
    result = runner.invoke(app, ["encode", "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--store",
                                 str(tmp_path / "store"), "--log-dir", str(tmp_path / "logs"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'dre-pipeline[tensorboard]'" in lines[0], result.output
    assert not any((tmp_path / "store").glob("*/[!.]*")) and not (tmp_path / "logs").exists()


def test_stage_two_logs_each_step_once_across_evaluations_and_a_resumed_run_appends(tmp_path):
    entry = lambda step: {"step": step, "train_loss": 0.5, "val_accuracy": step / 10, "val_macro_f1": 0.1}
    board = ScalarLog(tmp_path, "finetune-k")
    board.stage_two("finetune", entry(2), [1.0, 2.0])  # --eval-every 2 in an epoch of 3 steps
    board.stage_two("finetune", entry(3), [1.0, 2.0, 3.0])  # the epoch's end
    board.close()
    resumed = ScalarLog(tmp_path, "finetune-k")  # a killed run, resumed after that epoch
    resumed.stage_two("finetune", entry(5), [4.0, 5.0])
    resumed.close()
    curves = scalars(tmp_path / "finetune-k")
    assert curves["finetune/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]
    assert [step for step, _ in curves["finetune/val_accuracy"]] == [2, 3, 5]


def test_without_a_log_dir_or_off_the_main_process_nothing_is_written(tmp_path):
    for board in (ScalarLog(None, "encode-k"), ScalarLog(tmp_path, "encode-k", writes=False)):
        board.stage_one({"epoch": 1, "loss": 1.0, "accuracy": {"val": 0.5}, "perplexity": [2.0]})
        board.close()
    assert list(tmp_path.iterdir()) == []
