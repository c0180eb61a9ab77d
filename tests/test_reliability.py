"""Faults: a run killed with SIGKILL resumes from its checkpoint and ends as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from dre_pipeline.pipeline.artifacts import Store

ENCODE = ["encode", "--dataset", "synthetic", "--epochs", "60", "--patience", "60", "--eval-epochs", "1", "--quiet"]


def dre(store, llm, *args, wait=True):
    command = [sys.executable, "-c", "from dre_pipeline.cli import main; main()", *args,
               "--llm-path", str(llm), "--store", str(store)]
    env = {**os.environ, "DRE_CHECKPOINT_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: subprocess.Popen, folder) -> None:
    """Until the running command has saved its first checkpoint under ``folder``."""
    deadline = time.time() + 300
    while not list(folder.glob(".ckpt-*.pt")):
        assert run.poll() is None and time.time() < deadline, run.stderr.read() if run.stderr else ""
        time.sleep(0.2)


def test_encode_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_llm):
    killed = dre(tmp_path / "killed", tiny_llm, *ENCODE, wait=False)
    wait_for_checkpoint(killed, tmp_path / "killed" / "encode")
    time.sleep(0.5)  # a few epochs past the first checkpoint
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    store = Store(tmp_path / "killed")
    assert store.list("encode") == []  # no half artifact
    resumed = dre(tmp_path / "killed", tiny_llm, *ENCODE, "--no-quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming an interrupted run after epoch" in resumed.stderr
    assert not list((tmp_path / "killed" / "encode").glob(".ckpt-*"))  # spent once the artifact exists

    whole = dre(tmp_path / "whole", tiny_llm, *ENCODE)
    assert whole.returncode == 0, whole.stderr
    (a,), (b,) = store.list("encode"), Store(tmp_path / "whole").list("encode")
    assert a.key == b.key
    assert pq.read_table(a.path / "codes.parquet").equals(pq.read_table(b.path / "codes.parquet"))
    assert a.manifest["label_head_accuracy"] == b.manifest["label_head_accuracy"]


FINETUNE = ["finetune", "--dataset", "synthetic", "--epochs", "5", "--patience", "5", "--ft-epochs", "6",
            "--ft-patience", "6", "--lora-layers", "1", "--quiet"]


def test_finetune_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_llm):
    killed = dre(tmp_path / "killed", tiny_llm, *FINETUNE, wait=False)
    wait_for_checkpoint(killed, tmp_path / "killed" / "finetune")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert Store(tmp_path / "killed").list("finetune") == []
    resumed = dre(tmp_path / "killed", tiny_llm, *FINETUNE, "--no-quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "finetune: resuming an interrupted run after epoch" in resumed.stderr

    whole = dre(tmp_path / "whole", tiny_llm, *FINETUNE)
    assert whole.returncode == 0, whole.stderr
    (a,), (b,) = Store(tmp_path / "killed").list("finetune"), Store(tmp_path / "whole").list("finetune")
    assert pq.read_table(a.path / "predictions.parquet").equals(pq.read_table(b.path / "predictions.parquet"))


# Long enough that no machine finishes it before the signal: the tests stop it at a checkpoint they wait for.
ENDLESS = ["encode", "--dataset", "synthetic", "--epochs", "100000", "--patience", "100000", "--eval-epochs", "1"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_with_one_line_and_the_rerun_resumes(tmp_path, tiny_llm, signum, code):
    run = dre(tmp_path, tiny_llm, *ENDLESS, "--quiet", wait=False)
    wait_for_checkpoint(run, tmp_path / "encode")
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=300)  # a loaded machine may take a while to unwind
    assert run.returncode == code and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: finished artifacts are kept")
    assert Store(tmp_path).list("encode") == []  # no half artifact
    rerun = dre(tmp_path, tiny_llm, *ENDLESS, wait=False)
    deadline = threading.Timer(300, rerun.kill)  # a rerun that never says it resumes ends the read, not the suite
    deadline.start()
    try:
        assert any("resuming an interrupted run after epoch" in line for line in rerun.stderr)
    finally:
        deadline.cancel()
        rerun.kill()
        rerun.wait()
