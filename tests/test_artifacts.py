"""The artifact store: atomic writes, cache hits, --force."""

import pytest

from dre_pipeline.artifacts import Store, digest
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
    with pytest.raises(RuntimeError):
        with store.writing("stage", "k1", {}) as out:
            (out / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert store.find("stage", "k1") is None
    assert list((tmp_path / "stage").iterdir()) == []


def test_force_replaces_only_when_complete(tmp_path):
    store = Store(tmp_path)
    with store.writing("stage", "k1", {"version": 1}):
        pass
    with pytest.raises(RuntimeError):
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
    from dre_pipeline.artifacts import damaged_files

    from dre_pipeline.status import inventory, status_text

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
    from dre_pipeline.config import CodebookConfig, EncodeConfig, key_fields

    # the values that reproduce what was computed before these options existed stay out of the keys
    assert not {"whole_words", "drop_function_words"} & set(
        key_fields(CodebookConfig(whole_words=False, drop_function_words=False)))
    assert "features" not in key_fields(EncodeConfig())
    assert key_fields(CodebookConfig())["whole_words"] is True
    assert key_fields(EncodeConfig(features="llm"))["features"] == "llm"
