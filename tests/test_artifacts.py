"""The artifact store: atomic writes, cache hits, --force, damage, a full disk, locks."""

import errno
import os
import re
import signal
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from dre_pipeline.pipeline.artifacts import Artifact, Store, damaged_files, digest
from dre_pipeline.cli import app
from dre_pipeline.errors import InputError


def test_digest_is_stable_and_order_free():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_write_then_hit(tmp_path):
    store = Store(tmp_path)
    assert store.lookup("stage", "k1", force=False) is None
    with store.writing("stage", "k1", {"n": 1}) as out:
        (out / "data.txt").write_text("x")
    found = store.lookup("stage", "k1", force=False)
    assert found.cached and found.manifest["n"] == 1 and found.file("data.txt").read_text() == "x"
    assert store.lookup("stage", "k1", force=True) is None


def test_a_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        with store.writing("stage", "k1", {}) as out:
            (out / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert store.find("stage", "k1") is None
    assert [p.name for p in (tmp_path / "stage").iterdir()] == [".use-k1"]  # the key's lock, nothing written


def test_force_replaces_only_when_complete(tmp_path):
    store = Store(tmp_path)
    with store.writing("stage", "k1", {"version": 1}):
        pass
    with pytest.raises(RuntimeError, match="killed"):
        with store.writing("stage", "k1", {"version": 2}):
            raise RuntimeError("killed")
    assert store.find("stage", "k1").manifest["version"] == 1
    with store.writing("stage", "k1", {"version": 2}):
        pass
    assert store.find("stage", "k1").manifest["version"] == 2


def test_cached_only_miss_is_a_user_error(tmp_path):
    with pytest.raises(InputError, match="run `dre-pipeline encode` first"):
        Store(tmp_path).lookup("encode", "nope", force=False, cached_only=True)


@pytest.mark.parametrize("harm, problem", [
    (lambda path: path.write_bytes(path.read_bytes()[:-3]), "has 7 bytes, not 10"),  # truncated
    (lambda path: path.write_bytes(b"0123456789"[::-1]), "has changed"),  # altered, same size
    (lambda path: path.unlink(), "is missing"),
])
def test_a_damaged_artifact_is_detected_and_never_used(tmp_path, caplog, harm, problem):
    from dre_pipeline.harness.status import inventory, status_text

    store = Store(tmp_path)
    with store.writing("codebook", "k1", {"kept": 1, "total": 2}) as out:
        (out / "sub").mkdir()
        (out / "sub" / "codes.bin").write_bytes(b"0123456789")
    artifact = store.find("codebook", "k1")
    assert artifact.manifest["files"]["sub/codes.bin"]["size"] == 10 and damaged_files(artifact) == []
    harm(artifact.path / "sub" / "codes.bin")
    assert any(problem in line for line in damaged_files(artifact))
    assert store.lookup("codebook", "k1", force=False) is None  # rebuilt, not used
    assert "damaged" in caplog.text
    with pytest.raises(InputError, match="run `dre-pipeline codebook` first"):
        store.lookup("codebook", "k1", force=False, cached_only=True)
    assert f"damaged: sub/codes.bin {problem}" in status_text(inventory(None, store), tmp_path)


def _compute_once(root: str, log_file: str) -> None:
    """What a stage does: look up, else compute (slowly) and write; counts its computations."""
    import time

    store = Store(root)
    if store.lookup("encode", "shared", force=False) is None:
        with open(log_file, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        with store.writing("encode", "shared", {}) as out:
            (out / "codes.bin").write_bytes(b"codes")


def test_two_runs_on_one_store_compute_a_key_once(tmp_path):
    from multiprocessing import get_context

    context = get_context("spawn")
    runs = [context.Process(target=_compute_once, args=(str(tmp_path), str(tmp_path / "log"))) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert [run.exitcode for run in runs] == [0, 0]
    assert (tmp_path / "log").read_text() == "computed\n"  # the second run waited, then reused it
    assert Store(tmp_path).find("encode", "shared").file("codes.bin").read_bytes() == b"codes"


def test_an_option_at_its_neutral_value_leaves_cache_keys_as_they_were():
    from dre_pipeline.pipeline.config import CodebookConfig, EncodeConfig, key_fields

    # the values that reproduce what was computed before these options existed stay out of the keys
    assert not {"whole_words", "drop_function_words"} & set(
        key_fields(CodebookConfig(whole_words=False, drop_function_words=False)))
    assert "features" not in key_fields(EncodeConfig())
    assert key_fields(CodebookConfig())["whole_words"] is True
    assert key_fields(EncodeConfig(features="llm"))["features"] == "llm"


def _codebook_artifact(store: Store) -> Artifact:
    with store.writing("codebook", "k1", {"kept": 1, "total": 2}) as out:
        (out / "codes.bin").write_bytes(b"0123456789")
    return store.find("codebook", "k1")


@pytest.mark.parametrize("manifest", [
    b"{ not json",
    b"\xff\xfe not utf-8",
    b"[1, 2]",  # JSON, but not an object
    b'{"kept": 1, "total": 2}',  # no files
    b'{"files": {"codes.bin": 10}}',  # files without their sizes and checksums
])
def test_a_manifest_that_cannot_be_read_makes_the_artifact_damaged(tmp_path, caplog, tiny_llm, manifest):

    store = Store(tmp_path)
    _codebook_artifact(store).file("manifest.json").write_bytes(manifest)
    found = Store(tmp_path).find("codebook", "k1")
    assert found.manifest == {} and damaged_files(found)[0].startswith("manifest.json ")
    assert Store(tmp_path).lookup("codebook", "k1", force=False) is None and "damaged" in caplog.text  # rebuilt
    with pytest.raises(InputError, match="run `dre-pipeline codebook` first"):
        Store(tmp_path).lookup("codebook", "k1", force=False, cached_only=True)
    status = CliRunner().invoke(app, ["status", "--llm-path", str(tiny_llm), "--dataset", "synthetic",
                                      "--store", str(tmp_path), "--quiet"])
    assert status.exit_code == 0 and "Traceback" not in status.output
    row = next(line for line in status.output.splitlines() if line.startswith("codebook"))
    assert " damaged " in row and "damaged: manifest.json" in status.output
    assert damaged_files(_codebook_artifact(store)) == []  # a rebuild writes over it


@pytest.mark.parametrize("added", ["extra.txt", "sub/manifest.json"])
def test_a_file_not_in_the_manifest_makes_the_artifact_damaged(tmp_path, added):
    from dre_pipeline.harness.status import inventory, status_text

    artifact = _codebook_artifact(Store(tmp_path))
    (artifact.path / added).parent.mkdir(exist_ok=True)
    (artifact.path / added).write_text("slipped in")
    assert damaged_files(artifact) == [f"{added} is not in the manifest"]
    assert Store(tmp_path).lookup("codebook", "k1", force=False) is None
    text = status_text(inventory(None, Store(tmp_path)), tmp_path)
    assert f"damaged: {added} is not in the manifest" in text


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("full_at", ["the stage's own file", "the manifest"])
def test_a_full_disk_leaves_the_store_as_it_was(tmp_path, monkeypatch, full_at):
    from dre_pipeline.pipeline import artifacts
    store = Store(tmp_path)
    old = _codebook_artifact(store)
    if full_at == "the manifest":
        monkeypatch.setattr(artifacts, "write_json", _no_space)
    expected = f"no space left on device: cannot write the codebook artifact under {tmp_path}; the store is as it was"
    with pytest.raises(InputError, match=re.escape(expected)):
        with store.writing("codebook", "k1", {"kept": 2, "total": 2}) as out:  # as --force does
            (out / "codes.bin").write_bytes(b"9876543210")
            if full_at == "the stage's own file":
                _no_space()
    again = Store(tmp_path).find("codebook", "k1")
    assert again.manifest == old.manifest and damaged_files(again) == []
    assert sorted(p.name for p in (tmp_path / "codebook").iterdir()) == [".use-k1", "k1"]  # no temporary folder


def test_a_full_disk_stops_a_stage_command_with_one_line(tmp_path, monkeypatch, tiny_llm):
    from dre_pipeline.pipeline.stages import codebook

    monkeypatch.setattr(codebook, "save", _no_space)
    result = CliRunner().invoke(app, ["codebook", "--llm-path", str(tiny_llm), "--store", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: no space left on device: cannot write the codebook artifact under {tmp_path}; the store is as it was"]
    assert Store(tmp_path).list("codebook") == [] and not list((tmp_path / "codebook").glob(".tmp-*"))


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    import torch

    store = Store(tmp_path)
    store.save_checkpoint("encode", "k1", {"epoch": 1})
    monkeypatch.setattr(torch, "save", _no_space)
    with pytest.raises(InputError, match="no space left on device: cannot write the encode checkpoint under"):
        store.save_checkpoint("encode", "k1", {"epoch": 2})
    assert store.load_checkpoint("encode", "k1", torch.device("cpu")) == {"epoch": 1}
    assert [p.name for p in (tmp_path / "encode").iterdir()] == [".ckpt-k1.pt"]  # no half-written one beside it


@contextmanager
def _deadline(seconds: int):
    """Fail, rather than hang, if the block waits on a lock that is never released."""
    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s: a deadlock")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("why", ["damaged", "--force"])
def test_a_run_using_an_artifact_can_rebuild_it_while_another_run_uses_it(tmp_path, why):
    _codebook_artifact(Store(tmp_path))
    other, run = Store(tmp_path), Store(tmp_path)  # two processes' views of one store: their flocks conflict alike
    assert other.lookup("codebook", "k1", force=False) is not None  # a live run uses it
    if why == "damaged":
        (tmp_path / "codebook" / "k1" / "codes.bin").write_bytes(b"broken")
    assert run.find("codebook", "k1") is not None  # and this run holds it too, then rebuilds it
    with _deadline(20):
        assert run.lookup("codebook", "k1", force=why == "--force") is None
        with run.writing("codebook", "k1", {"kept": 2, "total": 2}) as out:
            (out / "codes.bin").write_bytes(b"rebuilt")
    rebuilt = Store(tmp_path).find("codebook", "k1")
    assert rebuilt.manifest["kept"] == 2 and damaged_files(rebuilt) == []
