"""``dre-pipeline bench --end-to-end``: the whole pipeline on a generated graph of ogbn-arxiv's size.

The graph is written as a user holds one (``nodes.csv`` with ``node_id, label, text`` and ``edges.csv``), so
every stage reads it as it would a user's: planted communities (``HOMOPHILY`` of each node's edges stay inside
its class) and text whose words lean to the node's class (``OWN_WORDS`` of them from its class's topic, the
rest from any topic or filler), so that neither the text nor the graph alone gives every label away. Features
come from the text, as ``--features auto`` makes them for a graph of text alone.

Each stage runs as its own ``dre-pipeline`` command, one after the other (they share the cores): wall seconds
and the process's peak resident memory per stage; then Dr.E's validation and test accuracy from its metrics,
beside GraphSAGE trained on the same features and split.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .runner import in_fresh_process

NODES = 169_343  # ogbn-arxiv's
QUICK_NODES = 400
# A budget for these 2 cores, not a tuning: stage one one epoch of mini-batches (794 steps of 256 seeds; full batch,
# its default at this size, takes 140 s a step here and learns one step an epoch), stage two 2 epochs of a
# class-stratified sample of the training nodes, each epoch scored on 2,048 of the 33,869 validation nodes
# (scoring all of them took 1,518 s an epoch here; at 98 % accuracy a sample of 2,048 has a standard error of 0.3).
SETTINGS = {"batch_nodes": 256, "epochs": 1, "ft_prompts_per_epoch": 8192, "ft_val_nodes": 2048, "ft_epochs": 2}
QUICK = {"ft_prompts_per_epoch": 64, "ft_val_nodes": 40}
EDGES_PER_NODE, HOMOPHILY = 10, 0.7
WORDS_PER_TEXT, OWN_WORDS, FILLER_WORDS = 8, 0.15, 0.3
TOPICS = {
    "astronomy": "star planet galaxy comet orbit telescope nebula moon asteroid eclipse",
    "botany": "leaf root flower seed petal stem pollen fern moss orchid",
    "chemistry": "molecule acid atom reaction catalyst electron solvent crystal bond polymer",
    "geology": "rock mineral fossil volcano granite sediment quartz erosion magma basalt",
    "music": "melody rhythm chord violin harmony tempo piano guitar symphony chorus",
    "medicine": "patient vaccine surgery tumor virus clinic dose therapy nurse fever",
    "economics": "market price trade inflation bank tax budget credit labor demand",
    "sports": "football tennis goal coach league stadium race sprint match trophy",
    "cooking": "recipe oven flour sauce butter spice bread soup garlic dough",
    "law": "court judge contract lawsuit verdict statute appeal witness attorney clause",
}
FILLER = "the a study new analysis results method report notes observation of with on for".split()


def write_graph(folder: Path, num_nodes: int, seed: int = 0) -> Path:
    """``folder/nodes.csv`` and ``folder/edges.csv`` of a learnable graph of ``num_nodes`` (see the module)."""
    import numpy as np
    import pyarrow as pa
    from pyarrow import csv

    rng = np.random.default_rng(seed)
    names, words = list(TOPICS), [topic.split() for topic in TOPICS.values()]
    y = rng.integers(len(names), size=num_nodes)
    by_class = [np.flatnonzero(y == c) for c in range(len(names))]
    src = rng.integers(num_nodes, size=num_nodes * EDGES_PER_NODE // 2)
    dst = rng.integers(num_nodes, size=len(src))
    for c in range(len(names)):  # a same-class partner for the edges that stay inside their class
        picked = (rng.random(len(src)) < HOMOPHILY) & (y[src] == c)
        dst[picked] = rng.choice(by_class[c], size=int(picked.sum()))
    keep = src != dst
    draw = rng.random((num_nodes, WORDS_PER_TEXT))
    topic = np.where(draw < OWN_WORDS, y[:, None], rng.integers(len(names), size=(num_nodes, WORDS_PER_TEXT)))
    word = rng.integers(len(words[0]), size=(num_nodes, WORDS_PER_TEXT))
    filler = rng.integers(len(FILLER), size=(num_nodes, WORDS_PER_TEXT))
    is_filler = draw > 1 - FILLER_WORDS
    text = [" ".join(FILLER[filler[i, j]] if is_filler[i, j] else words[topic[i, j]][word[i, j]]
                     for j in range(WORDS_PER_TEXT)) for i in range(num_nodes)]
    folder.mkdir(parents=True, exist_ok=True)
    csv.write_csv(pa.table({"node_id": np.arange(num_nodes), "label": [names[c] for c in y], "text": text}),
                  folder / "nodes.csv")
    csv.write_csv(pa.table({"src": src[keep], "dst": dst[keep]}), folder / "edges.csv")
    return folder


def timed_command(args: list, log_file) -> dict:
    """``dre-pipeline *args`` in a process of its own: its wall seconds, peak resident memory and last line."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dre_pipeline.cli", *args], stdout=subprocess.PIPE,
                               stderr=log_file, text=True)
    printed = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage, not every child's so far
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"dre-pipeline {' '.join(args)} exited {process.returncode} (see {log_file.name})")
    lines = printed.strip().splitlines()
    return {"seconds": time.perf_counter() - started, "peak_memory_mb": usage.ru_maxrss / 1024,
            "printed": lines[-1] if lines else ""}


