"""Inductive accuracy on Cora-text: papers the pipeline never saw, added as new nodes after it was trained.

Per seed s, ``prepare`` holds ``--share`` (10 %) of the nodes out of the graph entirely, drawn with seed s: they
and every edge that touches them are removed, and the rest is written as a graph folder (``graph/nodes.csv`` +
``edges.csv``) that the pipeline fits on with default options but ``--ft-epochs``, and ``--seed s`` (its own 60/20/20 split of the
rest). The held-out nodes go to ``new/nodes.csv`` (id, label, text) and ``new/edges.csv`` (each removed edge:
to a node of the graph or to another new node). ``run`` then, per seed:

1. ``dre-pipeline finetune --dataset <graph> --seed s --ft-epochs 2`` (the bench's LLM rows' epochs; cached: a
   rerun resumes or hits the store);
2. ``dre-pipeline predict --dataset <graph> --seed s --new-nodes new/nodes.csv --new-edges new/edges.csv``:
   stage one's GNN over the extended graph, the new nodes' words, the fine-tuned LLM's answers;
3. GraphSAGE (the bench's baseline) on the same features, trained on the graph without the new nodes (same
   split) and run on the extended graph: its accuracy on the same held-out nodes.

``table`` writes ``benchmarks/results/inductive.json`` and rebuilds ``benchmarks/RESULTS.md`` with it: per seed, Dr.E's transductive test accuracy
(the fine-tuned run's own test split), its accuracy on the held-out nodes and GraphSAGE's on both.

    python benchmarks/inductive.py prepare --out /work/inductive
    python benchmarks/inductive.py run --out /work/inductive --store /work/store_inductive
    python benchmarks/inductive.py table --out /work/inductive
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "text" / "cora"


def prepare(out: Path, seeds: list, share: float, source: Path) -> None:
    csv.field_size_limit(1 << 24)
    with open(source / "nodes.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, nodes = reader.fieldnames, list(reader)
    with open(source / "edges.csv", newline="") as f:
        edges = [(row["src"], row["dst"]) for row in csv.DictReader(f)]
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(nodes))
        held = {nodes[i]["node_id"] for i in order[: round(share * len(nodes))]}
        folder = out / f"seed{seed}"
        for part, rows, links in (
            ("graph", [n for n in nodes if n["node_id"] not in held],
             [e for e in edges if e[0] not in held and e[1] not in held]),
            ("new", [n for n in nodes if n["node_id"] in held], [e for e in edges if e[0] in held or e[1] in held]),
        ):
            (folder / part).mkdir(parents=True, exist_ok=True)
            with open(folder / part / "nodes.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, header)
                writer.writeheader()
                writer.writerows(rows)
            with open(folder / part / "edges.csv", "w", newline="") as f:
                csv.writer(f).writerows([("src", "dst"), *links])
        print(f"seed {seed}: {len(nodes) - len(held)} nodes kept, {len(held)} held out → {folder}")


def cli(*args, store: Path) -> str:
    command = [sys.executable, "-m", "dre_pipeline.cli", *args, "--store", str(store), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


def graphsage(graph: Path, new: Path, seed: int, store: Path) -> dict:
    """GraphSAGE trained on ``graph`` alone, scored on its test split and on the nodes of ``new`` added to it,
    their features made as the graph's were (as ``predict --new-nodes`` makes them)."""
    import torch

    from dre_pipeline.data import load_dataset, make_split
    from dre_pipeline.data.extend import extend, read_new_nodes
    from dre_pipeline.harness.baselines import train_gnn
    from dre_pipeline.pipeline.artifacts import Store
    from dre_pipeline.pipeline.stages import features

    data = load_dataset(str(graph), None, store / "data")
    split = make_split(data, "random", seed)
    featured, made = features.load("auto", data, None, Store(store), quiet=True)
    result = train_gnn("sage", featured, split, seed)
    added = read_new_nodes(new / "nodes.csv", new / "edges.csv", data)
    x = features.new_node_features(made, data.text, added.text, None, quiet=True) if made else None
    extended = extend(featured, added, x)
    with torch.no_grad():
        pred = result["model"](extended.x, extended.edge_index).argmax(1).numpy()
    truth, rows = extended.y.numpy(), slice(data.num_nodes, None)
    return {"test": result["test"]["accuracy"], "inductive": float((pred[rows] == truth[rows]).mean())}


