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

import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch_geometric.utils import remove_self_loops, to_undirected

from ..errors import InputError

SPLIT_NAMES = ("train", "val", "test")


def split_names(split: np.ndarray) -> list:
    """Each node's part by name; -1 (in no part) is "unused"."""
    return np.asarray(SPLIT_NAMES + ("unused",), dtype=object)[split].tolist()
DATASETS = ("cora", "citeseer", "pubmed", "cora-ml", "cora-text", "ogbn-arxiv", "synthetic")

DATA_DIR_ENV = "DRE_DATA_DIR"

# Planetoid's own folder names and its label ids in order; the ids are fixed by the raw
# files, so the names are constants rather than something to read from disk.
_PLANETOID = {
    "cora": (
        "Cora",
        [
            "Theory",
            "Reinforcement_Learning",
            "Genetic_Algorithms",
            "Neural_Networks",
            "Probabilistic_Methods",
            "Case_Based",
            "Rule_Learning",
        ],
    ),
    "citeseer": ("CiteSeer", ["Agents", "AI", "DB", "IR", "ML", "HCI"]),
    "pubmed": (
        "PubMed",
        [
            "Diabetes Mellitus Experimental",
            "Diabetes Mellitus Type 1",
            "Diabetes Mellitus Type 2",
        ],
    ),
}
_PLANETOID_RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")

# Built-in sparse-npz graphs: name -> file, looked up beside the Planetoid data (see _find_npz).
_NPZ = {"cora-ml": "cora_ml.npz"}
# The two key spellings of the gnn-benchmark layout: "adj_matrix.data" and "adj_data".
_NPZ_SPELLINGS = ("{}_matrix.{}", "{}_{}")
# Built-in node tables with text: name -> folder under the data root's text/ (see _find_text_folder).
_TEXT_FOLDERS = {"cora-text": "cora"}
# TAPE's and GLBench's texts are "Title : Abstract"; where most texts of a table follow that
# convention, the title is split off so the prompt can say which part is which.
_TITLE_SEPARATOR = re.compile(r"\s:\s")
_TITLE_FALLBACK = re.compile(r":\s|\.\s")
_TITLE_MAX_CHARS = 400

_ARXIV_DIR = "ogbn_arxiv"
_ARXIV_RELEASE = "RELEASE_v1.txt"  # ogb asks on stdin when this marker is missing

# Synthetic graph: real words so that a language model has something meaningful to read.
_SYNTHETIC_CLASSES = {
    "astronomy": [
        "star", "planet", "galaxy", "comet", "orbit",
        "telescope", "nebula", "moon", "asteroid", "eclipse",
    ],
    "botany": [
        "leaf", "root", "flower", "seed", "petal",
        "stem", "pollen", "fern", "moss", "orchid",
    ],
    "chemistry": [
        "molecule", "acid", "atom", "reaction", "catalyst",
        "electron", "solvent", "crystal", "bond", "polymer",
    ],
    "geology": [
        "rock", "mineral", "fossil", "volcano", "granite",
        "sediment", "quartz", "erosion", "magma", "basalt",
    ],
    "music": [
        "melody", "rhythm", "chord", "violin", "harmony",
        "tempo", "piano", "guitar", "symphony", "chorus",
    ],
}
_SYNTHETIC_FILLER = [
    "the", "a", "study", "new", "analysis", "results",
    "method", "report", "notes", "observation", "of", "with",
]
_SYNTHETIC_NODES_PER_CLASS = 60
_SYNTHETIC_DIM = 64
_SYNTHETIC_P_INTRA = 0.05
_SYNTHETIC_P_INTER = 0.004
_SYNTHETIC_WORDS_PER_NODE = 8
_SYNTHETIC_TOPIC_SHARE = 0.7
_SYNTHETIC_NOISE = 2.0

_SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


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


