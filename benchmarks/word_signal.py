"""How much class signal do a node's code words carry, whoever reads them?

Issue 11 asks the LLM to beat the stage-one head that reads the same words. This gives
the ceiling: a logistic regression on the bag of each node's codes (one block of the
codebook per view; C chosen on validation) against the head, on stage one's own codes,
over the random 60/20/20 splits of seeds 0-2. Where the best bag-of-codes model does no
better than the head, the words hold no more than the head already takes from them, and
an LLM reading only them has nothing more to find.

    python benchmarks/word_signal.py [--datasets cora,cora-ml] [--store artifacts]
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sparse
from sklearn.linear_model import LogisticRegression

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.stages.code_table import read_codes

STRENGTHS = (0.1, 0.3, 1.0, 3.0, 10.0)


def bag_of_codes(codes: np.ndarray) -> sparse.csr_matrix:
    """``[N, T, K]`` codes → ``[N, T * M]`` counts: each view's words in a block of their own."""
    (n, views, k), codebook_size = codes.shape, int(codes.max()) + 1
    columns = (codes + codebook_size * np.arange(views)[None, :, None]).reshape(n, -1)
    rows = np.repeat(np.arange(n), views * k)
    return sparse.csr_matrix((np.ones(rows.size), (rows, columns.ravel())), shape=(n, views * codebook_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="cora,cora-ml")
    parser.add_argument("--store", default="artifacts")
    args = parser.parse_args()
    store = Store(Path(args.store))
    print("| graph | seed | head val / test % | bag of codes val / test % | C |")
    print("|---|---:|---|---|---:|")
    for name in args.datasets.split(","):
        for seed in range(3):
            cfg = EncodeConfig(dataset=name, seed=seed)
            artifact = commands.encode(cfg, store, quiet=True)
            table = pq.read_table(artifact.path / "codes.parquet")
            features = bag_of_codes(read_codes(artifact.path / "codes.parquet", cfg.num_views))
            labels, split = table["label"].to_numpy(), np.asarray(table["split"].to_pylist())
            train, val, test = split == "train", split == "val", split == "test"
            fits = [LogisticRegression(C=c, max_iter=2000).fit(features[train], labels[train]) for c in STRENGTHS]
            scores = [(model.predict(features[val]) == labels[val]).mean() for model in fits]
            best = int(np.argmax(scores))
            test_accuracy = (fits[best].predict(features[test]) == labels[test]).mean()
            head = artifact.manifest["label_head_accuracy"]
            print(f"| {name} | {seed} | {100 * head['val']:.2f} / {100 * head['test']:.2f} | "
                  f"{100 * scores[best]:.2f} / {100 * test_accuracy:.2f} | {STRENGTHS[best]} |", flush=True)


if __name__ == "__main__":
    main()
