"""Run-time helpers: progress is shown everywhere a run is watched, and never where it is quiet; freed memory is
kept for reuse."""

import logging
import platform
import subprocess
import sys

import pytest

from dre_pipeline.pipeline.runtime import LoggedProgress, duration, progress


def test_progress_logs_lines_where_stderr_is_not_a_terminal(caplog):
    bar = progress(range(5), quiet=False, desc="encode epoch")  # pytest captures stderr: not a terminal
    assert isinstance(bar, LoggedProgress)
    bar.every = 0  # a line per item instead of one per 30 s
    with caplog.at_level(logging.INFO, logger="dre_pipeline"):
        for i in bar:
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[1].startswith("encode epoch: 2/5 (40%), ") and "ETA" in lines[1] and "elapsed" in lines[1]
    assert lines[1].endswith("loss 0.500")  # the postfix the second item set
    assert "it/s" in lines[-1] and "ETA 0:00" in lines[-1]


def test_progress_without_a_length_has_no_eta(caplog):
    bar = LoggedProgress((i for i in range(3)), "score", every=0)
    with caplog.at_level(logging.INFO, logger="dre_pipeline"):
        list(bar)
    assert caplog.records[-1].getMessage().startswith("score: 3, ") and "ETA" not in caplog.records[-1].getMessage()


def test_quiet_progress_is_silent(caplog):
    with caplog.at_level(logging.INFO, logger="dre_pipeline"):
        assert list(progress(range(3), quiet=True, desc="x")) == [0, 1, 2]
    assert not caplog.records


def test_duration_format():
    assert duration(5) == "0:05" and duration(125) == "2:05" and duration(3725) == "1:02:05"


def test_progress_in_a_notebook_is_a_tqdm_auto_bar(monkeypatch):
    import sys
    import types

    from tqdm.auto import tqdm

    class ZMQInteractiveShell:  # the Jupyter kernel's shell, as IPython names it
        pass

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    bar = progress(range(3), quiet=False, desc="encode epoch")
    assert isinstance(bar, tqdm) and not isinstance(bar, LoggedProgress) and list(bar) == [0, 1, 2]


PAGE_FAULTS_OF_FRESH_TEMPORARIES = """
import resource, sys, torch
from dre_pipeline.pipeline.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
a = torch.ones(21000, 576)  # 48 MB, above glibc's default mmap threshold: a stage-one step's [N, d]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):  # 60 fresh temporaries, written whole
    b = a * 2
    c = b + 1
    del b, c
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_kept_freed_memory_serves_later_temporaries_without_faulting_their_pages_in_again():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_FRESH_TEMPORARIES, mode], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    default_kept, default_faults = run("default")
    kept, kept_faults = run("keep")
    assert kept and not default_kept
    pages = 21000 * 576 * 4 // 4096
    assert default_faults > 50 * pages  # each one unmapped when freed and faulted in afresh: 60 x its pages
    assert kept_faults < 15 * pages  # measured 2-7 x: the heap grows a few times, then its blocks are reused
