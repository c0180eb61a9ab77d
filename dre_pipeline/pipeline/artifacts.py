"""The artifact store: ``<root>/<stage>/<key>/`` with a ``manifest.json``.

A key is a hash of everything that determines the output (the stage's config, its
inputs' keys, the data's fingerprint), so a rerun with the same settings is a cache
hit. Each artifact is written in a temporary folder and renamed into place: a killed
run leaves no half artifact, and what was already finished stays. The manifest lists
every file with its size and SHA-256; a cache hit is checked against it, and a damaged
artifact (a truncated, altered or added file, an unreadable manifest) is rebuilt, never used.

Two locks per key, both ``flock`` (released by the kernel when a process ends, however it
ends): ``<stage>/.lock-<key>``, held exclusively by the one run computing the key, and
``<stage>/.use-<key>``, shared by every process that reads, computes or writes the key,
for the rest of its life. ``clean`` removes only what it can lock exclusively.
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

from .. import __version__
from ..errors import InputError

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


def artifact_files(folder: Path) -> list:
    """Every file below ``folder`` but its own manifest, as paths relative to it."""
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / MANIFEST]


def file_checksums(folder: Path) -> dict:
    """Every file below ``folder`` but the manifest: relative path -> size and full SHA-256."""
    return {name: {"size": (folder / name).stat().st_size, "sha256": file_digest(folder / name, length=64)}
            for name in artifact_files(folder)}


def read_manifest(folder: Path) -> tuple:
    """``(manifest, None)``, or ``({}, why)`` when the manifest cannot say what the artifact holds."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        return {}, f"{MANIFEST} cannot be read ({error})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(f, dict) and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)
            for f in files.values()):
        return {}, f"{MANIFEST} does not list the artifact's files with their sizes and checksums"
    return manifest, None


def damaged_files(artifact: "Artifact") -> list:
    """What no longer matches the manifest: one line per problem (empty: intact)."""
    if artifact.manifest_problem:
        return [artifact.manifest_problem]
    listed = artifact.manifest["files"]
    unlisted = [f"{name} is not in the manifest" for name in artifact_files(artifact.path) if name not in listed]
    changed = (_file_problem(artifact.path / name, name, expected) for name, expected in listed.items())
    return unlisted + [problem for problem in changed if problem]


def _file_problem(path: Path, name: str, expected: dict) -> Optional[str]:
    try:
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, not {expected['size']}"
        if file_digest(path, length=64) != expected["sha256"]:
            return f"{name} has changed since it was written"
    except OSError as error:  # unreadable, or removed while this looked
        return f"{name} cannot be read ({error.strerror or error})"
    return None


