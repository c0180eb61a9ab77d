"""``dre-pipeline bench``: Dr.E, its ablations (the paper's Table 3) and the baselines, side by side.

Every row runs on the same dataset and the same random 60/20/20 splits (one per seed),
in a fresh process so that its peak memory is its own. LLM rows go through the normal
stages and the normal artifact store, so a rerun reuses what is cached. Results go to
``<out>/results/<dataset>.json`` (``--speed``: ``speed.json``, see :mod:`.speed`) after
every row, so a killed bench keeps the rows it finished; a later run with the same
settings and the same defaults replaces the rows and seeds it runs and keeps the others
(after a change of a default the earlier rows measured something else, so they go). ``<out>/RESULTS.md``
and a bar chart are regenerated from every result file there (:mod:`.markdown`). The rows are :mod:`.rows`'s;
``--speed`` and ``--scale`` run :mod:`.speed` and :mod:`.scale`.
"""

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..pipeline.artifacts import Store, digest
from ..pipeline.config import EncodeConfig, FinetuneConfig, key_fields
from ..pipeline.runtime import host_peak_mb, log, progress, setup_logging
from .bench_config import BenchConfig
from .markdown import graph_name, write_markdown
from .rows import ALL_ROWS, ROWS, economy_rows, selected_rows
from .runner import in_fresh_process

QUICK = {"dataset": "synthetic", "epochs": 15, "patience": 15}


def run_row(row: str, settings: dict, store_root: str, quiet: bool) -> dict:
    """One row for one seed, in its own process: accuracy, times, throughput, peak memory."""
    setup_logging(quiet)  # a row can take half an hour: its stages log their progress, unless --quiet
    spec = ALL_ROWS[row]
    cfg = FinetuneConfig(**{**settings, **spec.overrides})
    store = Store(Path(store_root))
    started = time.time()
    if spec.kind == "gnn":
        from .baselines import train_gnn
        from ..pipeline.placement import Placement
        from ..pipeline.resolve import resolve

        model = row.split("-")[0]  # the -bow, -sbert and -llm rows: the same model on those text features
        # as the finetune rows place the LLM, so the -llm rows read the text features they read
        plan = resolve(cfg, store, Placement.resolve("auto", cfg.quantization), quiet)
        result = train_gnn(model, plan.data, plan.split, cfg.seed)
        out = {"val_accuracy": result["val"]["accuracy"],
               "test_accuracy": result["test"]["accuracy"], "test_macro_f1": result["test"]["macro_f1"],
               "seconds": {"train": round(result["train_seconds"], 2)},
               "inference_nodes_per_second": round(result["inference_nodes_per_second"], 1)}
    else:
        from ..pipeline import commands

        artifact = commands.finetune(cfg, store, quiet=quiet)
        metrics = json.loads((artifact.path / "metrics.json").read_text())
        recorded = artifact.manifest.get("peak_memory_mb", {})  # the peaks of the run that trained it
        encode = store.find("encode", artifact.manifest["encode"])
        codebook = store.find("codebook", encode.manifest["codebook"])
        phase = metrics["joint" if cfg.joint else "finetune"]
        out = {
            "val_accuracy": metrics["final"]["val"]["accuracy"],
            "test_accuracy": metrics["final"]["test"]["accuracy"],
            "test_macro_f1": metrics["final"]["test"]["macro_f1"],
            "stage_one_val_accuracy": encode.manifest["label_head_accuracy"]["val"],
            "stage_one_test_accuracy": encode.manifest["label_head_accuracy"]["test"],
            "seconds": {"codebook": codebook.manifest["seconds"], "encode": encode.manifest["seconds"],
                        "finetune": artifact.manifest["seconds"]},
            "trained_tokens_per_second": phase["trained_tokens_per_second"],
            "trained_prompts_per_second": phase.get("trained_prompts_per_second"),
            "inference_nodes_per_second": metrics["final"]["inference_nodes_per_second"],
            "dtype": artifact.manifest.get("dtype"),  # how it ran: --precision auto's choice differs between machines
            "cached": artifact.cached,
            # a cache hit's process did not train: its host peak is the one the training run recorded
            "peak_memory_mb": recorded["cpu"] if artifact.cached and recorded else host_peak_mb(),
            # the GPU's is always the training run's own (finetune measures it from its start); None on a CPU
            "peak_gpu_memory_mb": recorded.get("cuda"),
            # the joint pass that beat no plain-model evaluation has no number of its own
            "kept_plain_model": bool(cfg.joint and metrics["joint"].get("kept_start")),
        }
    out.setdefault("peak_memory_mb", host_peak_mb())
    out.update(row=row, label=spec.label, seed=cfg.seed, wall_seconds=round(time.time() - started, 2))
    return out


def machine() -> str:
    import torch

    from .speed import cpu_name

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"  # the one --device auto takes
    return (f"{cpu_name()} (capability {torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, "
            f"{memory:.0f} GiB, {device}")


