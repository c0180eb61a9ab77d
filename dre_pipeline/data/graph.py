"""Load graphs into one in-memory form (`GraphData`) and cut train/val/test splits.

Every source — Planetoid (Cora, CiteSeer, PubMed), ogbn-arxiv, a sparse-npz file (Cora-ML,
the gnn-benchmark collection), a generated synthetic graph, or a user folder of CSV or parquet
tables (Cora with its titles and abstracts is one) — ends up with the same guarantees: float32
features (``[N, 0]`` for a graph that has only text: ``--features`` makes them from it),
an undirected, coalesced edge list without self loops, labels in ``0..C-1`` and readable
class names.  Later stages rely on those guarantees instead of re-checking them, and the
`fingerprint` lets cached artifacts tell whether they were built from the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.utils import remove_self_loops, to_undirected

from ..errors import InputError

SPLIT_NAMES = ("train", "val", "test")


def split_names(split: np.ndarray) -> list:
    """Each node's part by name; -1 (in no part) is "unused"."""
    return np.asarray(SPLIT_NAMES + ("unused",), dtype=object)[split].tolist()

DATA_DIR_ENV = "DRE_DATA_DIR"

# TAPE's and GLBench's texts are "Title : Abstract"; where most texts of a table follow that
# convention, the title is split off so the prompt can say which part is which.
_TITLE_SEPARATOR = re.compile(r"\s:\s")
_TITLE_FALLBACK = re.compile(r":\s|\.\s")
_TITLE_MAX_CHARS = 400
_WORDS = re.compile(r"[a-z]+")


