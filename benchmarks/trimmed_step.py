"""Stage one's mini-batch step as it was and trimmed, side by side; and its accuracy against full batch.

As it was (fb0c622): every node once a seed per epoch, every layer and its code search over the whole
sampled subgraph, the reconstruction losses over the whole subgraph. Trimmed: each layer only for the
nodes within its remaining hops of the seeds, seeds from the training nodes plus ``--reconstruction-seeds``
of the others, every loss on the seeds (``encode.train_step`` with the sampler's per-hop counts).

    PYTHONPATH=. python benchmarks/trimmed_step.py steps --sizes 100000,1000000
    PYTHONPATH=. python benchmarks/trimmed_step.py accuracy --nodes 100000 --shares full,0.5 --epochs 20 --patience 6

``steps``: on ``bench --scale``'s generated graphs with the embedded SmolLM2's codebook (576 dimensions, 8,192
words), 256 seeds, 15,10,5 neighbours: seconds per step, the nodes each layer computes, and the epoch they add
up to. ``accuracy``: stage one trained by ``encode.train`` (patience or its most epochs) on a generated graph with
noised features, with a tiny random Llama's codebook (so that the old steps and full-batch epochs fit these cores):
the label head's val and test accuracy and the mean step time, in full batch, as it was and at each share, the
rows side by side in processes of their own (into ``benchmarks/results/stage_one_accuracy.json``).
"""

import argparse
import json
import math
import platform
import subprocess
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

from dre_pipeline.data import make_split
from dre_pipeline.harness.scale import clocked, generated_graph
from dre_pipeline.model.evaluation import split_accuracy
from dre_pipeline.model.gnn import layer_targets
from dre_pipeline.model.sampling import NeighborSampler
from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.pipeline.llm import build_tiny_llama, resolve_llm
from dre_pipeline.pipeline.stages import codebook as codebook_stage, encode

SEEDS = 256


def machine() -> str:
    name = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
    return (f"{name.split(':', 1)[-1].strip() or platform.processor()}, {torch.get_num_threads()} torch threads, "
            f"capability {torch.backends.cpu.get_cpu_capability()}")


def batches_as_they_were(data, sampler, batch_nodes, train_mask, share, order):
    """fb0c622's ``training_batches``: every node once a seed per epoch, no per-hop counts (no trimming)."""
    if sampler is None:
        yield slice(None), data.edge_index, data.num_nodes, None, 1.0
        return
    for seeds in torch.randperm(data.num_nodes, generator=sampler.generator).split(batch_nodes):
        nodes, edges = sampler.sample(seeds)
        yield nodes, edges, len(seeds), None, 1.0


def timed_step(model, optimizer, data, train_mask, seeds, sampler, cfg, trimmed: bool) -> dict:
    nodes, edges, *hops = sampler.sample_hops(seeds)
    layers = len(hops[1])
    begun = time.perf_counter()
    encode.train_step(model, optimizer, data, train_mask, nodes, edges, len(seeds), cfg, None,
                      hops if trimmed else None)
    seconds = time.perf_counter() - begun
    per_layer = layer_targets(hops) if trimmed else [len(nodes)] * layers
    return {"seconds": seconds, "subgraph_nodes": len(nodes), "layer_nodes": per_layer}


