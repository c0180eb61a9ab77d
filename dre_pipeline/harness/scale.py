"""``dre-pipeline bench --scale``: stage one on generated graphs of 100k, 300k and 1M nodes.

Per size, in a fresh process (so its peak memory is its own): a homophilous graph with about
10 edges per node, 128-dim features and 10 classes; a few mini-batch training steps as
``encode`` takes them (seconds per step, and the epoch they add up to); the whole graph's
encoding hop by hop (:meth:`~dre_pipeline.model.gnn.StageOneModel.inference`, nodes/s). The code
search's speed is set beside a plain matrix multiply of level 1's shape, in the same process,
so the table says how close the hot loop runs to the machine's limit.
"""

import time
from contextlib import contextmanager
from pathlib import Path

from .runner import in_fresh_process

SIZES = (1_000_000, 100_000, 300_000)  # the largest first: it is the one that matters most
QUICK_SIZES = (2_000, 4_000)
FEATURES, CLASSES, EDGES_PER_NODE = 128, 10, 10
SEARCH_ROWS = 8192  # views searched for the FLOP/s comparison


def generated_graph(num_nodes: int, seed: int = 0):
    """``GraphData`` of ``num_nodes``: 90 % of edges inside a class, features = class mean + noise."""
    import numpy as np
    import torch
    from torch_geometric.utils import to_undirected

    from ..data import GraphData

    rng = np.random.default_rng(seed)
    y = rng.integers(CLASSES, size=num_nodes)
    by_class = [np.flatnonzero(y == c) for c in range(CLASSES)]
    src = rng.integers(num_nodes, size=num_nodes * EDGES_PER_NODE // 2)
    same = rng.random(len(src)) < 0.9
    dst = rng.integers(num_nodes, size=len(src))
    for c in range(CLASSES):  # a same-class partner for the edges that stay inside their class
        picked = same & (y[src] == c)
        dst[picked] = rng.choice(by_class[c], size=int(picked.sum()))
    x = rng.normal(size=(CLASSES, FEATURES))[y] + rng.normal(scale=3.0, size=(num_nodes, FEATURES))
    edge_index = to_undirected(torch.from_numpy(np.stack([src, dst])), num_nodes=num_nodes)
    return GraphData(name=f"generated-{num_nodes}", x=torch.from_numpy(x).float(), edge_index=edge_index,
                     y=torch.from_numpy(y), class_names=[f"class {c}" for c in range(CLASSES)], text=None,
                     node_ids=np.arange(num_nodes), public_split=None, fingerprint=f"generated-{num_nodes}-{seed}")


def measure_size(num_nodes: int, settings: dict, store_root: str, steps: int, quiet: bool) -> dict:
    """In a fresh process: training steps, whole-graph encoding, the search against a matmul, peak memory."""
    import torch

    from ..pipeline.artifacts import Store
    from ..pipeline.config import EncodeConfig
    from ..data import make_split
    from ..model.quantizer import ResidualVQ, search_dtype
    from ..pipeline.runtime import host_peak_mb, log, setup_logging
    from .speed import timed
    from ..pipeline.llm import resolve_llm
    from ..pipeline.stages import codebook as codebook_stage
    from ..pipeline.stages import encode

    setup_logging(quiet)
    cfg = EncodeConfig(**settings)
    store = Store(Path(store_root))
    codebook = codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store))
    started = time.perf_counter()
    data = generated_graph(num_nodes)
    train_mask = torch.from_numpy(make_split(data, "random", 0)).long() == 0
    result = {"nodes": num_nodes, "edges": int(data.edge_index.size(1)), "generate_seconds": time.perf_counter() - started}
    torch.manual_seed(0)
    model = encode.build_model(cfg, data, codebook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch_nodes = encode.mini_batch_size(cfg, data.num_nodes, data.edge_index.size(1), data.x.size(1),
                                         codebook.vectors.size(1)) or encode.AUTO_BATCH_NODES
    result["train"] = training_steps(model, optimizer, data, train_mask, batch_nodes, cfg, steps)
    log.info("bench --scale %d nodes: encoding every node", num_nodes)
    begun = time.perf_counter()
    model.inference(data.x, data.edge_index)
    encode_seconds = time.perf_counter() - begun
    result["encode"] = {"seconds": encode_seconds, "nodes_per_second": num_nodes / encode_seconds}

    (m, d), k = codebook.vectors.shape, cfg.codes_per_view
    h = torch.randn(SEARCH_ROWS, d, generator=torch.Generator().manual_seed(0))
    dtype = search_dtype(torch.device("cpu"))
    vq = ResidualVQ(codebook.vectors, k)
    unit_t, _ = vq.search_tables(torch.device("cpu"), dtype)
    matmul = timed(lambda: h.to(dtype) @ unit_t, 1.0)
    search = timed(lambda: vq.search(h, dtype), 1.0)
    result["search"] = {"dtype": str(dtype).split(".")[-1], "matmul_gflops": 2 * SEARCH_ROWS * d * m / matmul / 1e9,
                        "search_gflops_equivalent": 2 * SEARCH_ROWS * d * m * k / search / 1e9}
    result["search"]["of_matmul"] = result["search"]["search_gflops_equivalent"] / result["search"]["matmul_gflops"]
    result["peak_memory_mb"] = host_peak_mb()
    result["threads"] = torch.get_num_threads()
    return result


def training_steps(model, optimizer, data, train_mask, batch_nodes: int, cfg, steps: int) -> dict:
    """``steps`` mini-batch steps as ``encode`` takes them (its :func:`~..pipeline.stages.encode.training_batches`,
    each layer trimmed to the seeds' reach), after one untimed step that builds the search tables: seconds per
    step, the share of them in the sampler and in the code search, the target nodes each layer computed, and
    the epoch they add up to."""
    import torch

    from ..model.gnn import layer_targets
    from ..model.sampling import NeighborSampler
    from ..pipeline.runtime import log
    from ..pipeline.stages import encode

    sampler = NeighborSampler(data.edge_index, data.num_nodes, cfg.neighbors(), seed=0)
    batches = encode.training_batches(data, sampler, batch_nodes, train_mask, cfg.reconstruction_seeds,
                                      sampler.generator)
    search_seconds, seconds, sample_seconds, layer_nodes = [], [], 0.0, []
    model.train()
    with clocked(model.encoder.quantizer, "search", search_seconds):
        for step in range(steps + 1):
            log.info("bench --scale %d nodes: training step %d of %d", data.num_nodes, step, steps)
            begun = time.perf_counter()
            nodes, edges, num_seeds, hops, weight = next(batches)
            sampled = time.perf_counter()
            encode.train_step(model, optimizer, data, train_mask, nodes, edges, num_seeds, cfg, None, hops, weight)
            if step == 0:  # the search tables are built once per run, not per step
                search_seconds.clear()
                continue
            seconds.append(time.perf_counter() - begun)
            sample_seconds += sampled - begun
            layer_nodes.append(layer_targets(hops))
    per_step = sum(seconds) / steps
    epoch_steps = encode.steps_per_epoch(int(train_mask.sum()), batch_nodes, cfg.reconstruction_seeds)
    return {"batch_nodes": batch_nodes, "num_neighbors": cfg.num_neighbors, "steps": steps,
            "reconstruction_seeds": cfg.reconstruction_seeds, "seconds_per_step": per_step,
            "sample_share": sample_seconds / sum(seconds), "search_share": sum(search_seconds) / sum(seconds),
            "layer_nodes_per_step": [sum(step[t] for step in layer_nodes) / steps for t in range(len(layer_nodes[0]))],
            "steps_per_epoch": epoch_steps, "epoch_seconds_estimate": per_step * epoch_steps}


@contextmanager
def clocked(owner, name: str, seconds: list):
    """Every call of ``owner.name`` (a module's function or an object's method) adds its seconds to ``seconds``
    while the block runs."""
    from unittest import mock

    real = getattr(owner, name)

    def timed_call(*args, **kwargs):
        begun = time.perf_counter()
        result = real(*args, **kwargs)
        seconds.append(time.perf_counter() - begun)
        return result

    with mock.patch.object(owner, name, timed_call):
        yield


def run(settings: dict, store_root: Path, save, sizes=SIZES, steps: int = 3, quiet: bool = False) -> list:
    """Every size in its own fresh process, one after the other (they share the cores); ``save(results)``
    after each, so a stopped run keeps the sizes it finished."""
    from ..pipeline.runtime import log

    results = []
    for num_nodes in sizes:
        log.info("bench --scale: %d nodes", num_nodes)
        results.append(in_fresh_process(measure_size, num_nodes, settings, str(store_root), steps, quiet))
        results.sort(key=lambda r: r["nodes"])
        save(results)
    return results


def markdown(payload: dict, out_dir: Path) -> list:
    """The scale section of RESULTS.md, and its plot."""
    chart = out_dir / "scale.png"
    plot(payload["results"], chart)
    t0 = payload["results"][0]["train"]
    lines = ["## Stage one at scale (generated graphs)", "", f"- command: `{payload['command']}`",
             f"- machine: {payload['machine']}; {payload['results'][0]['threads']} torch thread(s) per size",
             f"- date: {payload['date']}",
             f"- graph: about {EDGES_PER_NODE} edges per node, {FEATURES}-dim features, {CLASSES} classes, a random "
             "60/20/20 split; codebook of the LLM below",
             f"- train: mini-batch steps as `encode` takes them ({t0['batch_nodes']} seeds, "
             f"{100 * t0['reconstruction_seeds']:.0f} % of them from outside the training set, {t0['num_neighbors']} "
             "neighbours, each layer computed for the seeds' reach only), the mean of "
             f"{t0['steps']} after a first one; layer nodes: the target nodes layers 1, 2, 3 computed per step; "
             "sampler / search: their shares of the step; the epoch is the steps that take every training node "
             "once as a seed, times seconds per step",
             "- encode: every node's codes, hop by hop over whole neighbourhoods, in chunks of target nodes",
             "- search: the code search's equivalent GFLOP/s (one product per level) against a plain product of "
             "level 1's shape, same process, same dtype",
             "", "| nodes | edges | train s/step | layer nodes/step | sampler | search | steps/epoch | "
             "epoch estimate s | encode s | encode nodes/s | search GFLOP/s | matmul GFLOP/s | of matmul | peak MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["results"]:
        t, s = r["train"], r["search"]
        layers = " / ".join(f"{n:,.0f}" for n in t["layer_nodes_per_step"])
        lines.append(f"| {r['nodes']:,} | {r['edges']:,} | {t['seconds_per_step']:.2f} | {layers} | "
                     f"{100 * t['sample_share']:.0f} % | {100 * t['search_share']:.0f} % | {t['steps_per_epoch']:,} | "
                     f"{t['epoch_seconds_estimate']:,.0f} | "
                     f"{r['encode']['seconds']:.0f} | {r['encode']['nodes_per_second']:,.0f} | "
                     f"{s['search_gflops_equivalent']:.1f} | {s['matmul_gflops']:.1f} | {s['of_matmul']:.2f} | "
                     f"{r['peak_memory_mb']:,.0f} |")
    return lines + ["", f"![scale]({chart.name})", ""]


def plot(results: list, path: Path) -> None:
    from matplotlib.figure import Figure

    nodes = [r["nodes"] for r in results]
    figure = Figure(figsize=(9, 3.5))
    time_axes, memory_axes = figure.subplots(1, 2)
    time_axes.plot(nodes, [r["encode"]["seconds"] for r in results], "o-", label="encode every node")
    time_axes.plot(nodes, [r["train"]["seconds_per_step"] for r in results], "s-", label="one training step")
    time_axes.set(xscale="log", yscale="log", xlabel="nodes", ylabel="seconds")
    time_axes.legend()
    memory_axes.plot(nodes, [r["peak_memory_mb"] / 1024 for r in results], "o-")
    memory_axes.set(xscale="log", xlabel="nodes", ylabel="peak memory (GiB)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
