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
