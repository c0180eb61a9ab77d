"""Do the training labels of a node's neighbours tell the LLM what the GNN's words do not?

A candidate for issue 11 (the LLM should beat the GNN that wrote its words): put the
labels of a node's labelled neighbours in its prompt. Before building it, this measures
on validation whether that signal adds to a GraphSAGE at all: GraphSAGE exactly as the
bench's `sage` row trains it (best validation epoch), the same model after PyG's Correct and Smooth (which
propagates the training labels over the graph), and the majority label of a node's
labelled neighbours alone, over the random 60/20/20 splits of seeds 0-2.

    python benchmarks/label_signal.py [--datasets cora,cora-ml]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.nn import CorrectAndSmooth

from dre_pipeline.harness.baselines import train_gnn
from dre_pipeline.data import load_dataset, make_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="cora,cora-ml")
    args = parser.parse_args()
    print("| graph | seed | GraphSAGE val % | + Correct and Smooth val % | neighbour majority val % | "
          "val nodes with a labelled neighbour |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.datasets.split(","):
        data = load_dataset(name, None, Path("artifacts") / "data")
        for seed in range(3):
            split = torch.from_numpy(make_split(data, "random", seed))
            train, val = split == 0, split == 1
            sage = train_gnn("sage", data, split.numpy(), seed)
            with torch.no_grad():
                probabilities = sage["model"](data.x, data.edge_index).softmax(-1)
            smoother = CorrectAndSmooth(num_correction_layers=50, correction_alpha=0.5, num_smoothing_layers=50,
                                        smoothing_alpha=0.8, autoscale=True)
            corrected = smoother.correct(probabilities, data.y[train], train, data.edge_index)
            smoothed = smoother.smooth(corrected, data.y[train], train, data.edge_index)
            smoothed_accuracy = (smoothed.argmax(1)[val] == data.y[val]).float().mean().item()
            known = F.one_hot(data.y, data.num_classes).float() * train[:, None]
            counts = torch.zeros_like(known).index_add_(0, data.edge_index[1], known[data.edge_index[0]])
            majority = (counts.argmax(1)[val] == data.y[val]).float().mean().item()
            labelled = (counts.sum(1)[val] > 0).float().mean().item()
            print(f"| {name} | {seed} | {100 * sage['val']['accuracy']:.2f} | {100 * smoothed_accuracy:.2f} | "
                  f"{100 * majority:.2f} | {100 * labelled:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