def options(settings: dict, config=None) -> list:
    """``settings`` as command-line options; with ``config``, those of its fields only."""
    return [part for name, value in settings.items() if config is None or name in config.__dataclass_fields__
            for part in (f"--{name.replace('_', '-')}", str(value))]


def accuracies(settings: dict, store_root: str, quiet: bool) -> dict:
    """In a fresh process: Dr.E's val and test accuracy (its cached fine-tuning) and GraphSAGE's, same split."""
    import json

    from ..pipeline import commands
    from ..pipeline.artifacts import Store
    from ..pipeline.config import FinetuneConfig
    from ..pipeline.runtime import setup_logging

    setup_logging(quiet)
    store = Store(Path(store_root))
    artifact = commands.finetune(FinetuneConfig(**settings), store, quiet=quiet)
    final = json.loads((artifact.path / "metrics.json").read_text())["final"]
    encode = store.find("encode", artifact.manifest["encode"])
    return {"dre": {"val": final["val"]["accuracy"], "test": final["test"]["accuracy"],
                    "inference_nodes_per_second": final["inference_nodes_per_second"],
                    "dtype": artifact.manifest.get("dtype")},
            "stage_one_head": encode.manifest["label_head_accuracy"], "sage": graphsage(settings, store_root, quiet)}


def graphsage(settings: dict, store_root: str, quiet: bool) -> dict:
    """GraphSAGE on the features and split of a run of ``settings``: val and test accuracy, seconds, peak MB."""
    from ..pipeline.runtime import host_peak_mb
    from .baselines import train_gnn

    plan = plan_of(settings, store_root, quiet)
    sage = train_gnn("sage", plan.data, plan.split, plan.cfg.seed)
    return {"val": sage["val"]["accuracy"], "test": sage["test"]["accuracy"], "train_seconds": sage["train_seconds"],
            "peak_memory_mb": host_peak_mb()}


def run(settings: dict, store_root: Path, out_dir: Path, save, num_nodes: int = NODES, quiet: bool = False) -> dict:
    """Generate, then codebook → encode → finetune → predict (the test nodes, streamed to Parquet), each a command
    of its own; ``save(result)`` after each stage, so a stopped run keeps what it measured."""
    import numpy as np

    from ..pipeline.config import CodebookConfig, EncodeConfig, FinetuneConfig
    from ..pipeline.runtime import log

    work = out_dir / f"end-to-end-{num_nodes}"
    earlier = earlier_stages(out_dir / "results" / "end_to_end.json", num_nodes)
    started = time.perf_counter()
    folder = write_graph(work / "graph", num_nodes)
    result = {"nodes": num_nodes, "settings": settings, "stages": {"generate": {"seconds": time.perf_counter() - started}}}
    store = ["--store", str(store_root)] + (["--quiet"] if quiet else [])
    graph = ["--dataset", str(folder)]
    test_nodes = work / "test-nodes.txt"
    stages = {
        "codebook": ["codebook", *store, *options(settings, CodebookConfig)],
        "encode": ["encode", *store, *graph, *options(settings, EncodeConfig)],
        "finetune": ["finetune", *store, *graph, *options(settings, FinetuneConfig)],
        "predict": ["predict", *store, *graph, *options(settings, FinetuneConfig), "--node-file", str(test_nodes),
                    "--out", str(work / "test-answers.parquet")],
    }
    with open(work / "stages.log", "a") as log_file:
        for stage, args in stages.items():
            if stage == "predict":  # the split finetune drew, as the store keeps it
                split = in_fresh_process(split_of, {**settings, "dataset": str(folder)}, str(store_root))
                test_nodes.write_text("\n".join(map(str, np.flatnonzero(split == 2))) + "\n")
            log.info("bench --end-to-end %d nodes: %s", num_nodes, stage)
            (work / "test-answers.parquet").unlink(missing_ok=True)
            began = time.time()
            result["stages"][stage] = measured(timed_command(args, log_file), earlier.get(stage), began)
            save(result)
    result["accuracy"] = in_fresh_process(accuracies, {**settings, "dataset": str(folder)}, str(store_root), quiet)
    result["seconds"] = sum(s["seconds"] for s in result["stages"].values())
    save(result)
    return result


