"""How much of a node's text `--max-text-tokens` keeps, and what the cut costs in class signal.

For each budget: the mean text tokens per prompt (what fine-tuning pays for), and the
validation accuracy of a bag-of-words logistic regression on the words inside the first
N tokens (C chosen on validation), over the random 60/20/20 splits of seeds 0-2. The text is
the prompt's (``prompts.node_text``: title first where the graph gives titles); on such a graph
the title alone and the title with the abstract's first sentence come first. The LLM is not in
the loop: this measures what truncation removes, cheaply, on every budget.

    python benchmarks/text_budget.py [--dataset cora-ml | cora-text]
"""

import argparse
import statistics
from pathlib import Path

from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from transformers import AutoTokenizer

from dre_pipeline.data import load_dataset, make_split, title_and_rest
from dre_pipeline.pipeline.llm import embedded_gguf
from dre_pipeline.model.prompts import node_text

BUDGETS = (16, 32, 48, 64, 96, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cora-ml")
    args = parser.parse_args()
    data = load_dataset(args.dataset, None, Path("artifacts") / "data")
    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    parts = [title_and_rest(data, i) for i in range(data.num_nodes)]
    token_ids = [tokenizer(node_text(*part), add_special_tokens=False).input_ids for part in parts]
    labels = data.y.numpy()
    splits = [make_split(data, "random", seed) for seed in range(3)]

    def signal(texts: list) -> list:
        words = CountVectorizer(binary=True).fit_transform(texts)
        accuracies = []
        for split in splits:
            train, val = split == 0, split == 1
            accuracies.append(100 * max(
                LogisticRegression(C=c, max_iter=2000).fit(words[train], labels[train]).score(words[val], labels[val])
                for c in (0.1, 1.0)))
        return accuracies

    print(f"{args.dataset}: {data.num_nodes} nodes, text tokens per node: mean "
          f"{statistics.mean(map(len, token_ids)):.1f}, max {max(map(len, token_ids))}")
    print("| budget | text tokens per prompt | nodes cut | bag-of-words val accuracy % (3 seeds) |")
    print("|---:|---:|---:|---|")
    variants = []
    if data.titles is not None:  # the title alone, then with the abstract's first sentence
        variants += [("title", [node_text(title, "") for title, _ in parts]),
                     ("title + 1st sentence", [node_text(title, rest.split(". ")[0]) for title, rest in parts])]
    variants += [(str(budget), [tokenizer.decode(ids[:budget]) for ids in token_ids]) for budget in BUDGETS]
    for name, texts in variants:
        lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        accuracies = signal(texts)
        kept = statistics.mean(lengths)
        cut = sum(len(ids) > length for ids, length in zip(token_ids, lengths)) / len(token_ids)
        print(f"| {name} | {kept:.1f} | {100 * cut:.0f} % | "
              f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f} |")

if __name__ == "__main__":
    main()