def run(out: Path, seeds: list, store: Path, fit_only: bool, ft_epochs: int) -> None:
    for seed in seeds:
        folder = out / f"seed{seed}"
        graph, new = folder / "graph", folder / "new"
        summary = cli("finetune", "--dataset", str(graph), "--seed", str(seed), "--ft-epochs", str(ft_epochs),
                      store=store)
        if fit_only:
            print(summary)
            continue
        artifact = Path(summary.rsplit("artifact: ", 1)[1].strip())
        manifest = json.loads((artifact / "manifest.json").read_text())
        started = time.time()
        rows = json.loads(cli("predict", "--dataset", str(graph), "--seed", str(seed), "--ft-epochs", str(ft_epochs),
                              "--new-nodes",
                              str(new / "nodes.csv"), "--new-edges", str(new / "edges.csv"), "--format", "json",
                              store=store))
        result = {
            "seed": seed, "held_out": len(rows), "fit_seconds": fit_seconds(store, manifest),
            "predict_seconds": round(time.time() - started, 1), "artifact": str(artifact),
            "dre": {"test": manifest["test_accuracy"], "inductive": float(np.mean([r["correct"] for r in rows]))},
            "graphsage": graphsage(graph, new, seed, store),
            "machine": machine(),
        }
        (folder / "result.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))


def fit_seconds(store: Path, finetune: dict) -> float:
    """Stage one's and stage two's wall time as their training runs recorded it (a cache hit's is not the fit's)."""
    encode = json.loads((store / "encode" / finetune["encode"] / "manifest.json").read_text())
    return round(encode["seconds"] + finetune["seconds"], 1)


def machine() -> str:
    from dre_pipeline.harness.bench import machine

    return machine()


def table(out: Path, seeds: list, share: float, results: Path) -> None:
    """Every seed's result into ``<results>/results/inductive.json``, and RESULTS.md rewritten with it."""
    import datetime

    from dre_pipeline.harness.markdown import write_markdown

    rows = [json.loads((out / f"seed{s}" / "result.json").read_text()) for s in seeds
            if (out / f"seed{s}" / "result.json").is_file()]
    payload = {"dataset": "cora-text", "share": share, "rows": rows, "machine": rows[0]["machine"] if rows else "",
               "date": datetime.date.today().isoformat(),
               "command": f"python benchmarks/inductive.py prepare|run|table --out {out} --seeds {' '.join(map(str, seeds))}",
               "note": "Dr.E: default options but --ft-epochs 2 (the bench's LLM rows), fitted on the graph without the "
                       "held-out nodes and their edges (its own 60/20/20 split); held-out: those nodes added back "
                       "with predict --new-nodes, no retraining. GraphSAGE: the bench's baseline on the same features, "
                       "trained on the same graph and split, run over the extended graph."}
    (results / "results" / "inductive.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("prepare", "run", "table"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--store", type=Path, default=Path("artifacts"))
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent,
                        help="table: the folder of RESULTS.md and results/")
    parser.add_argument("--ft-epochs", type=int, default=2, help="as the bench's LLM rows (RESULTS.md)")
    parser.add_argument("--fit-only", action="store_true", help="run: fine-tune only")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.out, args.seeds, args.share, args.source)
    elif args.step == "run":
        run(args.out, args.seeds, args.store, args.fit_only, args.ft_epochs)
    else:
        table(args.out, args.seeds, args.share, args.results)


if __name__ == "__main__":
    main()
