"""Planetoid (Cora, CiteSeer, PubMed) via PyG, from a read-only data folder or a download."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from .graph import GraphData, _graph, _mirror, _resolve_data_dir, _split_from_masks

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
NAMES = tuple(_PLANETOID)
_PLANETOID_RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def load(key: str, data_dir: str | Path | None, cache_dir: Path, seed: int = 0) -> GraphData:
    """Cora/CiteSeer/PubMed via PyG, processed in ``cache_dir`` so ``data_dir`` stays untouched."""
    from torch_geometric.datasets import Planetoid

    data_dir = _resolve_data_dir(data_dir)

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