def load_dataset(
    name: str, data_dir: str | Path | None, cache_dir: str | Path, seed: int = 0
) -> GraphData:
    """Load a built-in dataset by name, or a folder of parquet files by path.

    ``data_dir`` (or ``$DRE_DATA_DIR``) points at pre-downloaded raw files for the real
    datasets so that no internet is needed; it is only ever read.  Anything that has to be
    written (copies, processed files, downloads) goes under ``cache_dir``.  ``seed`` only
    affects the synthetic graph.
    """
    cache_dir = Path(cache_dir)
    key = name.lower()
    if key in _PLANETOID:
        return _load_planetoid(key, _resolve_data_dir(data_dir), cache_dir)
    if key == "ogbn-arxiv":
        return _load_arxiv(_resolve_data_dir(data_dir), cache_dir)
    if key == "synthetic":
        return _make_synthetic(seed)
    if key in _NPZ:
        return _load_npz(_find_npz(_NPZ[key], _resolve_data_dir(data_dir)), key)
    if key in _TEXT_FOLDERS:
        return _load_folder(_find_text_folder(_TEXT_FOLDERS[key], _resolve_data_dir(data_dir)), key)
    if name.endswith(".npz"):
        if not Path(name).is_file():
            raise InputError(f"npz dataset {name!r} does not exist")
        return _load_npz(Path(name), Path(name).stem)
    if Path(name).is_dir():
        return _load_folder(Path(name))
    raise InputError(
        f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} "
        "or an .npz file (sparse-npz layout) or a folder holding nodes.csv and edges.csv (or .parquet)"
    )


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


# --------------------------------------------------------------------------- planetoid


def _load_planetoid(key: str, data_dir: Path | None, cache_dir: Path) -> GraphData:
    """Cora/CiteSeer/PubMed via PyG, processed in ``cache_dir`` so ``data_dir`` stays untouched."""
    from torch_geometric.datasets import Planetoid

    folder, class_names = _PLANETOID[key]
    root = cache_dir / "planetoid"
    if data_dir is not None:
        raw_src = _find_planetoid_raw(data_dir, folder)
        if _mirror(raw_src, root / folder / "raw"):
            # Processed files from other raw files would silently win over the new ones.
            shutil.rmtree(root / folder / "processed", ignore_errors=True)
    try:
        dataset = Planetoid(str(root), folder)
    except ModuleNotFoundError as err:
        # The raw files are pickled scipy matrices; PyG does not depend on scipy itself.
        if err.name != "scipy":
            raise
        raise InputError(f"reading {folder}'s raw files needs 'scipy': pip install scipy") from err
    except OSError as err:
        raise InputError(
            f"could not download {folder} ({err}); pass a data folder holding {folder}/raw/"
        ) from err
    pyg = dataset[0]
    return _graph(
        name=key,
        x=pyg.x,
        edge_index=pyg.edge_index,
        y=pyg.y,
        class_names=class_names,
        text=None,
        node_ids=np.arange(pyg.num_nodes),
        public_split=_split_from_masks(
            pyg.num_nodes, [pyg.train_mask, pyg.val_mask, pyg.test_mask]
        ),
    )


def _find_planetoid_raw(data_dir: Path, folder: str) -> Path:
    """Accept both ``<data_dir>/<Name>/raw`` and ``<data_dir>/planetoid/<Name>/raw``."""
    needed = [f"ind.{folder.lower()}.{suffix}" for suffix in _PLANETOID_RAW_SUFFIXES]
    candidates = [
        base / sub / "raw"
        for base in (data_dir, data_dir / "planetoid")
        for sub in dict.fromkeys((folder, folder.lower()))
    ]
    for raw in candidates:
        if raw.is_dir():
            missing = [f for f in needed if not (raw / f).is_file()]
            if missing:
                raise InputError(f"{raw} lacks Planetoid raw files: {', '.join(missing)}")
            return raw
    raise InputError(
        f"no {folder}/raw/ or planetoid/{folder}/raw/ folder under data folder {str(data_dir)!r}"
    )


