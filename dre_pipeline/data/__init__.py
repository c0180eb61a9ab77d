"""Graphs in one in-memory form (:class:`GraphData`), loaded from any source, and their splits."""

from .graph import (DATA_DIR_ENV, DATASETS, SPLIT_NAMES, GraphData, load_dataset, make_split, split_names,
                    split_titles, title_and_rest)

__all__ = ["DATA_DIR_ENV", "DATASETS", "SPLIT_NAMES", "GraphData", "load_dataset", "make_split", "split_names",
           "split_titles", "title_and_rest"]
