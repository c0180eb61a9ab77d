"""The artifact store: ``<root>/<stage>/<key>/`` with a ``manifest.json``.

A key is a hash of everything that determines the output (the stage's config, its
inputs' keys, the data's fingerprint), so a rerun with the same settings is a cache
hit. Each artifact is written in a temporary folder and renamed into place: a killed
run leaves no half artifact, and what was already finished stays. The manifest lists
every file with its size and SHA-256; a cache hit is checked against it, and a damaged
artifact (a truncated or altered file) is rebuilt, never used.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from . import __version__
from .errors import InputError

MANIFEST = "manifest.json"
log = logging.getLogger("dre_pipeline")


def digest(payload) -> str:
    """A short stable hash of a JSON-serialisable payload."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def artifact_key(payload: dict) -> str:
    """A stage's cache key: its inputs plus the package version, since a new version may compute differently."""
    return digest({**payload, "version": __version__})


def file_digest(path: Path, chunk: int = 1 << 22, length: int = 16) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()[:length]


def file_checksums(folder: Path) -> dict:
    """Every file below ``folder`` but the manifest: relative path -> size and full SHA-256."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_digest(p, length=64)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def damaged_files(artifact: "Artifact") -> list:
    """What no longer matches the manifest's checksums: one line per file (empty: intact or unlisted)."""
    problems = []
    for name, expected in artifact.manifest.get("files", {}).items():
        path = artifact.path / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {expected['size']}")
        elif file_digest(path, length=64) != expected["sha256"]:
            problems.append(f"{name} has changed since it was written")
    return problems


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_matrix(path: Path, matrix) -> None:
    """A float32 ``[rows, dim]`` array as zarr, in chunks of 1,024 rows."""
    import zarr

    array = zarr.create_array(path, shape=tuple(matrix.shape), chunks=(1024, matrix.shape[1]), dtype="float32")
    array[:] = matrix.numpy() if hasattr(matrix, "numpy") else matrix


def read_matrix(path: Path):
    import numpy as np
    import torch
    import zarr

    return torch.from_numpy(np.asarray(zarr.open_array(path, mode="r")[:]))


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict
    cached: bool  # True when this run found it instead of computing it

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    """Artifacts by stage and key. Two runs on one store never compute the same key twice:
    the first to miss takes the key's lock (``<stage>/.lock-<key>``) until it has written the
    artifact; the second waits for it, then finds the artifact and reuses it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._locks = {}  # (stage, key) -> the open lock file this process holds
        self._intact = set()  # (stage, key) checked against its checksums by this process

    def find(self, stage: str, key: str, cached: bool = True) -> Optional[Artifact]:
        """The finished artifact under ``key``, or None; ``cached=False`` for one just written."""
        path = self.root / stage / key
        manifest = path / MANIFEST
        if not manifest.is_file():
            return None
        return Artifact(stage, key, path, json.loads(manifest.read_text()), cached=cached)

    def lookup(self, stage: str, key: str, force: bool, cached_only: bool = False) -> Optional[Artifact]:
        """The cached, intact artifact a stage can reuse, or None when it must compute it.

        ``cached_only`` (for commands that must not train, like ``predict``) turns a miss into an error.
        """
        found = None if force else self._intact_artifact(stage, key, cached_only)
        if not found and not cached_only and self._claim(stage, key) and not force:
            found = self._intact_artifact(stage, key, cached_only)  # written while this run waited
        if not found and cached_only:
            raise InputError(f"no {stage} artifact for these settings in {self.root}: run `dre-pipeline {stage}` first")
        return found

    def _intact_artifact(self, stage: str, key: str, cached_only: bool) -> Optional[Artifact]:
        """The artifact if its files match the manifest's checksums (hashed once per process: an LLM is gigabytes)."""
        found = self.find(stage, key)
        if found and (stage, key) not in self._intact:
            if problems := damaged_files(found):
                log.warning("%s: %s is damaged (%s); %s", stage, found.path, "; ".join(problems),
                            "it is not used" if cached_only else "rebuilding it")
                return None
            self._intact.add((stage, key))
            log.info("%s: cache hit %s", stage, found.path)
        return found

    def _claim(self, stage: str, key: str) -> bool:
        """Hold the key's lock until :meth:`writing` is done with it; True when another run held it first."""
        if (stage, key) in self._locks:
            return False
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".lock-{key}", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            log.info("%s: another run is computing %s; waiting for it", stage, key)
            fcntl.flock(lock, fcntl.LOCK_EX)
            waited = True
        self._locks[(stage, key)] = lock
        return waited

    def _release(self, stage: str, key: str) -> None:
        if lock := self._locks.pop((stage, key), None):
            lock.close()  # closing the file drops the lock (so does the process ending)

    def checkpoint(self, stage: str, key: str) -> Path:
        """Where a run computing ``key`` keeps its last resumable state (removed once the artifact is written)."""
        return self.root / stage / f".ckpt-{key}.pt"

    def save_checkpoint(self, stage: str, key: str, state: dict) -> None:
        import torch

        path = self.checkpoint(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a kill leaves the previous checkpoint or this one, never half of one

    def load_checkpoint(self, stage: str, key: str) -> Optional[dict]:
        """The state a killed run left for ``key``, or None (also for one that cannot be read)."""
        import torch

        path = self.checkpoint(stage, key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as error:  # a checkpoint is an optimisation: an unreadable one means starting over
            log.warning("%s: checkpoint %s cannot be read (%s); starting over", stage, path, error)
            return None

    def list(self, stage: str) -> list:
        folder = self.root / stage
        if not folder.is_dir():
            return []
        found = (self.find(stage, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith("."))
        return [a for a in found if a is not None]

    @contextmanager
    def writing(self, stage: str, key: str, manifest: dict) -> Iterator[Path]:
        """Yield a temporary folder; on success add the manifest and rename it to its key.

        An existing artifact under the same key (``--force``) is replaced only once the
        new one is complete.
        """
        final = self.root / stage / key
        tmp = self.root / stage / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            manifest = {**manifest, "stage": stage, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "files": file_checksums(tmp)}
            write_json(tmp / MANIFEST, manifest)
            if final.exists():
                old = final.with_name(f".old-{key}-{os.getpid()}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
            self.checkpoint(stage, key).unlink(missing_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._release(stage, key)