# --------------------------------------------------------------------------- ogbn-arxiv


def _load_arxiv(data_dir: Path | None, cache_dir: Path) -> GraphData:
    """ogbn-arxiv via the optional ``ogb`` package, imported only when asked for."""
    try:
        from ogb.nodeproppred import PygNodePropPredDataset
    except ImportError as err:
        raise InputError(
            f"ogbn-arxiv needs the 'ogb' package: pip install ogb (missing module {err.name!r})"
        ) from err
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    root = cache_dir / "ogb"
    if data_dir is not None:
        src = _find_arxiv(data_dir)
        dst = root / _ARXIV_DIR
        if _mirror(src, dst) and not (src / "processed").exists():
            shutil.rmtree(dst / "processed", ignore_errors=True)
    # ogb 1.3.x saves whole PyG objects and reloads them with a bare torch.load, which the
    # weights-only default of torch >= 2.6 rejects; allow exactly the classes it pickles.
    try:
        with torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage]):
            dataset = PygNodePropPredDataset(name="ogbn-arxiv", root=str(root))
            split = dataset.get_idx_split()
    except OSError as err:
        raise InputError(
            f"could not download ogbn-arxiv ({err}); pass a data folder holding {_ARXIV_DIR}/"
        ) from err
    pyg = dataset[0]
    return _graph(
        name="ogbn-arxiv",
        x=pyg.x,
        edge_index=pyg.edge_index,
        y=pyg.y,
        class_names=_arxiv_class_names(Path(dataset.root), dataset.num_classes),
        text=None,
        node_ids=np.arange(pyg.num_nodes),
        public_split=_split_from_masks(
            pyg.num_nodes, [split["train"], split["valid"], split["test"]]
        ),
    )


def _find_arxiv(data_dir: Path) -> Path:
    """Accept ``<data_dir>/ogbn_arxiv`` and ``<data_dir>/ogb/ogbn_arxiv``.

    Without ogb's release marker the package would stop and ask on stdin, so a folder
    lacking it is refused up front.
    """
    for src in (data_dir / _ARXIV_DIR, data_dir / "ogb" / _ARXIV_DIR):
        if src.is_dir():
            if not (src / _ARXIV_RELEASE).is_file():
                raise InputError(f"{src} is not an ogb download: {_ARXIV_RELEASE} is missing")
            return src
    raise InputError(
        f"no {_ARXIV_DIR}/ or ogb/{_ARXIV_DIR}/ folder under data folder {str(data_dir)!r}"
    )


