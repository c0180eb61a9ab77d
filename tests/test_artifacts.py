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
