"""Graphs in one in-memory form and their splits (:mod:`.graph`), one file per source.

``graph.py``: :class:`GraphData` and its guarantees, splits, fingerprints, titles and the helpers every
source shares; ``planetoid.py``: Cora, CiteSeer, PubMed; ``ogb.py``: ogbn-arxiv; ``npz.py``: the
sparse-npz layout (Cora-ML, the gnn-benchmark collection); ``tables.py``: a folder of ``nodes.csv`` +
``edges.csv`` (or parquet) tables (Cora with its text is one); ``synthetic.py``: a generated graph.
Here: :data:`SOURCES`, each built-in name's source, and :func:`load_dataset`, which picks one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .graph import (DATA_DIR_ENV, SPLIT_NAMES, GraphData, make_split, split_names, split_titles,
                    text_vocabulary, title_and_rest)
from . import npz, ogb, planetoid, synthetic, tables

__all__ = ["DATA_DIR_ENV", "DATASETS", "SOURCES", "SPLIT_NAMES", "GraphData", "load_dataset", "make_split",
           "split_names", "split_titles", "text_vocabulary", "title_and_rest"]

# Each built-in dataset's source: a module's ``load(name, data_dir, cache_dir, seed)``.
SOURCES = {**dict.fromkeys(planetoid.NAMES, planetoid.load), **dict.fromkeys(npz.NAMES, npz.load),
           **dict.fromkeys(tables.NAMES, tables.load), **dict.fromkeys(ogb.NAMES, ogb.load),
           **dict.fromkeys(synthetic.NAMES, synthetic.load)}
DATASETS = tuple(SOURCES)


def load_dataset(
    name: str, data_dir: str | Path | None, cache_dir: str | Path, seed: int = 0
) -> GraphData:
    """Load a built-in dataset by name (its source in :data:`SOURCES`), an ``.npz`` file or a folder of tables.

    ``data_dir`` (or ``$DRE_DATA_DIR``) points at pre-downloaded raw files for the real
    datasets so that no internet is needed; it is only ever read.  Anything that has to be
    written (copies, processed files, downloads) goes under ``cache_dir``.  ``seed`` only
    affects the synthetic graph.
    """
    key = name.lower()
    if key in SOURCES:
        return SOURCES[key](key, data_dir, Path(cache_dir), seed)
    if name.endswith(".npz"):
        if not Path(name).is_file():
            raise InputError(f"npz dataset {name!r} does not exist")
        return npz.load_file(Path(name), Path(name).stem)
    if Path(name).is_dir():
        return tables.load_folder(Path(name))
    raise InputError(
        f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} "
        "or an .npz file (sparse-npz layout) or a folder holding nodes.csv and edges.csv (or .parquet)"
    )