def _arxiv_class_names(dataset_root: Path, num_classes: int) -> list[str]:
    """Read ogb's label mapping ("arxiv cs ai" → "cs.AI"); fall back to "class i"."""
    mapping = dataset_root / "mapping" / "labelidx2arxivcategeory.csv.gz"
    names = [f"class {i}" for i in range(num_classes)]
    if not mapping.is_file():
        return names
    with gzip.open(mapping, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            parts = row["arxiv category"].split()
            if parts and parts[0] == "arxiv":
                parts = parts[1:]
            if len(parts) == 2:
                names[int(row["label idx"])] = f"{parts[0]}.{parts[1].upper()}"
    return names


# --------------------------------------------------------------------------- synthetic


def _make_synthetic(seed: int) -> GraphData:
    """A small homophilous graph with real-word text: fast, offline, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    class_names = list(_SYNTHETIC_CLASSES)
    num_classes = len(class_names)
    labels = rng.permutation(np.repeat(np.arange(num_classes), _SYNTHETIC_NODES_PER_CLASS))
    num_nodes = labels.size

    means = rng.normal(0.0, 1.0, size=(num_classes, _SYNTHETIC_DIM))
    x = means[labels] + rng.normal(0.0, _SYNTHETIC_NOISE, size=(num_nodes, _SYNTHETIC_DIM))

    same_class = labels[:, None] == labels[None, :]
    prob = np.where(same_class, _SYNTHETIC_P_INTRA, _SYNTHETIC_P_INTER)
    src, dst = np.nonzero(np.triu(rng.random((num_nodes, num_nodes)) < prob, k=1))

    text = []
    for label in labels:
        topic = _SYNTHETIC_CLASSES[class_names[label]]
        words = [
            rng.choice(topic if rng.random() < _SYNTHETIC_TOPIC_SHARE else _SYNTHETIC_FILLER)
            for _ in range(_SYNTHETIC_WORDS_PER_NODE)
        ]
        text.append(" ".join(str(w) for w in words))

    return _graph(
        name="synthetic",
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(np.stack([src, dst])),
        y=torch.from_numpy(labels),
        class_names=class_names,
        text=text,
        node_ids=np.arange(num_nodes),
        public_split=None,
    )


# --------------------------------------------------------------------------- sparse npz


def _find_npz(file: str, data_dir: Path | None) -> Path:
    """``<data_dir>/../npz``, ``<data_dir>/npz`` or ``<data_dir>``, then ``../shared/datasets/npz``."""
    return _find_shared("npz", file, data_dir)


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


def _load_npz(path: Path, name: str) -> GraphData:
    """A graph in the gnn-benchmark sparse-npz layout, either key spelling.

    CSR adjacency and attributes, ``labels``, optional ``node_names``, ``attr_names`` and
    ``class_names``. Where attribute names exist, a node's text is the names of its nonzero
    attributes in vocabulary order (the layout keeps no word order). Class names keep their
    last path component (``.../Machine_Learning/Neural_Networks`` -> ``Neural Networks``).
    No key is unpickled: the layout's optional object entries are never read. Everything that is
    read is checked (the zip, each matrix's shape against its arrays, indices within the shape,
    whole-number labels, one name per node and per attribute), so a bad file stops here.
    """
    if not zipfile.is_zipfile(path):  # np.load would take anything else for a single .npy array or a pickle
        raise InputError(f"{path}: not a readable .npz file (no zip archive: empty, cut short or another format)")
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as err:
        raise InputError(f"{path}: not a readable .npz file ({_reason(err)})") from err
    with archive:
        if "labels" not in archive.files:
            raise InputError(f"{path}: no 'labels' array")
        adjacency, attributes = _npz_csr(archive, "adj", path).tocoo(), _npz_csr(archive, "attr", path)
        labels = _npz_labels(archive, path)
        node_names, attr_names, class_names = (
            _npz_strings(archive, key, path) for key in ("node_names", "attr_names", "class_names")
        )
    num_nodes = adjacency.shape[0]
    if adjacency.shape[1] != num_nodes:
        raise InputError(f"{path}: the adjacency matrix is {num_nodes} x {adjacency.shape[1]}, not square")
    if attributes.shape[0] != num_nodes or labels.shape[0] != num_nodes:
        raise InputError(f"{path}: adjacency, attributes and labels disagree on the number of nodes "
                         f"({num_nodes}, {attributes.shape[0]} and {labels.shape[0]})")
    if node_names is not None and len(node_names) != num_nodes:
        raise InputError(f"{path}: {len(node_names)} node_names for {num_nodes} nodes")
    if attr_names is not None and len(attr_names) != attributes.shape[1]:
        raise InputError(f"{path}: {len(attr_names)} attr_names for {attributes.shape[1]} attribute columns")
    if class_names:
        class_names = [c.rsplit("/", 1)[-1] for c in class_names]
    else:
        class_names = _numbered_classes(labels, path, "a 'class_names' array")
    try:
        features = attributes.toarray()
    except MemoryError as err:
        raise InputError(f"{path}: attributes of shape {attributes.shape} do not fit in memory as a dense matrix") \
            from err
    text = None
    if attr_names is not None:
        attributes.eliminate_zeros()
        vocabulary, bounds = np.asarray(attr_names, dtype=object), attributes.indptr
        text = [" ".join(vocabulary[np.sort(attributes.indices[a:b])]) for a, b in zip(bounds[:-1], bounds[1:])]
    node_ids = np.arange(adjacency.shape[0])
    numeric = node_names is not None and all(n.isdigit() for n in node_names)
    if numeric and len(set(node_names)) == len(node_names):  # the papers' own ids, where they are ids
        node_ids = np.array([int(n) for n in node_names])
    return _graph(
        name=name,
        x=torch.from_numpy(features),
        edge_index=torch.from_numpy(np.stack([adjacency.row, adjacency.col]).astype(np.int64)),
        y=torch.from_numpy(labels),
        class_names=class_names,
        text=text,
        node_ids=node_ids,
        public_split=None,
    )


# What numpy and zipfile raise on a damaged .npz: an empty file (EOFError), a cut or overwritten zip
# (BadZipFile, a bad CRC), a broken deflate stream (zlib.error), a broken array header or a pickled array
# (ValueError, since pickles are never loaded).
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        values = archive[key]
    except _NPZ_READ_ERRORS as err:
        raise InputError(f"{path}: cannot read its {key!r} array ({_reason(err)})") from err
    if not isinstance(values, np.ndarray):  # numpy hands over a member without the .npy header as raw bytes
        raise InputError(f"{path}: its {key!r} entry is not a .npy array")
    return values


def _npz_csr(archive, prefix: str, path: Path):
    """The ``prefix`` CSR matrix, checked in full: scipy's constructor leaves indices beyond the shape
    and an indptr out of order to whoever indexes with them later."""
    from scipy.sparse import csr_matrix

    for spelling in _NPZ_SPELLINGS:
        keys = [spelling.format(prefix, part) for part in ("data", "indices", "indptr", "shape")]
        if all(k in archive.files for k in keys):
            break
    else:
        raise InputError(f"{path}: no '{prefix}_matrix.data' or '{prefix}_data' CSR arrays")
    data, indices, indptr, shape = (_npz_array(archive, k, path) for k in keys)
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 0).any():
        raise InputError(f"{path}: {keys[3]} must be two whole numbers (rows, columns), none negative; "
                         f"found {np.array2string(shape.ravel(), threshold=4)}")
    for key, values in zip(keys[1:3], (indices, indptr)):
        if not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"{path}: {key} must hold whole numbers, found {values.dtype}")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise InputError(f"{path}: {keys[0]} must hold numbers, found {data.dtype}")
    try:
        matrix = csr_matrix((data, indices, indptr), shape=tuple(int(s) for s in shape))
        matrix.check_format(full_check=True)
    except ValueError as err:
        raise InputError(f"{path}: the {prefix} CSR arrays disagree with {keys[3]} {tuple(shape.tolist())} "
                         f"({_reason(err)})") from err
    return matrix


def _npz_labels(archive, path: Path) -> np.ndarray:
    """One whole number per node (floats such as 2.0 too): NaN, fractions and strings are refused, not rounded or parsed."""
    labels = _npz_array(archive, "labels", path)
    whole = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all()
        and np.abs(labels).max(initial=0) < 2**53)
    if labels.ndim != 1 or not whole:
        raise InputError(f"{path}: 'labels' must hold one whole number per node, "
                         f"found {labels.dtype} values of shape {labels.shape}")
    return labels.astype(np.int64)


def _npz_strings(archive, key: str, path: Path) -> list[str] | None:
    if key not in archive.files:
        return None
    values = _npz_array(archive, key, path)
    if values.ndim != 1:
        raise InputError(f"{path}: {key!r} must be a list of names, found an array of shape {values.shape}")
    return [str(v).strip() for v in values]


def _numbered_classes(labels: np.ndarray, path: Path, names_from: str) -> list[str]:
    """"class 0" .. "class C-1" for integer labels that come without names, C being the largest label + 1."""
    top = int(labels.max()) if labels.size else -1
    if top >= labels.size:  # more classes than nodes: not the numbers 0..C-1 (and 2^62 names would never be made)
        raise InputError(f"{path}: integer labels must number the classes 0..C-1 (or {names_from} must name them); "
                         f"found label {top} among {labels.size} nodes")
    return [f"class {c}" for c in range(top + 1)]


# --------------------------------------------------------------------------- folder


def _find_text_folder(name: str, data_dir: Path | None) -> Path:
    """``<data_dir>/../text/<name>``, ``<data_dir>/text/<name>``, then ``../shared/datasets/text/<name>``."""
    return _find_shared("text", name, data_dir)


def _load_folder(folder: Path, name: str | None = None) -> GraphData:
    """A user's own graph as two tables: ``nodes.csv`` + ``edges.csv``, or the same as ``.parquet``.

    ``nodes``: ``node_id`` (integers or names), ``label`` (class names, or integers named by an optional
    ``classes.json``), and optionally ``text`` or ``title`` + ``abstract``, features (a ``features`` list
    column or numeric columns ``f0, f1, ...``) and ``split`` (train/val/test). ``edges``: ``src``, ``dst``.
    A malformed table stops here, naming its row, before any work.
    """
    kind = "csv" if (folder / "nodes.csv").is_file() or (folder / "edges.csv").is_file() else "parquet"
    nodes_path, edges_path = folder / f"nodes.{kind}", folder / f"edges.{kind}"
    nodes = _read_table(nodes_path, ["node_id", "label"])
    edges = _read_table(edges_path, ["src", "dst"])

    node_ids = _id_column(nodes, "node_id", nodes_path)
    first_row = {}
    for row, node in enumerate(node_ids.tolist()):
        if first_row.setdefault(node, row) != row:
            raise InputError(f"{nodes_path} row {row + 1}: node_id {node!r} repeats row {first_row[node] + 1}")

    def positions(column: str) -> np.ndarray:
        """Row positions in ``nodes`` of the node ids an edge column names."""
        ids = _id_column(edges, column, edges_path)
        found = [first_row.get(_same_kind(node, node_ids)) for node in ids.tolist()]
        if None in found:
            row = found.index(None)
            raise InputError(f"{edges_path} row {row + 1}: {column} names node_id {ids.tolist()[row]!r}, "
                             f"which is not in {nodes_path.name}")
        return np.asarray(found, dtype=np.int64)

    edge_index = torch.from_numpy(np.stack([positions("src"), positions("dst")]))
    y, class_names = _folder_labels(nodes, nodes_path, folder)
    text, titles = _folder_text(nodes, nodes_path)
    return _graph(
        name=name or folder.resolve().name,
        x=torch.from_numpy(_folder_features(nodes, nodes_path, has_text=text is not None)),
        edge_index=edge_index,
        y=torch.from_numpy(y),
        class_names=class_names,
        text=text,
        node_ids=node_ids,
        public_split=_folder_split(nodes, nodes_path),
        titles=titles,
    )


def _read_table(path: Path, required: list[str]) -> pa.Table:
    """A CSV file (pyarrow's reader: quoted commas, quotes and line breaks inside values) or a parquet file."""
    if not path.is_file():
        raise InputError(f"missing {path}: a dataset folder needs nodes.csv and edges.csv (or nodes.parquet "
                         "and edges.parquet)")
    try:
        if path.suffix == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path, parse_options=csv.ParseOptions(newlines_in_values=True),
                                 convert_options=csv.ConvertOptions(strings_can_be_null=False))
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read {path}: {_reason(err)}") from err
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path} lacks column(s) {', '.join(missing)} (expected {', '.join(required)})"
        )
    repeated = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    if table.num_rows == 0:  # a header alone reads as columns of type null, which every later check would misname
        raise InputError(f"{path} has a header but no rows")
    for name in table.column_names:
        if path.suffix == ".csv" and pa.types.is_binary(table.schema.field(name).type):  # how pyarrow reads non-UTF-8
            raise InputError(f"{path} row {_first_non_utf8(table.column(name).to_pylist())}: column {name!r} "
                             "is not UTF-8 text (save the file as UTF-8)")
    return table


