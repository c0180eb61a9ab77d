"""Dr.E from Python: fit on a PyG ``Data``, answer for its nodes and for new ones, save and load the model.

The command line calls the same methods (:mod:`dre_pipeline.cli`), and the artifact store stays underneath: a
second :meth:`DrE.fit` with the same graph and settings is a cache hit.

    from dre_pipeline import DrE, load_pyg

    data = load_pyg("cora-text")           # torch_geometric Data with data.text and data.class_names
    model = DrE(ft_epochs=2).fit(data)      # the codebook, stage one and the LoRA fine-tune
    answers = model.predict("test")
    print(answers.accuracy, answers.table.to_pandas().head())
    model.save("cora-text-dre")             # safetensors and JSON; DrE.load("cora-text-dre") answers anywhere
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import pyarrow as pa
import torch

from .data import SPLIT_NAMES, GraphData
from .data.extend import NewNodes, read_new_nodes
from .data.pyg import from_pyg
from .errors import InputError
from .pipeline import bundle as bundles, commands
from .pipeline.artifacts import Artifact, Store
from .pipeline.config import FinetuneConfig


@dataclass(frozen=True)
class Predictions:
    """Answers for some nodes: one dict per node in ``rows`` (as ``predict --format json`` prints them)."""

    rows: list
    class_names: list

    @property
    def table(self) -> pa.Table:
        """node_id, split, label, prediction, correct, and one score column per class (log-probabilities)."""
        return answers_table(self.rows, self.class_names)

    @property
    def scores(self) -> torch.Tensor:
        """``[n, C]`` the classes' log-probabilities, in the order of ``class_names``."""
        return torch.tensor([[row["scores"][name] for name in self.class_names] for row in self.rows])

    @property
    def predicted(self) -> torch.Tensor:
        """``[n]`` the predicted class ids."""
        return self.scores.argmax(1)

    @property
    def accuracy(self) -> Optional[float]:
        """The share answered correctly among the nodes with a known label (None: no label known)."""
        known = [row["correct"] for row in self.rows if row["correct"] is not None]
        return sum(known) / len(known) if known else None


def answers_table(rows: list, class_names: list) -> pa.Table:
    """:attr:`Predictions.table` of ``rows``; its columns' types do not depend on the rows, so that the chunks of
    one answer (:meth:`DrE.predict_chunks`) make one table (a chunk without labels too)."""
    columns = {key: pa.array([row[key] for row in rows], type) for key, type in (
        ("node_id", None), ("split", pa.string()), ("label", pa.string()), ("prediction", pa.string()),
        ("correct", pa.bool_()))}
    columns.update({f"score:{name}": pa.array([row["scores"][name] for row in rows], pa.float64())
                    for name in class_names})
    return pa.table(columns)


def check_answers_path(path: Path) -> None:
    if path.suffix != ".parquet" or path.is_dir() or not path.parent.is_dir():
        raise InputError(f"{path}: the answers are written as Parquet, name a .parquet file in a folder that exists")


def write_answers(chunks: Iterable[list], path: Path) -> tuple:
    """Each chunk of rows (:meth:`DrE.predict_chunks`) into the Parquet file ``path`` as it comes, with
    :func:`answers_table`'s columns, through a temporary file: a stopped run leaves no half-written answer.
    Returns (rows, correct, labelled)."""
    import pyarrow.parquet as pq

    check_answers_path(path)
    tmp, writer, counts = path.with_name(path.name + ".tmp"), None, [0, 0, 0]
    try:
        for rows in chunks:
            table = answers_table(rows, list(rows[0]["scores"]))
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))  # node ids: the first chunk's type
            known = [row["correct"] for row in rows if row["correct"] is not None]
            counts = [counts[0] + len(rows), counts[1] + sum(known), counts[2] + len(known)]
        if writer is None:
            raise InputError("no node to answer for")
        writer.close()
        tmp.rename(path)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return tuple(counts)