@dataclass
class GraphData:
    """One node-classification graph with the guarantees listed in the module docstring."""

    name: str
    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    text: list[str] | None
    node_ids: np.ndarray  # int64, or str where the table's ids are names
    public_split: np.ndarray | None
    fingerprint: str
    titles: list[str] | None = None  # each text's title, where the table gives one ("" where a node has none)

    @property
    def has_features(self) -> bool:
        return int(self.x.shape[1]) > 0

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_split(
    data: GraphData,
    kind: str,
    seed: int,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> np.ndarray:
    """Return an int8 array with 0/1/2 (train/val/test) per node, -1 for unused nodes.

    ``random`` is a seeded permutation cut at the ratios (the paper's 60/20/20 convention);
    ``public`` is the split the dataset itself ships, where it has one.
    """
    if kind == "public":
        if data.public_split is None:
            raise InputError(
                f"dataset {data.name!r} defines no public split: use --split random"
            )
        return _with_train_and_val(data.public_split.astype(np.int8, copy=True), data.name)
    if kind != "random":
        raise InputError(f"unknown split {kind!r}: expected 'random' or 'public'")
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise InputError(
            f"split ratios {tuple(ratios)} must be three non-negative numbers summing to 1"
        )
    n = data.num_nodes
    order = np.random.default_rng(seed).permutation(n)
    # Cutting at rounded cumulative bounds keeps the three parts disjoint and complete.
    cut_train = round(ratios[0] * n)
    cut_val = round((ratios[0] + ratios[1]) * n)
    split = np.empty(n, dtype=np.int8)
    split[order[:cut_train]] = 0
    split[order[cut_train:cut_val]] = 1
    split[order[cut_val:]] = 2
    return _with_train_and_val(split, data.name)


def _with_train_and_val(split: np.ndarray, name: str) -> np.ndarray:
    """Training fits the models and validation picks their checkpoints: a split without either cannot run."""
    for code, part in ((0, "training"), (1, "validation")):
        if not (split == code).any():
            raise InputError(f"dataset {name!r}: the split has no {part} nodes")
    return split

# --------------------------------------------------------------------------- shared


def _reason(err: Exception) -> str:
    """An exception's first line, for a one-line error (its type where it has no message)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """Explicit argument first, then the environment, so CI can point every run at one copy."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return None
    path = Path(data_dir)
    if not path.is_dir():
        raise InputError(f"data folder {str(path)!r} does not exist")
    return path


def _mirror(src: Path, dst: Path) -> bool:
    """Copy every file under ``src`` into ``dst`` unless an identical-looking copy is there.

    Size and mtime decide "identical", so repeated loads copy nothing.  Only the bytes are
    copied (not the permission bits): read-only shared files must not yield read-only
    cache files that a later refresh could not overwrite.  Returns whether anything changed.
    """
    changed = False
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / file.relative_to(src)
        stat = file.stat()
        if target.is_file():
            have = target.stat()
            if have.st_size == stat.st_size and have.st_mtime_ns == stat.st_mtime_ns:
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        changed = True
    return changed


def _fingerprint(fields: dict) -> str:
    """Short content hash of everything a stage may read: equal fingerprints mean cached work can be reused.

    Each field is hashed as its name, its length and its bytes (arrays with dtype and shape, strings
    as JSON), so no value can run into the next one whatever characters the data holds.
    """
    digest = hashlib.sha256()
    for name, value in fields.items():
        if value is None:
            blob = b"none"
        elif isinstance(value, (torch.Tensor, np.ndarray)) and np.asarray(value).dtype != object:
            array = np.ascontiguousarray(value.numpy() if isinstance(value, torch.Tensor) else value)
            blob = f"{array.dtype.str}{array.shape}".encode() + array.tobytes()
        else:  # lists of strings, and node ids that are names
            blob = json.dumps(list(value.tolist() if isinstance(value, np.ndarray) else value)).encode()
        digest.update(f"{name}:{len(blob)}:".encode())
        digest.update(blob)
    return digest.hexdigest()[:16]


def _graph(
    name: str,
    x: torch.Tensor,
    edge_index: torch.Tensor,
    y: torch.Tensor,
    class_names: list[str],
    text: list[str] | None,
    node_ids: np.ndarray,
    public_split: np.ndarray | None,
    titles: list[str] | None = None,
) -> GraphData:
    """Normalise any source into the guaranteed form and compute its fingerprint."""
    num_nodes = int(x.shape[0])
    if num_nodes == 0:
        raise InputError(f"dataset {name!r} has no nodes")
    x = x.to(torch.float32).contiguous()
    if x.numel() and not torch.isfinite(x).all():
        node = int((~torch.isfinite(x)).any(dim=1).nonzero()[0])
        raise InputError(f"dataset {name!r}: features hold NaN or infinite values (first at row {node})")
    y = y.reshape(-1).to(torch.int64)
    class_names = [c.replace("_", " ") for c in class_names]
    if len(class_names) < 2:
        raise InputError(f"dataset {name!r}: node classification needs at least two classes, found {len(class_names)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(class_names)):
        raise InputError(
            f"dataset {name!r}: labels must lie in 0..{len(class_names) - 1}, "
            f"found {int(y.min())}..{int(y.max())}"
        )
    edge_index, _ = remove_self_loops(edge_index.to(torch.int64))
    if edge_index.size(1) == 0:  # isolated nodes are fine; a graph of nothing but is not one to read
        raise InputError(f"dataset {name!r} has no edges (self-loops aside)")
    edge_index = to_undirected(edge_index, num_nodes=num_nodes).contiguous()
    node_ids = node_ids if node_ids.dtype == object else np.asarray(node_ids, dtype=np.int64)
    public_split = None if public_split is None else public_split.astype(np.int8)
    return GraphData(
        name=name,
        x=x,
        edge_index=edge_index,
        y=y,
        class_names=class_names,
        text=text,
        node_ids=node_ids,
        public_split=public_split,
        fingerprint=_fingerprint({"x": x, "edge_index": edge_index, "y": y, "text": text, "titles": titles,
                                  "class_names": class_names, "node_ids": node_ids, "public_split": public_split}),
        titles=titles,
    )


def _split_from_masks(num_nodes: int, masks: list[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Turn train/val/test boolean masks or index arrays into the -1/0/1/2 encoding."""
    split = np.full(num_nodes, -1, dtype=np.int8)
    for code, mask in enumerate(masks):
        split[np.asarray(mask)] = code
    return split


def _find_shared(sub: str, entry: str, data_dir: Path | None) -> Path:
    """``entry`` under ``<data_dir>/../<sub>``, ``<data_dir>/<sub>`` or ``<data_dir>``, then ``../shared/datasets/<sub>``:
    ``$DRE_DATA_DIR`` names the Planetoid folder, beside which the shared copy keeps the other sources."""
    bases = [data_dir.parent / sub, data_dir / sub, data_dir] if data_dir is not None else []
    bases.append(Path("../shared/datasets") / sub)
    for base in bases:
        if (base / entry).exists():
            return base / entry
    searched = ", ".join(str(b) for b in bases)
    raise InputError(f"{entry} not found under {searched}: set --data-dir or ${DATA_DIR_ENV}")


def _numbered_classes(labels: np.ndarray, path: Path, names_from: str) -> list[str]:
    """"class 0" .. "class C-1" for integer labels that come without names, C being the largest label + 1."""
    top = int(labels.max()) if labels.size else -1
    if top >= labels.size:  # more classes than nodes: not the numbers 0..C-1 (and 2^62 names would never be made)
        raise InputError(f"{path}: integer labels must number the classes 0..C-1 (or {names_from} must name them); "
                         f"found label {top} among {labels.size} nodes")
    return [f"class {c}" for c in range(top + 1)]


def split_titles(texts: list[str]) -> list[str] | None:
    """Titles of texts written "Title : Abstract", or None where most texts are not written so.

    The first " : " within the first 400 characters ends the title; in a text without one, the
    first ": " or ". " does (Cora's texts: 56 % carry the separator, most others "Title: Abstract").
    """
    separated = sum(bool(_TITLE_SEPARATOR.search(t[:_TITLE_MAX_CHARS])) for t in texts)
    if separated * 2 <= len(texts):
        return None
    titles = []
    for text in texts:
        head = text[:_TITLE_MAX_CHARS]
        end = _TITLE_SEPARATOR.search(head) or _TITLE_FALLBACK.search(head)
        titles.append(text[: end.start()].strip(' ,."\'“”') if end else "")
    return titles


def text_vocabulary(texts: list[str]) -> frozenset:
    """The lower-case words (runs of letters) that occur anywhere in ``texts``: the words a graph's text uses."""
    return frozenset(word for text in texts for word in _WORDS.findall(text.lower()))


def title_and_rest(data: GraphData, node: int) -> tuple[str, str]:
    """Node ``node``'s title and the rest of its text (its abstract); ``("", text)`` where it has no title."""
    text = data.text[node]
    title = data.titles[node] if data.titles is not None else ""
    if not title:
        return "", text
    start = text.find(title)
    rest = text[start + len(title):] if start >= 0 else text
    return title, rest.lstrip(' ,.:"\'“”\n\t')
