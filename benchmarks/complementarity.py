"""How complementary the text-only LLM and the stage-one head are, on validation nodes.

For each seed whose bench rows are in the store: the validation accuracy of the stage-one
label head, of the LLM fine-tuned on the text alone (bench row ``text``) and of Dr.E with
words and text (row ``dre``); how often each is right where the other is wrong; and the
accuracy of an oracle that picks, per node, whichever of the two is right: the headroom a
reader of the text has over the head. Nothing is trained here: the artifacts must exist.

    python benchmarks/complementarity.py --dataset cora-text --store /work/store_text [--seeds 1]
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dre_pipeline.artifacts import Store
from dre_pipeline.bench import ROWS
from dre_pipeline.config import FinetuneConfig
from dre_pipeline.errors import InputError
from dre_pipeline.stages.workspace import head_distribution, prepare

BENCH_EPOCHS = 2  # bench's --ft-epochs, which names the rows' artifacts


def predictions(cfg: FinetuneConfig, store: Store):
    """(workspace, each node's predicted class) of the fine-tuned LLM under ``cfg``, or None if not in the store."""
    try:
        ws = prepare(cfg, store, quiet=True, cached_only=True)
    except InputError:
        return None
    found = store.find("finetune", ws.key)
    if found is None:
        return None
    table = pq.read_table(found.path / "predictions.parquet")
    position = {node: i for i, node in enumerate(ws.data.node_ids.tolist())}
    predicted = np.full(ws.data.num_nodes, -1)
    predicted[[position[n] for n in table["node_id"].to_pylist()]] = table["prediction"].to_numpy()
    return ws, predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cora-text")
    parser.add_argument("--store", default="artifacts")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    store = Store(Path(args.store))
    print("| seed | head | text-only LLM | Dr.E (words + text) | text right, head wrong | head right, text wrong "
          "| oracle (head or text) | Dr.E right, head wrong | head right, Dr.E wrong | oracle (head or Dr.E) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        base = {"dataset": args.dataset, "seed": seed, "ft_epochs": BENCH_EPOCHS}
        text = predictions(FinetuneConfig(**base, **ROWS["text"].overrides), store)
        dre = predictions(FinetuneConfig(**base, **ROWS["dre"].overrides), store)
        if text is None and dre is None:
            continue
        ws = (text or dre)[0]
        val = ws.split == 1
        y = ws.data.y.numpy()[val]
        head = head_distribution(ws).argmax(1).numpy()[val] == y
        cells = [f"{100 * head.mean():.2f}"]
        pairs = []
        for found in (text, dre):
            right = found[1][val] == y if found else None
            cells.append(f"{100 * right.mean():.2f}" if found else "–")
            pairs.append(right)
        for right in pairs:
            cells += ([f"{100 * (right & ~head).mean():.2f}", f"{100 * (head & ~right).mean():.2f}",
                       f"{100 * (head | right).mean():.2f}"] if right is not None else ["–"] * 3)
        print(f"| {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
