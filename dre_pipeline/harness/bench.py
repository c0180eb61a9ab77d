"""``dre-pipeline bench``: Dr.E, its ablations (the paper's Table 3) and the baselines, side by side.

Every row runs on the same dataset and the same random 60/20/20 splits (one per seed),
in a fresh process so that its peak memory is its own. LLM rows go through the normal
stages and the normal artifact store, so a rerun reuses what is cached. Results go to
``<out>/results/<dataset>.json`` (``--speed``: ``speed.json``, see :mod:`.speed`) after
every row, so a killed bench keeps the rows it finished; a later run with the same
settings and the same defaults replaces the rows and seeds it runs and keeps the others
(after a change of a default the earlier rows measured something else, so they go). ``<out>/RESULTS.md``
and a bar chart are regenerated from every result file there.
"""

import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from ..pipeline.artifacts import Store, digest
from ..pipeline.config import EncodeConfig, FinetuneConfig, key_fields
from .bench_config import BenchConfig
from ..errors import InputError
from ..pipeline.runtime import host_peak_mb, log, progress, setup_logging

@dataclass(frozen=True)
class Row:
    label: str
    kind: str  # gnn: a baseline trained here; llm: through the normal stages
    overrides: dict = field(default_factory=dict)  # FinetuneConfig fields
    main: bool = True  # in make bench, all --seeds; else behind --extra, --ablation-seeds
    needs_text: bool = False  # runs on graphs with text only


# The joint pass is one of the paper's Table 3 ablations.
ROWS = {
    "mlp": Row("MLP (no graph)", "gnn"),
    "gcn": Row("GCN", "gnn"),
    "sage": Row("GraphSAGE", "gnn"),
    **{f"{model}-{kind}": Row(f"{label} on {name}", "gnn", {"features": kind}, needs_text=True)
       for kind, name in (("bow", "a bag of words of the text"), ("sbert", "sentence embeddings of the text (MiniLM)"),
                          ("llm", "LLM text features"))
       for model, label in (("mlp", "MLP"), ("gcn", "GCN"), ("sage", "GraphSAGE"))},
    # Fine-tuning on ~54 tokens of text per prompt costs about 2x a Dr.E row: once, behind --extra.
    "text": Row("LLM fine-tuned on the node's text alone (no graph)", "llm", {"node_tokens": "none"}, main=False,
                needs_text=True),
    # The GNN runs inside every step, so no frozen-layer cache: an epoch costs ~4x a Dr.E epoch; one is its budget.
    "soft": Row("LLM + GNN soft prompt, no VQ (LLaGA-style), 1 epoch", "llm", {"node_tokens": "soft", "ft_epochs": 1},
                main=False),
    "one-view": Row("Dr.E, one view (1-hop only)", "llm", {"num_views": 1}, main=False),
    "single-code": Row("Dr.E, one code per view (no intra-layer residual)", "llm", {"codes_per_view": 1}, main=False),
    "no-inter": Row("Dr.E without inter-layer residual", "llm", {"inter_residual": False}, main=False),
    "no-refine": Row("Dr.E without token refinement", "llm", {"refine": False}, main=False),
    "no-pseudo": Row("Dr.E without pseudo-labels (training nodes only)", "llm", {"distill_weight": 0.0}, main=False),
    "dre-words": Row("Dr.E, graph words only (no text)", "llm", {"use_text": False}, needs_text=True),
    "dre": Row("Dr.E (full: graph words, and text where the graph has it)", "llm"),
    "joint": Row("Dr.E + joint pass", "llm", {"joint": True}, main=False),
}
# bench --economy: Dr.E's token economy against the plain way, and its weights in 8 and 4 bits (on CPU too).
ECONOMY_ROWS = {
    "dre": ROWS["dre"],
    "plain": Row("Plain PEFT + transformers forward: full padded prompts every step, no prefix or frozen-layer cache",
                 "llm", {"token_economy": False}),
    "8bit": Row("Dr.E, 8-bit weights (bitsandbytes LLM.int8)", "llm", {"quantization": "8bit"}),
    "4bit": Row("Dr.E, 4-bit nf4 weights (bitsandbytes)", "llm", {"quantization": "4bit"}),
}
ALL_ROWS = {**ROWS, **ECONOMY_ROWS}
# per dataset; Llama-2-7B for Dr.E (AAAI 2025), whose Cora is the raw-text one
PAPER = {"cora": {"gcn": 87.78, "sage": 88.24, "dre": 91.33}, "cora-text": {"dre": 91.33}}
QUICK = {"dataset": "synthetic", "epochs": 15, "patience": 15}
BENCH_GRAPHS = ("cora", "cora-ml", "cora-text")  # what make bench runs