def earlier_stages(results_file: Path, num_nodes: int) -> dict:
    """The stages an earlier run of this row (at ``num_nodes``) measured, from its result file, by name."""
    import json

    if not results_file.exists():
        return {}
    earlier = json.loads(results_file.read_text())["result"]
    return earlier["stages"] if earlier["nodes"] == num_nodes else {}


def measured(fresh: dict, earlier: Optional[dict], began: float) -> dict:
    """A stage's measurement: ``fresh``; or, where its command found in the store the artifact that an earlier run
    of the row built and measured (the same artifact, written before this command began), that run's, so that a
    rerun over a warm store still says what the stage costs, with this run's seconds beside it."""
    built = artifact_printed(fresh["printed"])
    if earlier and built and built == artifact_printed(earlier.get("printed", "")):
        manifest = Path(built) / "manifest.json"
        if manifest.exists() and manifest.stat().st_mtime < began:
            return {**earlier, "cache_hit_seconds": fresh["seconds"]}
    return fresh


def artifact_printed(line: str) -> Optional[str]:
    """The artifact a stage's last printed line names (``… → path`` when built, ``artifact: path`` when found)."""
    found = re.search(r"(?:→ |^artifact: )(\S+)$", line)
    return found and found.group(1)


def split_of(settings: dict, store_root: str):
    """The split a run of ``settings`` uses (train 0, val 1, test 2)."""
    return plan_of(settings, store_root, True).split


def plan_of(settings: dict, store_root: str, quiet: bool):
    """The plan of a fine-tuning run of ``settings`` in ``store_root``: its graph, features and split."""
    from ..pipeline.artifacts import Store
    from ..pipeline.config import FinetuneConfig
    from ..pipeline.placement import Placement
    from ..pipeline.resolve import resolve

    cfg = FinetuneConfig(**settings)
    return resolve(cfg, Store(Path(store_root)), Placement.resolve("auto", cfg.quantization), quiet)


def percent(accuracy) -> str:
    """An accuracy in %, or "–" where a stopped run has none."""
    return "–" if accuracy is None else f"{100 * accuracy:.2f}"


def markdown(payload: dict) -> list:
    """The end-to-end section of RESULTS.md: seconds and peak memory per stage, and the accuracies."""
    r = payload["result"]
    lines = [f"## End to end at ogbn-arxiv's size (a generated graph of {r['nodes']:,} nodes with text)", "",
             f"- command: `{payload['command']}`", f"- machine: {payload['machine']}", f"- date: {payload['date']}",
             f"- graph: {len(TOPICS)} classes, about {EDGES_PER_NODE} edges per node, {100 * HOMOPHILY:.0f} % of "
             f"them planted inside the node's class; text of {WORDS_PER_TEXT} words, {100 * OWN_WORDS:.0f} % drawn "
             "from the class's topic, the rest from any topic or filler; features from the text (`--features auto`); "
             "a random 60/20/20 split",
             "- each stage is a `dre-pipeline` command of its own, default options but "
             f"`{' '.join(options({k: v for k, v in r['settings'].items() if k != 'llm_path'}))}`; peak: the process's resident "
             "memory; predict answers the test nodes, streamed to Parquet",
             "", "| stage | seconds | peak MB | printed |", "|---|---:|---:|---|"]
    for stage, s in r["stages"].items():
        peak = f"{s['peak_memory_mb']:,.0f}" if "peak_memory_mb" in s else "–"  # generate runs in the bench's process
        reused = (f" (built by an earlier run; found in the store in {s['cache_hit_seconds']:,.0f} s)"
                  if "cache_hit_seconds" in s else "")
        lines.append(f"| {stage} | {s['seconds']:,.0f} | {peak} | {s.get('printed', '')}{reused} |")
    if "seconds" in r:
        lines.append(f"| all | {r['seconds']:,.0f} | | |")
    if "stopped" in r:  # a run cut short: what its stage log showed of the stage it was in
        lines += ["", f"Stopped in {r['stopped']['stage']}: {r['stopped']['log']}"]
    if "accuracy" in r:
        a = r["accuracy"]
        lines += ["", "| model | val % | test % |", "|---|---:|---:|"]
        for label, model in ((f"Dr.E ({a['dre']['dtype']})", "dre"), ("its stage-one label head", "stage_one_head"),
                             ("GraphSAGE (same features and split)", "sage")):
            lines.append(f"| {label} | {percent(a[model]['val'])} | {percent(a[model]['test'])} |")
        if r["settings"].get("ft_val_nodes"):
            lines += ["", f"Dr.E's val %: on the {r['settings']['ft_val_nodes']:,} validation nodes it scored "
                          "(`--ft-val-nodes`); the others' on every validation node. Test %: every test node."]
    return lines + [""]
