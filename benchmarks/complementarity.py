"""How complementary the text-only LLM and the stage-one head are, on validation nodes.

For each seed whose bench rows are in the store: the validation accuracy of the stage-one
label head, of the LLM fine-tuned on the text alone (bench row ``text``) and of Dr.E with
words and text (row ``dre``); how often each is right where the other is wrong; and the
accuracy of an oracle that picks, per node, whichever of the two is right: the headroom a
reader of the text has over the head. Then what a real combiner gets of that headroom: the
log-linear pool ``(1 - w) log p_LLM + w log p_head``, with ``w`` chosen on one half of the
validation nodes and scored on the other (both ways), so the estimate never sees the nodes it
was chosen on. Nothing is trained here: the artifacts must exist.

    python benchmarks/complementarity.py --dataset cora-text --store /work/store_text [--seeds 1]
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.harness.rows import ROWS
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.errors import InputError
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.stages.finetune.workspace import head_distribution

BENCH_EPOCHS = 2  # bench's --ft-epochs, which names the rows' artifacts


POOL_WEIGHTS = np.round(np.linspace(0, 1, 21), 2)


def predictions(cfg: FinetuneConfig, store: Store):
    """(workspace, each node's class log-probabilities [N, C]) of the fine-tuned LLM under ``cfg``, or None
    if not in the store (rows of nodes it did not score are NaN)."""
    try:
        ws = commands.workspace(cfg, store, quiet=True, cached_only=True)
    except InputError:
        return None
    found = store.find("finetune", ws.key)
    if found is None:
        return None
    table = pq.read_table(found.path / "predictions.parquet")
    position = {node: i for i, node in enumerate(ws.data.node_ids.tolist())}
    scores = np.stack(table["scores"].to_numpy(zero_copy_only=False))
    log_probs = np.full((ws.data.num_nodes, scores.shape[1]), np.nan)
    log_probs[[position[n] for n in table["node_id"].to_pylist()]] = scores - np.logaddexp.reduce(scores, 1, keepdims=True)
    return ws, log_probs


def pooled_accuracy(head: np.ndarray, llm: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple:
    """(cross-fitted accuracy of the log-linear pool, the weight the whole set picks), on one set of nodes.

    Each half picks the smallest head weight reaching its best accuracy (the LLM's own answer unless the head
    helps), and is scored with the weight the other half picked.
    """
    def right(rows, w):
        return ((1 - w) * llm[rows] + w * head[rows]).argmax(1) == y[rows]

    def pick(rows):
        return POOL_WEIGHTS[np.argmax([right(rows, w).mean() for w in POOL_WEIGHTS])]

    halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
    correct = sum(right(scored, pick(chosen)).sum() for chosen, scored in (halves, halves[::-1]))
    return correct / len(y), pick(np.arange(len(y)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cora-text")
    parser.add_argument("--store", default="artifacts")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    store = Store(Path(args.store))
    print("| seed | head | text-only LLM | Dr.E (words + text) | text right, head wrong | head right, text wrong "
          "| oracle (head or text) | pool (head, text), cross-fitted (w) | Dr.E right, head wrong | head right, Dr.E wrong "
          "| oracle (head or Dr.E) | pool (head, Dr.E), cross-fitted (w) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        base = {"dataset": args.dataset, "seed": seed, "ft_epochs": BENCH_EPOCHS}
        text = predictions(FinetuneConfig(**base, **ROWS["text"].overrides), store)
        dre = predictions(FinetuneConfig(**base, **ROWS["dre"].overrides), store)
        if text is None and dre is None:
            continue
        ws = (text or dre)[0]
        val = ws.split == 1
        y = ws.data.y.numpy()[val]
        head_log_probs = head_distribution(ws).clamp_min(1e-12).log().numpy()[val]
        head = head_log_probs.argmax(1) == y
        cells = [f"{100 * head.mean():.2f}"]
        pairs = []
        for found in (text, dre):
            right = found[1][val].argmax(1) == y if found else None
            cells.append(f"{100 * right.mean():.2f}" if found else "–")
            pairs.append((right, found))
        for right, found in pairs:
            if right is None:
                cells += ["–"] * 4
                continue
            pooled, weight = pooled_accuracy(head_log_probs, found[1][val], y, seed)
            cells += [f"{100 * (right & ~head).mean():.2f}", f"{100 * (head & ~right).mean():.2f}",
                      f"{100 * (head | right).mean():.2f}", f"{100 * pooled:.2f} ({weight:.2f})"]
        print(f"| {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