def selected_rows(rows: str, has_text: bool, extra: bool = False, has_features: bool = True) -> list:
    """``--rows``, or the main rows the graph can run (``extra``: the others; the text rows need a graph with text;
    on a graph of text alone the plain GNN rows would repeat the rows on its default text features)."""
    chosen = [r.strip() for r in rows.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        raise InputError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    if not has_text and (textual := [r for r in chosen if ROWS[r].needs_text]):
        raise InputError(f"--rows: {', '.join(textual)} need a graph with text")
    return chosen or [r for r, spec in ROWS.items() if (has_text or not spec.needs_text) and spec.main != extra
                      and (has_features or spec.kind != "gnn" or "features" in spec.overrides)]


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
    """Run the selected rows over their seeds; write the JSON, RESULTS.md and the chart."""
    settings = {"llm_path": cfg.llm_path, "dataset": cfg.dataset, "data_dir": cfg.data_dir, "ft_epochs": cfg.ft_epochs}
    seeds = {True: cfg.seeds, False: cfg.ablation_seeds}
    if cfg.quick:  # plumbing, not numbers: one seed each
        from ..pipeline.llm import build_tiny_llama

        settings.update(QUICK, llm_path=str(build_tiny_llama(store.root / "llm" / "tiny-llama")))
        seeds = {True: 1, False: 1}
    out_dir = Path(cfg.out)
    if cfg.speed:
        from . import speed

        stage_one = {k: v for k, v in settings.items() if k in EncodeConfig.__dataclass_fields__}
        results = speed.run(stage_one, store.root, repeat_seconds=0.2 if cfg.quick else 3.0, quiet=quiet)
        return write_results(out_dir, "speed", {"command": command, "date": time.strftime("%Y-%m-%d"),
                                                "settings": settings, "results": results})
    if cfg.scale:
        from . import scale

        stage_one = {k: v for k, v in settings.items() if k in EncodeConfig.__dataclass_fields__}

        def save(results: list) -> Path:
            return write_results(out_dir, "scale", {"command": command, "machine": machine(),
                                                    "date": time.strftime("%Y-%m-%d"), "results": results})

        scale.run(stage_one, store.root, save, sizes=scale.QUICK_SIZES if cfg.quick else scale.SIZES, quiet=quiet)
        return out_dir / "results" / "scale.json"
    from ..data import load_dataset

    if cfg.economy:  # one seed: the rows differ in cost, and in accuracy only by numerics
        name, jobs = "economy", [(row, 0) for row in ECONOMY_ROWS]
    else:
        data = load_dataset(settings["dataset"], settings["data_dir"], store.root / "data")
        name = settings["dataset"]
        jobs = [(row, seed) for row in selected_rows(cfg.rows, data.text is not None, cfg.extra, data.has_features)
                for seed in range(seeds[ROWS[row].main])]
    defaults = digest(key_fields(FinetuneConfig()))  # a new option at its neutral value changes nothing measured
    results_file = out_dir / "results" / f"{name}.json"
    results = earlier_results(results_file, settings, defaults)
    context = get_context("spawn")  # a fresh process per row: its own peak memory, no state carried over
    here = machine()
    for row, seed in progress(jobs, quiet=quiet, desc="bench rows"):
        log.info("bench: %s, seed %d", row, seed)
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            try:
                result = pool.submit(run_row, row, {**settings, "seed": seed}, str(store.root), quiet).result()
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


def summarise(results: list) -> list:
    """One line per row: mean ± std over seeds of accuracy and macro-F1, mean times, max memory."""
    lines = []
    for row in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == row]

        def mean_std(key):
            values = [100 * r[key] for r in runs]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        seconds = {k: statistics.mean(r["seconds"][k] for r in runs) for k in runs[0]["seconds"]}
        lines.append({
            "row": row, "label": runs[0]["label"], "seeds": len(runs),
            "kept_plain_model": sum(r.get("kept_plain_model", False) for r in runs),
            "accuracy": mean_std("test_accuracy"), "macro_f1": mean_std("test_macro_f1"),
            "stage_one": statistics.mean(100 * r["stage_one_test_accuracy"] for r in runs)
            if "stage_one_test_accuracy" in runs[0] else None,
            "seconds": seconds, "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "train_tokens_per_second": statistics.mean(r.get("trained_tokens_per_second") or 0 for r in runs),
            "inference_nodes_per_second": statistics.mean(r["inference_nodes_per_second"] for r in runs),
        })
    return lines


