"""``clean``: it removes what interrupted runs leave and what no live run uses, and nothing else."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_reliability import dre, wait_for_checkpoint
from typer.testing import CliRunner

from dre_pipeline.pipeline.artifacts import Store, damaged_files
from dre_pipeline.cli import app
from dre_pipeline.harness.status import inventory, status_text

STAGES = ("codebook", "encode", "finetune")
runner = CliRunner()


def clean(root, *args):
    result = runner.invoke(app, ["clean", "--store", str(root), "--quiet", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output  # no traceback
    return result


def written_store(root) -> Store:
    """A store with one small artifact per stage, written by a run that has ended."""
    store = Store(root)
    for stage in STAGES:
        with store.writing(stage, f"{stage}key", {}) as out:
            (out / "sub").mkdir()
            (out / "sub" / "data.bin").write_bytes(stage.encode())
    store.close()  # as the run's process ending would
    return store


def left_in(store: Store) -> list:
    """What is in the stage folders but their lock files."""
    return sorted(str(p.relative_to(store.root)) for stage in STAGES for p in (store.root / stage).iterdir()
                  if not p.name.startswith((".lock-", ".use-")))


def test_clean_removes_stale_checkpoint_files_with_the_artifacts(tmp_path):
    store = written_store(tmp_path)
    (tmp_path / "encode" / ".ckpt-encodekey.pt").write_bytes(b"what a killed run leaves")
    (tmp_path / "finetune" / ".ckpt-finetunekey.pt.4242.tmp").write_bytes(b"half a checkpoint")
    result = clean(tmp_path)
    assert result.exit_code == 0, result.output
    assert "removed 5 folders and files" in result.output and left_in(store) == []


def test_clean_removes_a_symlinked_artifact_as_the_link_and_keeps_its_target(tmp_path):
    store = written_store(tmp_path / "store")
    target = tmp_path / "elsewhere"
    (tmp_path / "store" / "encode" / "encodekey").rename(target)
    (tmp_path / "store" / "encode" / "encodekey").symlink_to(target, target_is_directory=True)
    result = clean(tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert left_in(store) == [] and (target / "sub" / "data.bin").read_bytes() == b"encode"


def test_clean_reports_what_it_cannot_remove_and_removes_the_rest(tmp_path, monkeypatch):
    store = written_store(tmp_path)
    stuck = tmp_path / "encode" / "encodekey"

    def rmtree(path, *args, **kwargs):
        if Path(path) == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        real_rmtree(path, *args, **kwargs)

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    result = clean(tmp_path)
    assert result.exit_code == 1 and result.stderr.strip() == f"error: cannot remove {stuck}: Permission denied"
    assert left_in(store) == ["encode/encodekey"] and "removed 2 folders and files" in result.stdout
    (half,) = store.list("encode")  # its manifest went last: what is left is damaged, never taken for intact
    assert damaged_files(half) == ["sub/data.bin is missing"]
    monkeypatch.undo()
    assert clean(tmp_path).exit_code == 0 and left_in(store) == []  # the next clean finishes it


def test_clean_keeps_what_a_live_run_uses_and_says_so(tmp_path):
    store = written_store(tmp_path)
    reader = Store(tmp_path)
    assert reader.lookup("codebook", "codebookkey", force=False) is not None  # a run reading it
    computing = Store(tmp_path)
    assert computing.lookup("encode", "newkey", force=False) is None  # a run computing this key
    computing.save_checkpoint("encode", "newkey", {"epoch": 1})

    for args in (["--dry-run"], []):
        result = clean(tmp_path, *args)
        assert result.exit_code == 0, result.output
        assert f"kept {tmp_path / 'codebook' / 'codebookkey'} " in result.output
        assert result.output.count(": in use by a live run") == 1
        assert ".ckpt-newkey.pt" not in result.output  # a live run's checkpoint is no leftover
    assert left_in(store) == ["codebook/codebookkey", "encode/.ckpt-newkey.pt"]
    assert [damaged_files(a) for a in store.list("codebook")] == [[]]
    assert "leftover" not in status_text(inventory(None, Store(tmp_path)), tmp_path)  # a live run's checkpoint

    reader.close()
    computing.close()  # both runs end
    assert clean(tmp_path).exit_code == 0 and left_in(store) == []


ENCODE = ["encode", "--dataset", "synthetic", "--epochs", "30", "--patience", "30", "--eval-epochs", "1", "--quiet"]
FINETUNE = ["--dataset", "synthetic", "--epochs", "5", "--patience", "5", "--ft-epochs", "10", "--ft-patience", "10",
            "--lora-layers", "1", "--quiet"]


@pytest.mark.parametrize("command, stage, built", [
    (ENCODE, "encode", ("codebook", "encode")),
    (["finetune", *FINETUNE], "finetune", STAGES),
])
def test_clean_20_times_during_a_live_run_takes_nothing_it_uses(tmp_path, tiny_llm, command, stage, built):
    run = dre(tmp_path, tiny_llm, *command, wait=False)
    try:
        wait_for_checkpoint(run, tmp_path / stage)  # the stages before it are done and in use
        kept = 0
        for _ in range(20):
            # Each clean finds the run frozen at some point of its work, and the run advances by 20 ms
            # between two cleans, however long a clean takes on this machine.
            run.send_signal(signal.SIGCONT)
            time.sleep(0.02)
            run.send_signal(signal.SIGSTOP)
            assert run.poll() is None, "the run ended before the cleans did: give it more epochs"
            result = clean(tmp_path)
            assert result.exit_code == 0, result.output
            kept += result.output.count(": in use by a live run")
        run.send_signal(signal.SIGCONT)
        _, stderr = run.communicate(timeout=300)
    finally:
        run.send_signal(signal.SIGCONT)
        run.kill()
    assert run.returncode == 0, stderr
    assert kept >= 20 * (len(built) - 1)  # each clean kept the finished stages the run was using
    artifacts = [a for s in built for a in Store(tmp_path).list(s)]
    assert [a.stage for a in artifacts] == list(built) and all(damaged_files(a) == [] for a in artifacts)
    same_store = ["--llm-path", str(tiny_llm), "--store", str(tmp_path)]
    if stage == "finetune":
        answered = runner.invoke(app, ["predict", *FINETUNE, "--node-ids", "0,1", "--device", "cpu", *same_store])
        assert answered.exit_code == 0 and len(answered.stdout.splitlines()) == 2, answered.output
    else:
        rerun = runner.invoke(app, [*ENCODE, "--no-quiet", *same_store])
        assert rerun.exit_code == 0 and "encode: cache hit" in rerun.stderr, rerun.output


def test_the_finetune_summary_survives_an_upstream_artifact_removed_by_hand(tmp_path):
    from dre_pipeline.harness.status import summary_table

    metrics = {"finetune": {"test": {"accuracy": 0.5, "macro_f1": 0.4}}}
    store = Store(tmp_path)
    with store.writing("finetune", "finetunekey", {"encode": "removedkey", "seconds": 2.0}) as out:
        (out / "metrics.json").write_text(json.dumps(metrics))
    table = summary_table(store, store.find("finetune", "finetunekey"))
    assert [line.split()[:2] for line in table.splitlines()[1:3]] == [["codebook", "no"], ["encode", "no"]]
    assert "Dr.E test accuracy 0.5000 (macro-F1 0.4000)" in table