def remove_path(path: Path) -> None:
    """Remove a file, a symbolic link as the link (its target stays), or a folder with its manifest last:
    a removal that fails part-way leaves an artifact the store calls damaged, never one it calls intact."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for child in path.iterdir():
        if child.name != MANIFEST:
            remove_path(child)
    shutil.rmtree(path)


def save_torch(state, path: Path) -> None:
    """``torch.save`` through a Python file: a failed write (a full disk) is then an OSError with its errno,
    which :meth:`Store.writing` turns into one line, where a path would give a RuntimeError."""
    import torch

    with open(path, "wb") as f:
        torch.save(state, f)


def load_torch(path: Path, device: "torch.device"):
    """``torch.load`` (weights only) of a file :func:`save_torch` wrote, onto the run's ``device``.

    Tensors saved on any GPU (``cuda:0`` of another machine, or another rank's) come back on
    ``device``; those saved on the CPU stay there, as the code that saved them kept them
    (generator states, the optimiser's step counts). Without a ``map_location`` torch would put
    each on the device it was saved from: no GPU there is an error, and every rank of a resumed
    ``torchrun`` would load onto ``cuda:0``.
    """
    import torch
    from torch.serialization import default_restore_location

    def place(storage, saved_on: str):
        return storage if saved_on == "cpu" else default_restore_location(storage, str(device))

    return torch.load(path, map_location=place, weights_only=True)


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
    manifest: dict  # empty when the manifest cannot be read
    cached: bool  # True when this run found it instead of computing it
    manifest_problem: Optional[str] = None  # why the manifest cannot be read: the artifact is damaged

    def file(self, name: str) -> Path:
        return self.path / name


def _try_lock(lock, kind: int) -> bool:
    try:
        fcntl.flock(lock, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Store:
    """Artifacts by stage and key. Two runs on one store never compute the same key twice:
    the first to miss takes the key's lock (``<stage>/.lock-<key>``) until it has written the
    artifact; the second waits for it, then finds the artifact and reuses it. Every process
    that uses a key shares ``<stage>/.use-<key>`` until it ends, so ``clean`` leaves it alone."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._locks = {}  # (stage, key) -> the compute lock this process holds
        self._uses = {}  # (stage, key) -> the use lock this process shares
        self._intact = set()  # (stage, key) checked against its checksums by this process

    def find(self, stage: str, key: str, cached: bool = True) -> Optional[Artifact]:
        """The finished artifact under ``key``, or None; ``cached=False`` for one just written.
        Finding it marks it in use by this process until it ends."""
        if not (self.root / stage / key / MANIFEST).is_file():
            return None
        self._use(stage, key)
        return self._artifact(stage, key, cached)  # None again if a clean removed it while this waited

    def _artifact(self, stage: str, key: str, cached: bool = True) -> Optional[Artifact]:
        path = self.root / stage / key
        if not (path / MANIFEST).is_file():
            return None
        manifest, problem = read_manifest(path)
        return Artifact(stage, key, path, manifest, cached, problem)

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

    def _open_lock(self, stage: str, key: str, kind: str):
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f".{kind}-{key}", "a")

    def _use(self, stage: str, key: str) -> None:
        """Share the key's use lock until this process ends (a clean holding it exclusively is waited for)."""
        if (stage, key) not in self._uses:
            lock = self._open_lock(stage, key, "use")
            fcntl.flock(lock, fcntl.LOCK_SH)
            self._uses[(stage, key)] = lock

    def _claim(self, stage: str, key: str) -> bool:
        """Hold the key's lock until :meth:`writing` is done with it; True when another run held it first."""
        if (stage, key) in self._locks:
            return False
        self._use(stage, key)  # first: no clean may take this run's checkpoint or temporary folder
        lock = self._open_lock(stage, key, "lock")
        waited = not _try_lock(lock, fcntl.LOCK_EX)
        if waited:
            log.info("%s: another run is computing %s; waiting for it", stage, key)
            fcntl.flock(lock, fcntl.LOCK_EX)
        self._locks[(stage, key)] = lock
        return waited

    def _release(self, stage: str, key: str) -> None:
        if lock := self._locks.pop((stage, key), None):
            lock.close()  # closing the file drops the lock (so does the process ending)

    def close(self) -> None:
        """Drop every lock this store holds: this process uses none of its artifacts any more."""
        for lock in [*self._locks.values(), *self._uses.values()]:
            lock.close()
        self._locks.clear()
        self._uses.clear()

    def in_use(self, stage: str, key: str) -> bool:
        """Whether a live process (this one included) uses ``key``, checked without creating anything."""
        if (stage, key) in self._uses:
            return True
        path = self.root / stage / f".use-{key}"
        if not path.is_file():  # every user creates it before locking it
            return False
        with open(path) as lock:
            return not _try_lock(lock, fcntl.LOCK_EX)

    @contextmanager
    def unused(self, stage: str, key: str) -> Iterator[bool]:
        """Whether no live process uses ``key``; while True, none can start to (a finder waits for the block to end)."""
        with self._open_lock(stage, key, "use") as lock:
            yield (stage, key) not in self._uses and _try_lock(lock, fcntl.LOCK_EX)

    def checkpoint(self, stage: str, key: str) -> Path:
        """Where a run computing ``key`` keeps its last resumable state (removed once the artifact is written)."""
        return self.root / stage / f".ckpt-{key}.pt"

    def save_checkpoint(self, stage: str, key: str, state: dict) -> None:
        """Replace the checkpoint; a full disk stops the run with one line and keeps the previous one."""
        path = self.checkpoint(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            save_torch(state, tmp)
            os.replace(tmp, path)  # a kill leaves the previous checkpoint or this one, never half of one
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise self._write_error(f"the {stage} checkpoint", error, "the last one is kept") from None

    def load_checkpoint(self, stage: str, key: str, device: "torch.device") -> Optional[dict]:
        """The state a killed run left for ``key``, onto the run's ``device`` (:func:`load_torch`), or None
        (also for one that cannot be read)."""
        path = self.checkpoint(stage, key)
        if not path.is_file():
            return None
        try:
            return load_torch(path, device)
        except Exception as error:  # a checkpoint is an optimisation: an unreadable one means starting over
            log.warning("%s: checkpoint %s cannot be read (%s); starting over", stage, path, error)
            return None

    def list(self, stage: str) -> list:
        """Every artifact of ``stage``, damaged ones included, without marking any in use."""
        folder = self.root / stage
        if not folder.is_dir():
            return []
        found = (self._artifact(stage, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith("."))
        return [a for a in found if a is not None]

    @contextmanager
    def writing(self, stage: str, key: str, manifest: dict) -> Iterator[Path]:
        """Yield a temporary folder; on success add the manifest and rename it to its key.

        An existing artifact under the same key (``--force``) is replaced only once the
        new one is complete. A write that fails (a full disk) leaves the store as it was
        and stops with one line.
        """
        final = self.root / stage / key
        tmp = self.root / stage / f".tmp-{key}-{os.getpid()}"
        try:
            self._use(stage, key)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            yield tmp
            manifest = {**manifest, "stage": stage, "key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "files": file_checksums(tmp)}
            write_json(tmp / MANIFEST, manifest)
            _move_into_place(tmp, final)
            self.checkpoint(stage, key).unlink(missing_ok=True)
        except OSError as error:
            raise self._write_error(f"the {stage} artifact", error, "the store is as it was") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self._release(stage, key)

    def _write_error(self, what: str, error: OSError, outcome: str) -> InputError:
        reason = (error.strerror or str(error)).lower()
        return InputError(f"{reason}: cannot write {what} under {self.root}; {outcome}")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an artifact already there goes only once the new one has its place."""
    if not (final.exists() or final.is_symlink()):
        tmp.rename(final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    final.rename(old)
    try:
        tmp.rename(final)
    except OSError:
        old.rename(final)
        raise
    try:
        remove_path(old)
    except OSError as error:  # the new artifact is in place; clean removes what is left of the old one
        log.warning("%s is left over (%s): `dre-pipeline clean` removes it", old, error.strerror)