def run(cfg: BenchConfig, store: Store, quiet: bool = False, command: str = "dre-pipeline bench") -> Path:
    """Run the benchmark ``cfg`` selects (the rows over their seeds, or its one mode); write the JSON, RESULTS.md and
    the charts."""
    settings = {"llm_path": cfg.llm_path, "dataset": cfg.dataset, "data_dir": cfg.data_dir, "ft_epochs": cfg.ft_epochs}
    seeds = {True: cfg.seeds, False: cfg.ablation_seeds}
    if cfg.quick:  # plumbing, not numbers: one seed each
        from ..pipeline.llm import build_tiny_llama

        settings.update(QUICK, llm_path=str(build_tiny_llama(store.root / "llm" / "tiny-llama")))
        seeds = {True: 1, False: 1}
    out_dir = Path(cfg.out)
    stage_one = {k: v for k, v in settings.items() if k in EncodeConfig.__dataclass_fields__}
    if cfg.speed:
        from . import speed

        results = speed.run(stage_one, store.root, repeat_seconds=0.2 if cfg.quick else 3.0, quiet=quiet)
        return write_results(out_dir, "speed", {"command": command, "date": time.strftime("%Y-%m-%d"),
                                                "settings": settings, "results": results})
    if cfg.scale:
        from . import scale

        def save(results: list) -> Path:
            return write_results(out_dir, "scale", {"command": command, "machine": machine(),
                                                    "date": time.strftime("%Y-%m-%d"), "results": results})

        scale.run(stage_one, store.root, save, sizes=scale.QUICK_SIZES if cfg.quick else scale.SIZES, quiet=quiet)
        return out_dir / "results" / "scale.json"
    if cfg.end_to_end:
        from . import end_to_end

        def save(result: dict) -> Path:
            return write_results(out_dir, "end_to_end", {"command": command, "machine": machine(),
                                                         "date": time.strftime("%Y-%m-%d"), "result": result})

        row = {k: v for k, v in settings.items() if k not in ("dataset", "data_dir") and v is not None}
        row.update(end_to_end.QUICK if cfg.quick else end_to_end.SETTINGS)
        end_to_end.run(row, store.root, out_dir, save, end_to_end.QUICK_NODES if cfg.quick else end_to_end.NODES,
                       quiet)
        return out_dir / "results" / "end_to_end.json"
    if cfg.economy:  # one seed: the rows differ in cost, and in accuracy only by numerics
        from ..pipeline.placement import resolve_device, resolved_precision

        jobs = [(row, 0) for row in economy_rows(cfg.rows, resolved_precision(resolve_device("auto")))]
        return run_rows(cfg, f"economy-{graph_name(settings['dataset'])}", jobs, settings, store, quiet, command)
    from ..data import load_dataset

    data = load_dataset(settings["dataset"], settings["data_dir"], store.root / "data")
    jobs = [(row, seed) for row in selected_rows(cfg.rows, data.text is not None, cfg.extra, data.has_features)
            for seed in range(seeds[ROWS[row].main])]
    return run_rows(cfg, graph_name(settings["dataset"]), jobs, settings, store, quiet, command)


def run_rows(cfg: BenchConfig, name: str, jobs: list, settings: dict, store: Store, quiet: bool, command: str) -> Path:
    """Each (row, seed) of ``jobs`` in a fresh process, added to ``<out>/results/<name>.json`` as it finishes."""
    out_dir = Path(cfg.out)
    defaults = digest(key_fields(FinetuneConfig()))  # a new option at its neutral value changes nothing measured
    results_file = out_dir / "results" / f"{name}.json"
    results = earlier_results(results_file, settings, defaults)
    here = machine()
    for row, seed in progress(jobs, quiet=quiet, desc="bench rows"):
        log.info("bench: %s, seed %d", row, seed)
        try:
            result = in_fresh_process(run_row, row, {**settings, "seed": seed}, str(store.root), quiet)
        except InputError as error:
            if not cfg.economy:
                raise
            # what the backend cannot do with this model (4-bit widths on CPU) is a result there, said as such
            result = {"row": row, "label": ALL_ROWS[row].label, "seed": seed, "refused": str(error),
                      "wall_seconds": 0.0}
        if "refused" in result:
            log.info("bench: %s refused: %s", row, result["refused"])
        else:
            log.info("bench: %s seed %d test accuracy %.4f (%.0fs)", row, seed, result["test_accuracy"],
                     result["wall_seconds"])
        # a table built over several runs says which run, on which machine, gave which row
        result.update(command=command, machine=here)
        earlier = next((r for r in results if (r["row"], r["seed"]) == (row, seed)), None)
        if result.get("cached") and earlier:
            continue  # a cache hit measured nothing new: the run that computed it keeps its times
        results = [r for r in results if r is not earlier] + [result]
        results.sort(key=lambda r: (list(ALL_ROWS).index(r["row"]), r["seed"]))
        results_file = write_results(out_dir, name, {
            "command": command, "machine": here, "date": time.strftime("%Y-%m-%d"), "config": asdict(cfg),
            "settings": settings, "defaults": defaults, "results": results,
            "wall_seconds": round(sum(r["wall_seconds"] for r in results))})
    return results_file


def earlier_results(results_file: Path, settings: dict, defaults: str) -> list:
    """The rows of an earlier run with the same settings and defaults, which this run adds to; none otherwise."""
    if not results_file.exists():
        return []
    earlier = json.loads(results_file.read_text())
    if earlier.get("settings") != settings or earlier.get("defaults") != defaults:
        if earlier["results"]:
            log.info("bench: %s holds rows of other settings or defaults; this run starts a new table", results_file)
        return []
    return [{"command": earlier["command"], **r} for r in earlier["results"]]  # rows from before rows kept theirs


def write_results(out_dir: Path, name: str, payload: dict) -> Path:
    """Save one result file, then rebuild RESULTS.md from every result file there is."""
    results_file = out_dir / "results" / f"{name}.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = results_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.rename(results_file)
    write_markdown(out_dir)
    return results_file
