"""Graphs in one in-memory form and their splits (:mod:`.graph`), one file per source.

``graph.py``: :class:`GraphData` and its guarantees, splits, fingerprints, titles and the helpers every
source shares; ``planetoid.py``: Cora, CiteSeer, PubMed; ``ogb.py``: ogbn-arxiv; ``npz.py``: the
sparse-npz layout (Cora-ML, the gnn-benchmark collection); ``tables.py``: a folder of ``nodes.csv`` +
``edges.csv`` (or parquet) tables (Cora with its text is one); ``synthetic.py``: a generated graph.
Here: :func:`load_dataset`, which picks the source.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .graph import (DATA_DIR_ENV, SPLIT_NAMES, GraphData, _resolve_data_dir, make_split, split_names,
                    split_titles, title_and_rest)
from .npz import _NPZ, _find_npz, _load_npz
from .ogb import _load_arxiv
from .planetoid import _PLANETOID, _load_planetoid
from .synthetic import _make_synthetic
from .tables import _TEXT_FOLDERS, _find_text_folder, _load_folder

__all__ = ["DATA_DIR_ENV", "DATASETS", "SPLIT_NAMES", "GraphData", "load_dataset", "make_split", "split_names",
           "split_titles", "title_and_rest"]

DATASETS = ("cora", "citeseer", "pubmed", "cora-ml", "cora-text", "ogbn-arxiv", "synthetic")


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
