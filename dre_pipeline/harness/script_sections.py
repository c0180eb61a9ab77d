"""RESULTS.md's sections of the scripts in ``benchmarks/``: each renders its script's result file, under one
header naming the command, machine and date behind all its rows (:func:`side_by_side_header`)."""


def trimmed_step(payload: dict) -> list:
    """Stage one's mini-batch step as it was and trimmed, side by side in one process (benchmarks/trimmed_step.py)."""
    lines = [*side_by_side_header("Stage one's step as it was and trimmed, side by side", payload), f"- {payload['note']}", "",
             "| nodes | step as it was s | trimmed s | step speed-up | epoch as it was s | trimmed s | epoch speed-up "
             "| layer nodes as it was | trimmed |", "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in payload["rows"]:
        old, new = r["as_it_was"], r["trimmed"]
        layers = [" / ".join(f"{n:,.0f}" for n in row["layer_nodes"]) for row in (old, new)]
        lines.append(f"| {r['nodes']:,} | {old['seconds_per_step']:.2f} | {new['seconds_per_step']:.2f} | "
                     f"{r['step_speedup']:.1f}x | {old['epoch_seconds_estimate']:,.0f} | "
                     f"{new['epoch_seconds_estimate']:,.0f} | {r['epoch_speedup']:.1f}x | {layers[0]} | {layers[1]} |")
    return lines + [""]


def stage_one_accuracy(payload: dict) -> list:
    """Stage one's label head trained in full batch and in mini-batches, side by side
    (benchmarks/trimmed_step.py accuracy)."""
    rows = payload["rows"]
    lines = [*side_by_side_header("Stage one in full batch and in mini-batches: accuracy, side by side", payload),
             f"- graph: `bench --scale`'s generated graph of {rows[0]['nodes']:,} nodes, its features noised (standard "
             f"deviation {rows[0]['noise']:g}) so that the graph has work to do; a random 60/20/20 split; the codebook "
             "of a tiny random Llama (64 dimensions, 1,024 words), so that full-batch epochs fit these cores",
             "- each row: `encode`'s training loop until its patience or its most epochs run out (the model at its "
             "best validation accuracy), in a spawned process of its own, the rows at the same time, the cores shared "
             "out (threads: each row's); mini-batch: 256 seeds, 15,10,5 neighbours; a full-batch step is an epoch", "",
             "| training | val % | test % | most epochs | patience | epochs run | best epoch | steps | s/step "
             "| train s | threads |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {100 * r['val_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | {r['epochs']} | "
                     f"{r['patience']} | {r['epochs_run']} | {r['best_epoch']} | {r['steps']:,} | "
                     f"{r['seconds_per_step']:.2f} | {r['train_seconds']:,.0f} | {r['threads']} |")
    return lines + [""]


def economy_depth(payload: dict) -> list:
    """Stage two's step costs by LoRA depth, Dr.E's and the plain loop's side by side (benchmarks/economy_depth.py)."""
    rows = payload["rows"]
    lines = [*side_by_side_header("Token economy by LoRA depth: step costs and the ratios they allow", payload),
             f"- {payload['dataset']}'s prompts, the embedded SmolLM2 in fp32, {payload['threads']} torch threads, "
             f"batches of {rows[0]['batch_size']} training nodes; each cost the median over the batches after an "
             "untimed one, the three in turn per batch; fill: the first step on a batch less a second on it",
             "- ratio over E epochs: E x plain / (fill + E x step), validation passes left out; 2 epochs is the "
             "bench's run, 20 the CLI's most; accuracy at depths other than the default 8 is not measured", "",
             "| LoRA layers | frozen layers | fill s | Dr.E step s | plain step s | steady ratio | 2 epochs "
             "| 20 epochs |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lora_layers']} | {r['frozen_layers']} | {r['fill_seconds']:.2f} | "
                     f"{r['step_seconds']:.2f} | {r['plain_seconds']:.2f} | {r['steady_ratio']:.2f}x | "
                     f"{r['ratio_2_epochs']:.2f}x | {r['ratio_20_epochs']:.2f}x |")
    return lines + [""]


def side_by_side_header(title: str, payload: dict) -> list:
    """A benchmark script's section title, and the one command, machine and date behind all its rows."""
    return [f"## {title}", "", f"- command: `{payload['command']}`", f"- machine: {payload['machine']}",
            f"- date: {payload['date']}"]


def step_allocations(payload: dict) -> list:
    """Stage one's trimmed step before and after its allocation cuts, in fresh processes taking turns
    (benchmarks/step_allocations.py)."""
    lines = [*side_by_side_header("Stage one's step before and after its allocation cuts, side by side", payload),
             "- before (54ba6f1): z_hat from zeros and K row gathers, every view's residual norms in training too, "
             "glibc's default allocator; gathered: z_hat in one embedding_bag, the norms only for encode's metrics; "
             "kept: the same, freed blocks kept for reuse as every CLI process does (`runtime.keep_freed_memory`); "
             "the same codes and losses in all three",
             "- the settings take turns in fresh processes; s/step: the mean of every timed step; epoch: encode's "
             "steps per epoch times it; peak: the largest resident set of a process (graph, model and all)", "",
             "| nodes | before s/step | gathered | kept | speed-up, gathered / kept | steps/epoch "
             "| epoch before s | kept s | peak MB before / gathered / kept |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in payload["rows"]:
        before, gathered, kept = r["before"], r["gathered"], r["kept"]
        peaks = " / ".join(f"{r[s]['peak_rss_mb']:,.0f}" for s in ("before", "gathered", "kept"))
        lines.append(f"| {r['nodes']:,} | {before['seconds_per_step']:.2f} | {gathered['seconds_per_step']:.2f} | "
                     f"{kept['seconds_per_step']:.2f} | {gathered['speedup']:.2f}x / {kept['speedup']:.2f}x | "
                     f"{r['steps_per_epoch']:,} | {before['epoch_seconds_estimate']:,.0f} | "
                     f"{kept['epoch_seconds_estimate']:,.0f} | {peaks} |")
    return lines + [""]


def freed_blocks(payload: dict) -> list:
    """bench --scale's rows under each size of freed block kept for reuse, in fresh processes taking turns
    (benchmarks/freed_blocks.py)."""
    lines = [*side_by_side_header("Freed blocks kept for reuse: stage one's speed against its peak memory, side by side",
                                  payload),
             "- each row: `bench --scale`'s measurement of one size (3 training steps after one untimed, every node "
             "encoded, the search timed) in a fresh process whose glibc keeps freed blocks up to the size given "
             "(default: glibc's own, every block above 32 MB mapped afresh); the same codes and losses in all; "
             "against default: its time or peak over the default's", "",
             "| nodes | blocks kept | train s/step | epoch estimate s | encode s | peak MB | step against default "
             "| encode against default | peak against default |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    default = {r["nodes"]: r for r in payload["rows"] if r["threshold"] == "default"}
    for r in payload["rows"]:
        base, t = default[r["nodes"]], r["train"]
        kept = "glibc default" if r["threshold"] == "default" else f"up to {r['threshold']} MB"
        lines.append(f"| {r['nodes']:,} | {kept} | {t['seconds_per_step']:.2f} | {t['epoch_seconds_estimate']:,.0f} | "
                     f"{r['encode']['seconds']:.0f} | {r['peak_memory_mb']:,.0f} | "
                     f"{t['seconds_per_step'] / base['train']['seconds_per_step']:.2f} | "
                     f"{r['encode']['seconds'] / base['encode']['seconds']:.2f} | "
                     f"{r['peak_memory_mb'] / base['peak_memory_mb']:.2f} |")
    return lines + [""]


def recall_by_level(row: dict) -> str:
    """A search row's recall of the exact codes, level by level: ``60.2 % / 36.2 % / ...``."""
    return " / ".join(f"{100 * v:.1f} %" for v in row["recall_by_level"])


def word_search(payload: dict) -> list:
    """Stage one's code search, exact against clustered, side by side in one process (benchmarks/word_search.py)."""
    lines = [*side_by_side_header("Stage one's code search, exact and over clustered words", payload),
             "- clustered: spherical k-means of the unit words into sqrt(M) clusters, each level searching the words "
             "of its best eighth of them exactly (an inverted-file index, in torch; benchmarks/word_search.py)",
             f"- recall: the views of every node and hop of {payload['views_of']}'s exact model, searched both ways "
             "(K = 4 levels); the share of codes equal to the exact search's", "",
             "| codebook | words | views | exact s | clustered s | speed-up | recall, levels 1-4 |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in payload["recall"]:
        lines.append(f"| {r['codebook']} | {r['words']:,} | {r['views']:,} | {r['exact_seconds']:.2f} | "
                     f"{r['clustered_seconds']:.2f} | {r['speedup']:.2f}x | {recall_by_level(r)} |")
    lines += ["", "| graph | search | label head val % | test % | epochs | train s |", "|---|---|---:|---:|---:|---:|"]
    for dataset, rows in payload["accuracy"].items():
        for search, r in rows.items():
            lines.append(f"| {dataset} | {search} | {100 * r['val']:.2f} | {100 * r['test']:.2f} | {r['epochs']} | "
                         f"{r['train_seconds']:.0f} |")
    step = payload["step"]
    lines += ["", f"Mini-batch steps on the generated graph of {step['nodes']:,} nodes (as `bench --scale`):", "",
              "| search | s/step | search share | epoch estimate s |", "|---|---:|---:|---:|"]
    for search in ("exact", "clustered"):
        r = step[search]
        lines.append(f"| {search} | {r['seconds_per_step']:.2f} | {100 * r['search_share']:.0f} % | "
                     f"{r['epoch_seconds_estimate']:,.0f} |")
    return lines + [""]


def faiss_search(payload: dict) -> list:
    """Stage one's code search, exact against FAISS's indexes, side by side in one process
    (benchmarks/faiss_search.py)."""
    rows = payload["rows"]
    lines = [*side_by_side_header("Stage one's code search, exact and with FAISS's indexes", payload),
             "- each index holds the unit words under the inner product and searches each level's residual afresh; "
             "Flat: every word in fp32, so its recall counts the codes that the exact search's bf16 products round "
             "differently; IVF: 4 sqrt(M) k-means lists, nprobe of them searched; HNSW32: a graph over the words",
             f"- recall: the views of every node and hop of {rows[0]['views_of']}'s exact model (K = 4 levels), the "
             "share of codes equal to the exact search's (`ResidualVQ.search`); speed-up: exact seconds over FAISS's, "
             "the index built beforehand (build s)", "",
             "| codebook | words | views | index | setting | build s | exact s | FAISS s | speed-up | "
             "recall, levels 1-4 |", "|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['codebook']} | {r['words']:,} | {r['views']:,} | {r['index']} | {r['parameter'] or '–'} | "
                     f"{r['build_seconds']:.1f} | {r['exact_seconds']:.2f} | {r['faiss_seconds']:.2f} | "
                     f"{r['speedup']:.2f}x | {recall_by_level(r)} |")
    return lines + [""]


def targets(payload: dict) -> list:
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