def training_setup(cfg: EncodeConfig, codebook, num_nodes: int) -> tuple:
    """bench --scale's generated graph of ``num_nodes``, its training mask, stage one's model and optimizer in
    training mode (seeded), and the neighbour sampler."""
    data = generated_graph(num_nodes)
    train_mask = torch.from_numpy(make_split(data, "random", 0)).long() == 0
    torch.manual_seed(0)
    model = encode.build_model(cfg, data, codebook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    return data, train_mask, model, optimizer, NeighborSampler(data.edge_index, num_nodes, cfg.neighbors(), seed=0)


def in_glibc_default_process(fn, *args):
    """``fn(*args)`` in a spawned process whose allocator is glibc's own, not the CLI's (``fn`` sets its own)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def save_rows(name: str, rows: list, command: str, **more) -> None:
    """``rows`` with this machine, today, ``command`` and ``more`` into ``benchmarks/results/<name>.json``;
    RESULTS.md rewritten with it."""
    import datetime

    from dre_pipeline.harness.markdown import write_markdown

    results = Path(__file__).parent
    payload = {"rows": rows, "machine": machine(), "date": datetime.date.today().isoformat(), "command": command,
               **more}
    (results / "results" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(results)


def steps(sizes: list, repeats: int, store_root: Path) -> list:
    cfg = EncodeConfig(batch_nodes=SEEDS)
    store = Store(store_root)
    codebook = codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store))
    rows = []
    for num_nodes in sizes:
        data, train_mask, model, optimizer, sampler = training_setup(cfg, codebook, num_nodes)
        trimmed_seeds = encode.epoch_seeds(train_mask, SEEDS, cfg.reconstruction_seeds, sampler.generator)
        timed_step(model, optimizer, data, train_mask, next(trimmed_seeds), sampler, cfg, True)  # builds the search tables
        new = [timed_step(model, optimizer, data, train_mask, next(trimmed_seeds), sampler, cfg, True)
               for _ in range(repeats)]
        old = [timed_step(model, optimizer, data, train_mask, torch.randperm(num_nodes, generator=sampler.generator)[:SEEDS],
                          sampler, cfg, False) for _ in range(repeats)]
        old_steps = math.ceil(num_nodes / SEEDS)
        new_steps = encode.steps_per_epoch(int(train_mask.sum()), SEEDS, cfg.reconstruction_seeds)
        row = {"nodes": num_nodes, "edges": int(data.edge_index.size(1))}
        for name, runs, count in (("as_it_was", old, old_steps), ("trimmed", new, new_steps)):
            mean = sum(r["seconds"] for r in runs) / len(runs)
            row[name] = {"seconds_per_step": mean, "steps_per_epoch": count, "epoch_seconds_estimate": mean * count,
                         "subgraph_nodes": sum(r["subgraph_nodes"] for r in runs) / len(runs),
                         "layer_nodes": [sum(r["layer_nodes"][t] for r in runs) / len(runs) for t in range(cfg.num_views)]}
        row["step_speedup"] = row["as_it_was"]["seconds_per_step"] / row["trimmed"]["seconds_per_step"]
        row["epoch_speedup"] = row["as_it_was"]["epoch_seconds_estimate"] / row["trimmed"]["epoch_seconds_estimate"]
        print(json.dumps(row), flush=True)
        rows.append(row)
        del data, model, optimizer, sampler
    return rows


def accuracy_row(num_nodes: int, share, epochs: int, patience: int, noise: float, store_root: Path,
                 threads: int) -> dict:
    """One row of ``accuracy`` in a process of its own: stage one trained by ``encode.train`` until its patience
    or its most epochs run out, on the noised generated graph. ``share``: "full" (full batch), None (the mini-batch steps as
    they were) or a ``--reconstruction-seeds`` value (the trimmed steps)."""
    from dre_pipeline.pipeline.runtime import keep_freed_memory

    keep_freed_memory()  # as every CLI process
    torch.set_num_threads(threads)
    store = Store(store_root)
    data = generated_graph(num_nodes)
    # bench --scale's features separate its classes alone (test accuracy 1.0): noise leaves the graph work to do
    data.x += noise * torch.randn(data.x.shape, generator=torch.Generator().manual_seed(1))
    split = torch.from_numpy(make_split(data, "random", 0)).long()
    full = share == "full"
    batch_nodes = 0 if full else SEEDS
    cfg = EncodeConfig(llm_path=str(store_root / "tiny-llama"), batch_nodes=batch_nodes, max_codes=1024,
                       epochs=epochs, patience=patience, reconstruction_seeds=0.0 if full or share is None else share)
    codebook = codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store))
    times = []
    name = "full batch" if full else "as it was" if share is None else f"trimmed, share {share}"
    batches = mock.patch.object(encode, "training_batches", batches_as_they_were) if share is None else nullcontext()
    with clocked(encode, "train_step", times), batches:
        key = f"bench-{num_nodes}-{noise}-{epochs}-{name}"  # never one another's checkpoint to resume
        model, history, seconds = encode.train(cfg, data, data, split, codebook, store, key, True, batch_nodes)
    _, logits, _ = model.inference(data.x, data.edge_index)
    acc = split_accuracy(logits.argmax(-1), data.y, split)
    row = {"row": name, "nodes": num_nodes, "noise": noise, "test_accuracy": acc["test"], "val_accuracy": acc["val"],
           "epochs": epochs, "patience": patience, "epochs_run": history[-1]["epoch"],
           "best_epoch": max(history, key=lambda h: h["accuracy"]["val"])["epoch"], "steps": len(times),
           "seconds_per_step": sum(times) / len(times), "train_seconds": seconds, "threads": threads}
    print(json.dumps(row), flush=True)
    return row


def accuracy(num_nodes: int, rows: list, store_root: Path) -> list:
    """``rows`` ((share, epochs, patience, noise) each, :func:`accuracy_row`) side by side: each in a spawned
    process of its own, all at once, the cores shared out among them. The codebook is a tiny random Llama's (64
    dimensions, 1,024 words), so that full-batch epochs of 100k nodes fit these cores."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    store = Store(store_root)
    llm = build_tiny_llama(store_root / "tiny-llama", width=64)
    codebook_stage.run(EncodeConfig(llm_path=str(llm), max_codes=1024), resolve_llm(str(llm), store), store)
    threads = max(1, torch.get_num_threads() // len(rows))
    with ProcessPoolExecutor(len(rows), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(accuracy_row, num_nodes, share, epochs, patience, noise, store_root, threads)
                   for share, epochs, patience, noise in rows]
        return [f.result() for f in futures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("steps", "accuracy"))
    parser.add_argument("--sizes", default="100000,1000000", help="steps: graph sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="steps: timed steps per size and row")
    parser.add_argument("--nodes", type=int, default=20000, help="accuracy: the graph's size")
    parser.add_argument("--shares", default="old,0,0.25,0.5",
                        help="accuracy: the rows, comma-separated: --reconstruction-seeds values of the trimmed "
                             "steps, 'old' for the steps as they were, 'full' for full batch")
    parser.add_argument("--noise", type=float, default=12.0, help="accuracy: extra feature noise (standard deviation)")
    parser.add_argument("--epochs", type=int, default=40, help="accuracy: the mini-batch rows' most epochs")
    parser.add_argument("--patience", type=int, default=10, help="accuracy: the mini-batch rows' patience")
    defaults = EncodeConfig()
    parser.add_argument("--full-epochs", type=int, default=defaults.epochs, help="accuracy: full batch's most epochs")
    parser.add_argument("--full-patience", type=int, default=defaults.patience, help="accuracy: full batch's patience")
    parser.add_argument("--store", default=None, help="a store holding the de-quantized SmolLM2 (default: a fresh one)")
    args = parser.parse_args()
    print(machine(), flush=True)
    root = Path(args.store or tempfile.mkdtemp(prefix="trimmed-step-"))
    if args.mode == "steps":
        save_rows("trimmed_step", steps([int(s) for s in args.sizes.split(",")], args.repeats, root),
                  f"PYTHONPATH=. python benchmarks/trimmed_step.py steps --sizes {args.sizes} --repeats {args.repeats}",
                  note=f"bench --scale's generated graphs, the embedded SmolLM2's codebook, {SEEDS} seeds, 15,10,5 "
                       f"neighbours, the mean of {args.repeats} steps per row after one untimed; as it was (fb0c622): "
                       "every layer and its search over the whole sampled subgraph, every node a seed once per epoch; "
                       "trimmed: encode's step today (training-node seeds, --reconstruction-seeds 0.5)")
        return
    rows = [("full", args.full_epochs, args.full_patience, args.noise) if share == "full" else
            (None if share == "old" else float(share), args.epochs, args.patience, args.noise)
            for share in args.shares.split(",")]
    command = (f"PYTHONPATH=. python benchmarks/trimmed_step.py accuracy --nodes {args.nodes} --shares {args.shares} "
               f"--epochs {args.epochs} --patience {args.patience} --full-epochs {args.full_epochs} "
               f"--full-patience {args.full_patience} --noise {args.noise}")
    save_rows("stage_one_accuracy", accuracy(args.nodes, rows, root), command)


if __name__ == "__main__":
    main()