def write_markdown(out_dir: Path) -> None:
    """RESULTS.md: each dataset's accuracy table, then stage one's speed and the wall-time targets per CPU class."""
    from .speed import markdown as speed_markdown

    files = {f.stem: json.loads(f.read_text()) for f in sorted((out_dir / "results").glob("*.json"))}
    text = ["# Benchmarks", "", "Every number names the command and the CPU that gave it: "
            "machines of one kind differ in CPU features (AVX-512 with native bf16, or only AVX2).", ""]
    text += bench_time_markdown(files)
    for name, payload in files.items():
        if name not in ("speed", "targets", "scale", "economy"):
            text += accuracy_markdown(payload, out_dir)
    if "economy" in files:
        text += economy_markdown(files["economy"])
    if "scale" in files:
        from .scale import markdown as scale_markdown

        text += scale_markdown(files["scale"], out_dir)
    if "speed" in files:
        text += speed_markdown(files["speed"])
    if "targets" in files:
        text += targets_markdown(files["targets"])
    tmp = out_dir / "RESULTS.md.tmp"
    tmp.write_text("\n".join(text))
    tmp.rename(out_dir / "RESULTS.md")


def accuracy_markdown(payload: dict, out_dir: Path) -> list:
    lines = summarise(payload["results"])
    table = ["| row | seeds | test accuracy % | macro-F1 % | stage-one head % | paper % | seconds per stage | "
             "peak MB | train tok/s | infer nodes/s |", "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for line in lines:
        acc, f1 = line["accuracy"], line["macro_f1"]
        accuracy, macro_f1 = f"{acc[0]:.2f} ± {acc[1]:.2f}", f"{f1[0]:.2f} ± {f1[1]:.2f}"
        if line["kept_plain_model"] == line["seeds"]:  # the plain model's numbers, not this row's
            accuracy, macro_f1 = "kept plain model", "–"
        elif line["kept_plain_model"]:
            accuracy += f" (plain model kept on {line['kept_plain_model']} of {line['seeds']} seeds)"
        stage_one = f"{line['stage_one']:.2f}" if line["stage_one"] is not None else "–"
        seconds = ", ".join(f"{k} {v:.0f}" for k, v in line["seconds"].items())
        tokens = f"{line['train_tokens_per_second']:.0f}" if line["train_tokens_per_second"] else "–"
        table.append(f"| {line['label']} | {line['seeds']} | {accuracy} | {macro_f1} | "
                     f"{stage_one} | {PAPER.get(payload['settings']['dataset'], {}).get(line['row'], '–')} | {seconds} | {line['peak_memory_mb']:.0f} | "
                     f"{tokens} | {line['inference_nodes_per_second']:.1f} |")
    chart = out_dir / f"{payload['settings']['dataset']}_accuracy.png"
    plot(lines, chart)
    return [
        f"## Accuracy: {payload['settings']['dataset']}",
        "",
        *provenance(payload),
        *wall_time_markdown(payload["results"]),
        f"- LLM: {payload['settings']['llm_path'] or 'embedded SmolLM2-135M-Instruct'}; "
        f"fine-tuning epochs per LLM row: {payload['settings']['ft_epochs']} (where its label says no other), "
        "best validation epoch kept",
        "- split: random 60/20/20, one split per seed; test accuracy at the best validation checkpoint",
        "",
        *table,
        "",
        *per_seed_markdown(payload["results"]),
        f"![accuracy]({chart.name})",
        "",
        "Seconds are wall time of each stage (codebook and encode are shared between rows with the same "
        "settings and counted where they were computed). Peak MB is the maximum resident memory of the "
        "process that trained the row (a cached row reports the one its training run recorded).",
        "",
    ]


def wall_seconds(results: list, main: bool) -> float:
    """The summed wall time of the main rows (``make bench``), or of the rows behind ``--extra``."""
    return sum(r["wall_seconds"] for r in results if ALL_ROWS[r["row"]].main == main)


def wall_time_markdown(results: list) -> list:
    """The rows' wall time, split into what ``make bench`` runs (the main rows) and what ``--extra`` runs."""
    main, extra = wall_seconds(results, main=True), wall_seconds(results, main=False)
    hits = sum(bool(r.get("cached")) for r in results)
    return [f"- wall time: main rows (make bench) {main:.0f} s, rows behind --extra {extra:.0f} s"
            + (f"; {hits} row(s) were cache hits of an earlier store, their time not counted" if hits else "")]


def bench_time_markdown(files: dict) -> list:
    """``make bench``: the main rows of every graph it runs, together, with the machines they ran on."""
    graphs = [name for name in BENCH_GRAPHS if name in files]
    if not graphs:
        return []
    parts, total = [], 0.0
    for name in graphs:
        results = files[name]["results"]
        machines = dict.fromkeys(r.get("machine", files[name]["machine"]).split(" (")[0] for r in results
                                 if ALL_ROWS[r["row"]].main)
        seconds = wall_seconds(results, main=True)
        parts.append(f"{name} {seconds:.0f} s ({', '.join(machines)})")
        total += seconds
    return ["## make bench", "", f"The main rows of {' and '.join(graphs)}, summed from their tables below: "
            f"**{total:.0f} s** ({total / 3600:.2f} h): {'; '.join(parts)}. "
            "The rows behind `--extra` (`make bench-extra`) ran once each; their time is in each table.", ""]


def provenance(payload: dict) -> list:
    """Which commands gave a table's rows, on which machine, when."""
    commands = dict.fromkeys(r.get("command", payload["command"]) for r in payload["results"])
    machines = {}
    for r in payload["results"]:
        machines.setdefault(r.get("machine", payload["machine"]), []).append(r["row"])
    if len(machines) == 1:
        where = [f"- machine: {next(iter(machines))}"]
    else:
        where = [f"- machine: {name}: {', '.join(dict.fromkeys(rows))}" for name, rows in machines.items()]
    return [*[f"- command: `{c}`" for c in commands], *where, f"- date: {payload['date']}"]


def economy_markdown(payload: dict) -> list:
    """Dr.E's token economy against the plain forward, and 8-/4-bit weights: cost and accuracy side by side."""
    by = {r["row"]: r for r in payload["results"]}
    ours = by.get("dre", {}).get("trained_prompts_per_second")
    table = ["| row | val % | test % | fine-tuning s | train prompts/s | of Dr.E's | train tok/s | infer nodes/s | "
             "peak MB | peak GPU MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ECONOMY_ROWS:
        if row not in by:
            continue
        r = by[row]
        if "refused" in r:
            table.append(f"| {r['label']} | refused: {r['refused']} |" + " – |" * 8)
            continue
        prompts = r.get("trained_prompts_per_second")
        ratio = f"{prompts / ours:.2f}x" if prompts and ours else "–"
        table.append(f"| {r['label']} | {100 * r['val_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | "
                     f"{r['seconds']['finetune']:.0f} | {prompts or 0:.2f} | {ratio} | "
                     f"{r['trained_tokens_per_second']:.0f} | {r['inference_nodes_per_second']:.1f} | "
                     f"{r['peak_memory_mb']:.0f} | {gpu_peak(r)} |")
    return [
        f"## Token economy and 8-/4-bit weights: {payload['settings']['dataset']}",
        "",
        *provenance(payload),
        f"- LLM: {payload['settings']['llm_path'] or 'embedded SmolLM2-135M-Instruct'}; seed 0; "
        f"{payload['settings']['ft_epochs']} fine-tuning epochs each, best validation epoch kept; every row in a "
        "process of its own, one after the other",
        "- the plain row computes the same scores and loss (tested); it runs each full, padded prompt through "
        "every layer at every step, as a plain PEFT + transformers loop does",
        "- train tok/s counts the tokens a step runs through the model (the shared prefix once per batch for "
        "Dr.E, once per prompt for the plain forward); train prompts/s is the rate that compares them; "
        "fine-tuning s includes the validation passes and, for Dr.E, filling the frozen-layer cache",
        "- peak MB is the resident memory of the row's process; peak GPU MB is what the fine-tuning run allocated at "
        "most on its GPU (– where it ran on the CPU)",
        "",
        *table,
        "",
    ]


def gpu_peak(result: dict) -> str:
    """The row's GPU peak in MB, or – for a row run on the CPU (or recorded before GPU peaks were)."""
    peak = result.get("peak_gpu_memory_mb")
    return f"{peak:.0f}" if peak is not None else "–"


def per_seed_markdown(results: list) -> list:
    """Per seed: GraphSAGE, the stage-one head and the LLM rows, validation / test, and whether the LLM beat its head."""
    from ..pipeline.stages.features import TEXT_DEFAULT

    by = {(r["row"], r["seed"]): r for r in results}
    llm_rows = [row for row in ("dre-words", "dre") if any(r == row for r, _ in by)]
    seeds = sorted({seed for row, seed in by if row in llm_rows})
    if not seeds:
        return []

    def pair(found: dict, prefix: str = "") -> str:
        val, test = found.get(f"{prefix}val_accuracy"), found.get(f"{prefix}test_accuracy")
        return f"{100 * val:.2f} / {100 * test:.2f}" if val is not None else "–"

    def margin(found: dict) -> str:
        cells = [(found.get(f"{part}_accuracy"), found.get(f"stage_one_{part}_accuracy")) for part in ("val", "test")]
        return " / ".join(f"{round(100 * (llm - head), 2) + 0.0:+.2f}" if None not in (llm, head) else "–"
                          for llm, head in cells)

    labels = [ROWS[row].label.split(" (")[0] for row in llm_rows]
    table = ["Per seed, validation / test accuracy %. The stage-one head reads the same words as the LLM "
             "(sums of their embeddings); on a graph of text alone GraphSAGE reads the default text features.", "",
             "| seed | GraphSAGE | stage-one head | " + " | ".join(labels) + " | "
             + " | ".join(f"{label} − head, val / test" for label in labels) + " |",
             "|---:|---|---|" + "---|" * len(labels) + "---:|" * len(labels)]
    for seed in seeds:
        sage = by.get(("sage", seed)) or by.get((f"sage-{TEXT_DEFAULT}", seed), {})
        found = [by.get((row, seed), {}) for row in llm_rows]
        head = next(f for f in found if f)
        table.append(f"| {seed} | {pair(sage)} | {pair(head, 'stage_one_')} | "
                     + " | ".join(pair(f) for f in found) + " | " + " | ".join(margin(f) for f in found) + " |")
    return table + [""]


def targets_markdown(payload: dict) -> list:
    """Wall time of ``make all`` and ``make test`` per CPU class (benchmarks/time_targets.py)."""
    lines = ["## Wall-time targets per CPU class", "", f"- command: `{payload['command']}`",
             f"- date: {payload['date']}", f"- note: {payload['note']}", "",
             "| CPU class | CPU | capability | native bf16 | target | seconds | limit | exit code |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for run in payload["runs"]:
        lines.append(f"| {run['cpu_class']} | {run['cpu']} | `{run['capability']}` | "
                     f"{'yes' if run['native_bf16'] else 'no'} | `{run['target']}` | {run['seconds']:.0f} | "
                     f"{run['limit_seconds']} | {run['exit_code']} |")
    return lines + [""]


def plot(lines: list, path: Path) -> None:
    from matplotlib.figure import Figure

    lines = [line for line in lines if line["kept_plain_model"] < line["seeds"]]  # no number of their own
    figure = Figure(figsize=(9, 0.5 * len(lines) + 1.5))
    axes = figure.add_subplot()
    labels = [line["label"] for line in lines][::-1]
    means = [line["accuracy"][0] for line in lines][::-1]
    stds = [line["accuracy"][1] for line in lines][::-1]
    axes.barh(labels, means, xerr=stds, color="#4c72b0")
    axes.set_xlabel("test accuracy (%)")
    axes.set_xlim(max(0, min(means) - 10), 100)
    for y, value in enumerate(means):
        axes.text(value + 0.3, y, f"{value:.1f}", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
