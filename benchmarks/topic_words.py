"""Do a node's code words read as its topic? The codebook options and the keyword loss, side by side.

Each entry of ``CODEBOOKS`` is a stage-one setting: the whole codebook or ``--text-codebook``,
each with or without ``--keyword-weight`` (:mod:`dre_pipeline.model.grounding`).

Issue 12 asks for words a person reads as topic words. Measured here on a text-attributed
graph, per seed, over the test nodes' code words (every hop, every level):

- in text: the share of code words that occur anywhere in the graph's text;
- topical: the share that are topic words of the node's own class, i.e. words whose
  document frequency among the *training* papers of that class is at least ``LIFT`` times
  their document frequency among all training papers (test labels are only compared with);
- distinct: how many different words the test nodes' codes use.

The head's validation / test accuracy is printed beside, as in VALIDATION.md: an option
that reads better but separates the classes worse would not be a default.

    python benchmarks/topic_words.py [--dataset cora-ml] [--store artifacts] [--seeds 3]
        [--codebooks "whole;graph text, keywords"]
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.data import text_vocabulary
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.resolve import resolve

LIFT = 2.0
MIN_CLASS_PAPERS = 5  # a word in fewer training papers of a class is not called its topic
CODEBOOKS = {
    "whole": {},
    "graph text": {"text_codebook": True},
    "whole, keywords": {"keyword_weight": 1.0},
    "graph text, keywords": {"text_codebook": True, "keyword_weight": 1.0},
    "graph text, keywords 0.1": {"text_codebook": True, "keyword_weight": 0.1},
}


def topic_words(texts: list, labels: np.ndarray, train: np.ndarray) -> dict:
    """Per class, the words over-represented in that class's training papers."""
    documents = [text_vocabulary([text]) for text in texts]
    overall = Counter(word for i in np.flatnonzero(train) for word in documents[i])
    topics = {}
    for label in np.unique(labels[train]):
        members = np.flatnonzero(train & (labels == label))
        in_class = Counter(word for i in members for word in documents[i])
        base = train.sum()
        topics[label] = {word for word, count in in_class.items()
                         if count >= MIN_CLASS_PAPERS and count / len(members) >= LIFT * overall[word] / base}
    return topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cora-ml")
    parser.add_argument("--store", default="artifacts")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--codebooks", default=";".join(CODEBOOKS), help="names of CODEBOOKS, separated by semicolons")
    args = parser.parse_args()
    store = Store(Path(args.store))
    print("| codebook | seed | head val / test % | in text % | topical % | distinct words |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.codebooks.split(";"):
        options = CODEBOOKS[name]
        for seed in range(args.seeds):
            cfg = EncodeConfig(dataset=args.dataset, seed=seed, **options)
            data = resolve(cfg, store).data
            artifact = commands.encode(cfg, store, quiet=True)
            table = pq.read_table(artifact.path / "codes.parquet")
            labels, split = table["label"].to_numpy(), np.asarray(table["split"].to_pylist())
            topics = topic_words(data.text, labels, split == "train")
            vocabulary = text_vocabulary(data.text)
            words = [(word.lower(), label) for t in range(1, cfg.num_views + 1)
                     for row, label, part in zip(table[f"view{t}_words"].to_pylist(), labels, split)
                     if part == "test" for word in row]
            in_text = np.mean([word in vocabulary for word, _ in words])
            topical = np.mean([word in topics[label] for word, label in words])
            head = artifact.manifest["label_head_accuracy"]
            print(f"| {name} | {seed} | {100 * head['val']:.2f} / "
                  f"{100 * head['test']:.2f} | {100 * in_text:.1f} | {100 * topical:.1f} | "
                  f"{len({word for word, _ in words})} |", flush=True)


if __name__ == "__main__":
    main()
