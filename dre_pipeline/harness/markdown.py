"""RESULTS.md from every result file in ``<out>/results``: each dataset's accuracy table and bar chart, the token
economy, and the sections of ``--scale``, ``--speed`` and the scripts in ``benchmarks/`` (:mod:`.script_sections`)."""

import json
import statistics
from pathlib import Path

from .rows import ALL_ROWS, ECONOMY_ROWS, PAPER, ROWS

BENCH_GRAPHS = ("cora", "cora-ml", "cora-text")  # what make bench runs


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
    """RESULTS.md: each dataset's accuracy table, then the other results' sections in :func:`sections`' order."""
    files = {f.stem: json.loads(f.read_text()) for f in sorted((out_dir / "results").glob("*.json"))}
    text = ["# Benchmarks", "", "Every number names the command and the CPU that gave it: "
            "machines of one kind differ in CPU features (AVX-512 with native bf16, or only AVX2).", ""]
    text += bench_time_markdown(files)
    rendered = sections(out_dir)
    for name, payload in files.items():
        if section_of(name) not in rendered:
            text += accuracy_markdown(payload, out_dir)
    for section, render in rendered.items():
        for name in files:
            if section_of(name) == section and render is not None:
                text += render(files[name])
    tmp = out_dir / "RESULTS.md.tmp"
    tmp.write_text("\n".join(text))
    tmp.rename(out_dir / "RESULTS.md")


def sections(out_dir: Path) -> dict:
    """The result files that are not a dataset's accuracy rows, in RESULTS.md's order, and their renderers
    (None: rendered elsewhere, the memory peaks in docs/plan.md)."""
    from . import script_sections as script
    from .end_to_end import markdown as end_to_end_markdown
    from .scale import markdown as scale_markdown
    from .speed import markdown as speed_markdown

    return {"economy": economy_markdown, "economy_depth": script.economy_depth, "inductive": inductive_markdown,
            "scale": lambda payload: scale_markdown(payload, out_dir), "end_to_end": end_to_end_markdown,
            "trimmed_step": script.trimmed_step, "stage_one_accuracy": script.stage_one_accuracy,
            "step_allocations": script.step_allocations, "freed_blocks": script.freed_blocks,
            "word_search": script.word_search, "faiss_search": script.faiss_search, "speed": speed_markdown,
            "targets": script.targets, "memory_peaks": None}


def section_of(name: str) -> str:
    """The section a result file belongs to: its name, or for a mode run per graph (``economy-cora``) the mode's."""
    return "economy" if name.startswith("economy-") else name


def graph_name(dataset: str) -> str:
    """A dataset's name in result files, charts and headings: a graph folder's or file's own name, not its path."""
    return Path(dataset).name


def accuracy_markdown(payload: dict, out_dir: Path) -> list:
    lines, name = summarise(payload["results"]), graph_name(payload["settings"]["dataset"])
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
                     f"{stage_one} | {PAPER.get(name, {}).get(line['row'], '–')} | {seconds} | {line['peak_memory_mb']:.0f} | "
                     f"{tokens} | {line['inference_nodes_per_second']:.1f} |")
    chart = out_dir / f"{name}_accuracy.png"
    plot(lines, chart)
    return [
        f"## Accuracy: {name}",
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
    table = ["| row | computes in | val % | test % | fine-tuning s | train prompts/s | of Dr.E's | train tok/s | "
             "infer nodes/s | peak MB | peak GPU MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ECONOMY_ROWS:
        if row not in by:
            continue
        r = by[row]
        if "refused" in r:
            table.append(f"| {r['label']} | – | refused: {r['refused']} |" + " – |" * 8)
            continue
        prompts, versus = r.get("trained_prompts_per_second"), ECONOMY_ROWS[row].versus
        ours = by.get(versus, {}).get("trained_prompts_per_second")
        ratio = (f"{prompts / ours:.2f}x" + (f" ({versus})" if versus != "dre" else "")) if prompts and ours else "–"
        table.append(f"| {r['label']} | {r.get('dtype') or '–'} | {100 * r['val_accuracy']:.2f} | "
                     f"{100 * r['test_accuracy']:.2f} | "
                     f"{r['seconds']['finetune']:.0f} | {prompts or 0:.2f} | {ratio} | "
                     f"{r['trained_tokens_per_second']:.0f} | {r['inference_nodes_per_second']:.1f} | "
                     f"{r['peak_memory_mb']:.0f} | {gpu_peak(r)} |")
    return [
        f"## Token economy, bf16 and 8-/4-bit weights: {graph_name(payload['settings']['dataset'])}",
        "",
        *provenance(payload),
        f"- LLM: {payload['settings']['llm_path'] or 'embedded SmolLM2-135M-Instruct'}; seed 0; "
        f"{payload['settings']['ft_epochs']} fine-tuning epochs each, best validation epoch kept; every row in a "
        "process of its own, one after the other",
        "- the plain rows compute the same scores and loss (tested); they run each full, padded prompt through "
        "every layer at every step, as a plain PEFT + transformers loop does; of Dr.E's: a row's train prompts/s "
        "over the Dr.E row's (--precision auto: its dtype differs between machines, and each row's is in its "
        "second column), or over the row named (a plain row in a named precision against Dr.E in it)",
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


def inductive_markdown(payload: dict) -> list:
    """Dr.E and GraphSAGE on nodes held out of training entirely, beside their test splits (benchmarks/inductive.py)."""
    lines = [f"## Inductive: {payload['dataset']}, {100 * payload['share']:.0f} % of the nodes held out", "",
             f"- command: `{payload['command']}`", f"- machine: {payload['machine']}", f"- date: {payload['date']}",
             f"- {payload['note']}", "",
             "| seed | held-out nodes | Dr.E test % | Dr.E held-out % | held-out − test | GraphSAGE test % "
             "| GraphSAGE held-out % | fit s | predict s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in payload["rows"]:
        d, g = r["dre"], r["graphsage"]
        lines.append(f"| {r['seed']} | {r['held_out']} | {100 * d['test']:.2f} | {100 * d['inductive']:.2f} | "
                     f"{100 * (d['inductive'] - d['test']):+.2f} | {100 * g['test']:.2f} | {100 * g['inductive']:.2f} | "
                     f"{r['fit_seconds']:.0f} | {r['predict_seconds']:.0f} |")
    rows = payload["rows"]
    mean = {model: {part: 100 * sum(r[model][part] for r in rows) / len(rows) for part in ("test", "inductive")}
            for model in ("dre", "graphsage")}
    d, g = mean["dre"], mean["graphsage"]
    lines.append(f"| mean | | {d['test']:.2f} | {d['inductive']:.2f} | {d['inductive'] - d['test']:+.2f} | "
                 f"{g['test']:.2f} | {g['inductive']:.2f} | | |")
    held_out, accuracy = rows[0]["held_out"], d["inductive"] / 100
    return lines + ["", f"GraphSAGE's held-out − test, mean: {g['inductive'] - g['test']:+.2f}. One held-out node is "
                    f"{100 / held_out:.2f} points; the standard error of an accuracy of {100 * accuracy:.0f} % on "
                    f"{held_out} nodes is {100 * (accuracy * (1 - accuracy) / held_out) ** 0.5:.1f} points.", ""]


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