def _first_non_utf8(values: list[bytes]) -> int:
    """The 1-based row of the first value that is not UTF-8."""
    for row, value in enumerate(values, 1):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return row


def _column(table: pa.Table, name: str) -> pa.Array:
    """One contiguous array; dictionary columns (pandas categoricals) become plain values."""
    array = table.column(name).combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _is_text(array: pa.Array) -> bool:
    return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _first_row(mask) -> int:
    """The 1-based row of the first true entry."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def _id_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """Node ids: int64, or str (paper ids, names); never missing or blank."""
    array = _column(table, name)
    if array.null_count:
        raise InputError(f"{path} row {_first_row(array.is_null())}: column {name!r} is empty")
    if pa.types.is_integer(array.type):
        return _int64(array, name, path)
    if not _is_text(array):
        raise InputError(f"{path}: column {name!r} must hold integers or names, not {array.type} "
                         f"(row 1 reads {array[0].as_py()!r})")
    values = np.asarray([v.strip() for v in array.to_pylist()], dtype=object)
    if (values == "").any():
        raise InputError(f"{path} row {_first_row(values == '')}: column {name!r} is empty")
    return values


def _int64(array: pa.Array, name: str, path: Path) -> np.ndarray:
    """An integer column as int64, in a writable copy (torch warns on read-only arrays); numpy's cast would
    wrap unsigned values beyond int64 round to negative ones."""
    try:
        return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False, writable=True)
    except pa.ArrowInvalid as err:
        raise InputError(f"{path}: column {name!r} holds integers beyond 64 bits ({_reason(err)})") from err


def _same_kind(node, node_ids: np.ndarray):
    """An edge's id in the node table's kind: "7" finds node 7 in a table of integer ids, 7 finds "7"."""
    if node_ids.dtype == object:
        return str(node)
    if isinstance(node, str):
        return int(node) if node.lstrip("-").isdigit() else node
    return node


def _folder_labels(nodes: pa.Table, path: Path, folder: Path) -> tuple[np.ndarray, list[str]]:
    """String labels name themselves; integer labels take names from ``classes.json``."""
    labels = _column(nodes, "label")
    if labels.null_count:
        raise InputError(f"{path} row {_first_row(labels.is_null())}: the label is missing")
    if _is_text(labels):
        values = np.asarray([v.strip() for v in labels.to_pylist()], dtype=object)
        if (values == "").any():
            raise InputError(f"{path} row {_first_row(values == '')}: the label is empty")
        class_names, y = np.unique(values, return_inverse=True)
        return y.astype(np.int64), [str(c) for c in class_names]
    if not pa.types.is_integer(labels.type):
        raise InputError(
            f"{path}: column 'label' must hold integers or strings, not {labels.type}"
        )
    y = _int64(labels, "label", path)
    classes_file = folder / "classes.json"
    if not classes_file.is_file():
        return y, _numbered_classes(y, path, "classes.json")
    try:
        class_names = json.loads(classes_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {classes_file} as JSON: {err}") from err
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise InputError(f"{classes_file} must be a JSON list of class names")
    return y, class_names


_FEATURE_COLUMN = re.compile(r"f\d+")


def _folder_features(nodes: pa.Table, path: Path, has_text: bool) -> np.ndarray:
    """A ``features`` list column, else the numeric columns ``f0, f1, ...``; ``[N, 0]`` for a graph of text alone."""
    if "features" in nodes.column_names:
        array = _column(nodes, "features")
        if not (
            pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)
        ):
            raise InputError(f"{path}: column 'features' must be a list of numbers per node")
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        values = array.flatten()
        if array.null_count or values.null_count or not (
            pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
        ):
            raise InputError(f"{path}: column 'features' must hold numbers without nulls")
        if lengths.size and (lengths != lengths[0]).any():
            raise InputError(f"{path}: every node's 'features' list must have the same length")
        width = int(lengths[0]) if lengths.size else 0
        return _float32(values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(array), width), path)
    columns = [name for name in nodes.column_names if _FEATURE_COLUMN.fullmatch(name)]
    if not columns:
        if has_text:  # --features makes them from the text
            return np.zeros((nodes.num_rows, 0), dtype=np.float32)
        raise InputError(
            f"{path} has no features and no text: add a list column 'features', "
            "numeric columns named f0, f1, ... or a 'text' column"
        )
    stacked = []
    for name in columns:
        array = _column(nodes, name)
        if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
            raise InputError(f"{path}: feature column {name!r} must hold numbers, not {array.type}")
        if array.null_count:
            raise InputError(f"{path} row {_first_row(array.is_null())}: feature column {name!r} is empty")
        stacked.append(array.to_numpy(zero_copy_only=False).astype(np.float64))
    return _float32(np.stack(stacked, axis=1), path)


def _float32(features: np.ndarray, path: Path) -> np.ndarray:
    """Features as float32; a finite number beyond its range is refused, as the cast would make it infinite
    with a warning on the user's stderr."""
    beyond = np.isfinite(features) & (np.abs(features) > np.finfo(np.float32).max)
    if beyond.any():
        row, column = np.argwhere(beyond)[0]
        raise InputError(f"{path} row {row + 1}: feature {column} is {features[row, column]:g}, "
                         "beyond the range of float32")
    return features.astype(np.float32)


