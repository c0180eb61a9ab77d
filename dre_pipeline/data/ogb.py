"""ogbn-arxiv via the optional ``ogb`` package."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .graph import GraphData, _graph, _mirror, _resolve_data_dir, _split_from_masks

_ARXIV_DIR = "ogbn_arxiv"
_ARXIV_RELEASE = "RELEASE_v1.txt"  # ogb asks on stdin when this marker is missing


NAMES = ("ogbn-arxiv",)


def load(name: str, data_dir: str | Path | None, cache_dir: Path, seed: int = 0) -> GraphData:
    """ogbn-arxiv via the optional ``ogb`` package, imported only when asked for."""
    data_dir = _resolve_data_dir(data_dir)
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