class DrE:
    """Dr.E with its settings: any option of ``dre-pipeline finetune`` as a keyword (``ft_epochs=2``,
    ``llm_path=...``); ``store``: the artifact store; ``device``: auto, cpu or cuda[:N]; ``quiet``: no progress bars;
    ``log_dir``: TensorBoard scalars of the stages :meth:`fit` trains."""

    def __init__(self, store: Union[str, Path, Store] = "artifacts", device: str = "auto", quiet: bool = False,
                 log_dir: Optional[Union[str, Path]] = None, **settings):
        self.cfg, self.given = FinetuneConfig(**settings), set(settings)
        self.store = store if isinstance(store, Store) else Store(Path(store))
        self.device, self.quiet = device, quiet
        self.log_dir = Path(log_dir) if log_dir is not None else None  # TensorBoard scalars of what fit trains
        self.graph: Optional[GraphData] = None  # a graph given in Python (else the settings' dataset)
        self.bundle: Optional[bundles.Bundle] = None  # a loaded model: answers come from it, not from the store

    @classmethod
    def from_config(cls, cfg: FinetuneConfig, store: Store, device: str = "auto", quiet: bool = False,
                    log_dir: Optional[Path] = None) -> "DrE":
        model = cls(store, device, quiet, log_dir)
        model.cfg = cfg
        return model

    def fit(self, data=None, text: Optional[list] = None, class_names: Optional[list] = None,
            name: Optional[str] = None, force: bool = False) -> "DrE":
        """Both stages on ``data`` (a PyG ``Data``; texts and class names on it or given here; None: the
        ``dataset`` setting). A ``Data`` with train/val/test masks is split by them unless ``split`` was set."""
        if data is not None:
            self.graph = from_pyg(data, text, class_names, name or "graph")
            split = "public" if self.graph.public_split is not None and "split" not in self.given else self.cfg.split
            self.cfg = replace(self.cfg, dataset=self.graph.name, split=split)
        self.bundle = None
        self.artifact: Artifact = commands.finetune(self.cfg, self.store, force, self.quiet, self.device, self.graph,
                                                    self.log_dir)
        return self

    def predict(self, nodes=None, new_nodes: Union[NewNodes, tuple, None] = None, recode: bool = False) -> Predictions:
        """Answers for ``nodes``: a split's name ("test"), node ids, or a boolean mask over the graph (None: every
        new node where ``new_nodes`` are given, else every node). ``new_nodes``: a :class:`NewNodes` or the
        (node table, edge table) paths of nodes to add first; ``recode``: the graph's own nodes take the extended
        graph's codes."""
        rows = [row for chunk in self.predict_chunks(nodes, new_nodes, recode) for row in chunk]
        return Predictions(rows, list(rows[0]["scores"]) if rows else [])

    def predict_chunks(self, nodes=None, new_nodes: Union[NewNodes, tuple, None] = None,
                       recode: bool = False) -> Iterator[list]:
        """:meth:`predict`'s rows a chunk of nodes at a time, each scored when it is asked for: a large graph's
        answers can be written as they come (``predict --out``) instead of held whole."""
        ids, part = self._nodes(nodes)
        if self.bundle is not None:
            return commands.predict_chunks_with_bundle(self.bundle, self.cfg, self.store, ids, self.device,
                                                       self.quiet, new_nodes, recode, self.graph, part)
        return commands.predict_chunks(self.cfg, self.store, ids, self.device, self.quiet, new_nodes, recode,
                                       self.graph, part)

    def explain(self, node) -> dict:
        """One node's words per hop, its text, the prompt, the prediction with per-class scores, the true label."""
        return self.predict([node]).rows[0]

    def save(self, path: Union[str, Path]) -> Path:
        """The fitted model as a bundle in ``path`` (a new folder): see :mod:`~dre_pipeline.pipeline.bundle`."""
        if self.bundle is not None:
            raise InputError("this model was loaded from a bundle: copy its folder instead")
        return commands.export(self.cfg, self.store, Path(path), self.device, self.quiet, self.graph)

    @classmethod
    def load(cls, path: Union[str, Path], llm_path: Optional[str] = None, store: Union[str, Path, Store] = "artifacts",
             device: str = "auto", quiet: bool = False, **data_settings) -> "DrE":
        """A saved bundle, to answer with (:meth:`predict`, :meth:`explain`) on the graph it trained on or another
        with its classes and features: its ``dataset`` setting, another given here, or a graph passed to
        :meth:`on`. ``llm_path``: the bundle's LLM (default: the embedded SmolLM2), refused where it differs."""
        model = cls(store, device, quiet)
        model.bundle = bundles.read(Path(path))
        model.cfg = replace(model.bundle.cfg, llm_path=llm_path, **data_settings)
        return model

    def on(self, data, text: Optional[list] = None, class_names: Optional[list] = None,
           name: Optional[str] = None) -> "DrE":
        """Answer on the PyG graph ``data`` from now on (a loaded bundle on a graph built in Python)."""
        self.graph = from_pyg(data, text, class_names, name or "graph")
        self.cfg = replace(self.cfg, dataset=self.graph.name)
        return self

    @staticmethod
    def _nodes(nodes) -> tuple:
        """(node ids or None, a split's name or None) of what :meth:`predict` was given."""
        if nodes is None:
            return None, None
        if isinstance(nodes, str):
            if nodes not in SPLIT_NAMES:
                raise InputError(f"nodes: a split's name is one of {', '.join(SPLIT_NAMES)}, got {nodes!r}")
            return None, nodes
        if isinstance(nodes, torch.Tensor) and nodes.dtype == torch.bool:
            return nodes.nonzero().view(-1).tolist(), None
        return [n.item() if hasattr(n, "item") else n for n in nodes], None


def load_pyg(name: str, data_dir: Optional[str] = None, store: Union[str, Path] = "artifacts"):
    """A dataset of this package (``cora-text``, ``cora``, a folder of node and edge tables, ...) as a PyG
    ``Data`` with ``data.text`` and ``data.class_names`` (and masks where it ships a split)."""
    from .data import load_dataset
    from .data.pyg import to_pyg

    return to_pyg(load_dataset(name, data_dir, Path(store) / "data"))


__all__ = ["DrE", "Predictions", "answers_table", "load_pyg", "read_new_nodes", "write_answers"]