def _text_column(nodes: pa.Table, name: str, path: Path) -> list[str] | None:
    if name not in nodes.column_names:
        return None
    array = _column(nodes, name)
    if not _is_text(array):
        example = next((v for v in array.to_pylist() if v is not None), None)
        raise InputError(f"{path} row 1: column {name!r} must hold text, not {array.type} (row 1 reads {example!r})")
    return [t.strip() if t is not None else "" for t in array.to_pylist()]


def _folder_text(nodes: pa.Table, path: Path) -> tuple[list[str] | None, list[str] | None]:
    """Each node's text and its title: a ``title`` column beside ``abstract`` or ``text``, or a ``text`` column
    alone (whose titles are split off where the table follows TAPE's "Title : Abstract" convention)."""
    title, abstract, text = (_text_column(nodes, name, path) for name in ("title", "abstract", "text"))
    body = abstract if abstract is not None else text
    if title is None:
        return body, split_titles(body) if body is not None else None
    if body is None:
        return title, None
    return [f"{t}\n{b}".strip() for t, b in zip(title, body)], title


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


def title_and_rest(data: GraphData, node: int) -> tuple[str, str]:
    """Node ``node``'s title and the rest of its text (its abstract); ``("", text)`` where it has no title."""
    text = data.text[node]
    title = data.titles[node] if data.titles is not None else ""
    if not title:
        return "", text
    start = text.find(title)
    rest = text[start + len(title):] if start >= 0 else text
    return title, rest.lstrip(' ,.:"\'“”\n\t')


def _folder_split(nodes: pa.Table, path: Path) -> np.ndarray | None:
    """An optional ``split`` column of train/val/test; empty cells mean "unused" (-1)."""
    if "split" not in nodes.column_names:
        return None
    values = [v.strip() if isinstance(v, str) else v for v in _column(nodes, "split").to_pylist()]
    bad = sorted({str(v) for v in values if v not in (None, "") and v not in _SPLIT_CODES})
    if bad:
        raise InputError(
            f"{path}: column 'split' must hold {', '.join(SPLIT_NAMES)} or nothing, "
            f"found {', '.join(bad)}"
        )
    return np.array([_SPLIT_CODES.get(v, -1) for v in values], dtype=np.int8)
