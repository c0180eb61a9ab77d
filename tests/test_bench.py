"""The benchmark harness in quick mode (synthetic graph, tiny random Llama): plumbing, not numbers."""

import json

import pytest
import torch

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.harness.bench import run
from dre_pipeline.harness.markdown import summarise
from dre_pipeline.harness.rows import ROWS
from dre_pipeline.harness.bench_config import BenchConfig
from dre_pipeline.errors import InputError


def test_quick_bench_writes_the_main_rows_then_the_extra_ones(tmp_path):
    out, store = tmp_path / "benchmarks", Store(tmp_path / "store")
    main = json.loads(run(BenchConfig(quick=True, out=str(out)), store, quiet=True).read_text())
    assert [r["row"] for r in main["results"]] == [row for row, spec in ROWS.items() if spec.main]
    assert {"mlp", "gcn", "sage", "dre", "dre-words"} <= {r["row"] for r in main["results"]}
    results_file = run(BenchConfig(quick=True, extra=True, out=str(out)), store, quiet=True)
    payload = json.loads(results_file.read_text())
    assert [r["row"] for r in payload["results"]] == list(ROWS)  # the extra rows join the main ones
    for result in payload["results"]:
        assert 0 <= result["test_accuracy"] <= 1 and result["peak_memory_mb"] > 0
        assert result["inference_nodes_per_second"] > 0
    markdown = (out / "RESULTS.md").read_text()
    assert all(spec.label in markdown for spec in ROWS.values())
    assert "machine:" in markdown and "command:" in markdown
    assert "- wall time: main rows (make bench)" in markdown and "rows behind --extra" in markdown
    # seed 0: SAGE, head, both LLM rows, and each LLM row's margin over the head
    per_seed = next(line for line in markdown.splitlines() if line.startswith("| 0 |"))
    assert per_seed.count(" / ") == 6 and "Dr.E, graph words only − head, val / test" in markdown
    chart = out / "synthetic_accuracy.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_bench_time_sums_the_main_rows_of_both_graphs_and_leaves_extra_rows_out():
    from dre_pipeline.harness.markdown import bench_time_markdown

    def table(machine, rows):
        return {"machine": machine, "results": [{"row": row, "wall_seconds": s} for row, s in rows]}

    files = {"cora": table("Intel Xeon (capability AVX512), 2 cores", [("dre", 1000.0), ("no-pseudo", 700.0)]),
             "cora-ml": table("Intel Xeon (capability AVX512), 2 cores", [("gcn", 30.0), ("text", 900.0)]),
             "synthetic": table("m", [("dre", 5.0)])}
    files["cora"]["results"][0]["machine"] = "AMD EPYC (capability AVX512), 2 cores"  # the row's own machine
    line = bench_time_markdown(files)[2]
    assert "**1030 s**" in line and "cora 1000 s (AMD EPYC); cora-ml 30 s (Intel Xeon)" in line
    assert bench_time_markdown({"synthetic": files["synthetic"]}) == []


def test_summary_over_seeds():
    results = [{"row": "dre", "label": "Dr.E", "test_accuracy": a, "test_macro_f1": a, "seconds": {"encode": 2.0},
                "peak_memory_mb": m, "inference_nodes_per_second": 10.0, "stage_one_test_accuracy": 0.8}
               for a, m in ((0.8, 100), (0.9, 300))]
    line = summarise(results)[0]
    assert line["seeds"] == 2 and abs(line["accuracy"][0] - 85.0) < 1e-9 and line["accuracy"][1] > 0
    assert line["peak_memory_mb"] == 300


def test_quick_scale_bench_measures_training_steps_encoding_and_memory_per_size(tmp_path):
    out = tmp_path / "benchmarks"
    results_file = run(BenchConfig(quick=True, scale=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    assert results_file.name == "scale.json"
    results = json.loads(results_file.read_text())["results"]
    assert [r["nodes"] for r in results] == [2000, 4000]
    for r in results:
        assert 8 <= r["edges"] / r["nodes"] <= 10  # about 10 per node, less the duplicates
        train = r["train"]
        assert train["seconds_per_step"] > 0 and 0 < train["search_share"] < 1 and 0 < train["sample_share"] < 1
        # trimmed steps: each layer for the seeds' reach, the last for the seeds alone
        first, second, last = train["layer_nodes_per_step"]
        assert first > second > last == train["batch_nodes"]
        train_nodes = 0.6 * r["nodes"]  # the random split's share
        assert train["steps_per_epoch"] == pytest.approx(train_nodes / (train["batch_nodes"] / 2), abs=1)
        assert r["encode"]["nodes_per_second"] > 0 and r["peak_memory_mb"] > 0
        assert r["search"]["matmul_gflops"] > 0 and r["search"]["of_matmul"] > 0
    assert "Stage one at scale" in (out / "RESULTS.md").read_text() and (out / "scale.png").exists()


def test_quick_speed_bench_measures_each_cpu_class(tmp_path):
    out = tmp_path / "benchmarks"
    results_file = run(BenchConfig(quick=True, speed=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    assert results_file.name == "speed.json"
    results = {r["cpu_class"]: r for r in json.loads(results_file.read_text())["results"]}
    assert results["avx2"]["capability"] == "AVX2" and not results["avx2"]["native_bf16"]  # held to AVX2 kernels
    for result in results.values():
        assert result["matmul"]["gflops"] > 0
        names = [s["name"] for s in result["search"]]
        assert names[0].endswith("(before)") and "incremental, chunked, float32" in names
        assert ("incremental, chunked, bfloat16" in names) == result["native_bf16"]
        assert [e["name"].split(":")[0] for e in result["encode"]] == ["before", "after"]
        assert all(0 <= e["label_head_accuracy"]["test"] <= 1 for e in result["encode"])
    markdown = (out / "RESULTS.md").read_text()
    assert "Stage one's speed per CPU class" in markdown and "capability `AVX2`" in markdown


def test_a_joint_pass_that_kept_the_plain_model_has_no_number_of_its_own(tmp_path):
    from dre_pipeline.harness.markdown import accuracy_markdown

    results = [{"row": row, "label": label, "seed": 0, "test_accuracy": 0.8, "test_macro_f1": 0.8,
                "seconds": {"finetune": 1.0}, "wall_seconds": 1.0, "peak_memory_mb": 1,
                "inference_nodes_per_second": 1.0, "stage_one_test_accuracy": 0.8, "kept_plain_model": row == "joint"} for row, label in (("dre", "Dr.E (full)"), ("joint", "Dr.E + joint"))]
    payload = {"results": results, "settings": {"dataset": "toy", "llm_path": None, "ft_epochs": 1},
               "command": "c", "machine": "m", "date": "d"}
    joint_line = next(line for line in accuracy_markdown(payload, tmp_path) if line.startswith("| Dr.E + joint"))
    assert "| kept plain model | – |" in joint_line and "80.00" not in joint_line.split("|")[3]


def test_a_bench_of_some_rows_adds_to_the_earlier_rows_of_the_same_settings_and_defaults(tmp_path):
    out, store = tmp_path / "benchmarks", Store(tmp_path / "store")
    run(BenchConfig(quick=True, rows="mlp,gcn", out=str(out)), store, quiet=True)
    first = {r["row"]: r for r in json.loads((out / "results" / "synthetic.json").read_text())["results"]}
    payload = json.loads(run(BenchConfig(quick=True, rows="sage,gcn", out=str(out)), store, quiet=True).read_text())
    assert [r["row"] for r in payload["results"]] == ["mlp", "gcn", "sage"]  # in table order, one per row and seed
    assert payload["results"][0] == first["mlp"]  # kept as it was
    assert payload["wall_seconds"] == round(sum(r["wall_seconds"] for r in payload["results"]))
    assert (out / "RESULTS.md").read_text().count("- command:") == 1  # one run's command per row it gave
    other = BenchConfig(quick=True, rows="sage", ft_epochs=1, out=str(out))  # other settings: a table of its own
    assert [r["row"] for r in json.loads(run(other, store, quiet=True).read_text())["results"]] == ["sage"]
    payload = json.loads((out / "results" / "synthetic.json").read_text())
    payload["defaults"] = "measured-with-other-defaults"
    (out / "results" / "synthetic.json").write_text(json.dumps(payload))
    again = run(BenchConfig(quick=True, rows="gcn", ft_epochs=1, out=str(out)), store, quiet=True)
    assert [r["row"] for r in json.loads(again.read_text())["results"]] == ["gcn"]  # the sage row measured else


def test_the_papers_numbers_stand_beside_their_own_dataset_only(tmp_path):
    from dre_pipeline.harness.markdown import accuracy_markdown

    results = [{"row": "dre", "label": "Dr.E", "seed": 0, "test_accuracy": 0.8, "test_macro_f1": 0.8,
                "seconds": {"finetune": 1.0}, "wall_seconds": 1.0, "peak_memory_mb": 1,
                "inference_nodes_per_second": 1.0, "stage_one_test_accuracy": 0.8}]

    def row_line(dataset):
        payload = {"results": results, "settings": {"dataset": dataset, "llm_path": None, "ft_epochs": 1},
                   "command": "c", "machine": "m", "date": "d"}
        return next(line for line in accuracy_markdown(payload, tmp_path) if line.startswith("| Dr.E |"))

    assert "| 91.33 |" in row_line("cora") and "| 91.33 |" not in row_line("cora-ml")


def test_quick_economy_bench_puts_the_plain_forward_and_quantized_weights_beside_dre(tmp_path):
    from dre_pipeline.harness.rows import economy_rows
    from dre_pipeline.pipeline.placement import resolved_precision

    out = tmp_path / "benchmarks"
    results_file = run(BenchConfig(quick=True, economy=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    assert results_file.name == "economy-synthetic.json"  # one table per graph
    by = {r["row"]: r for r in json.loads(results_file.read_text())["results"]}
    assert list(by) == economy_rows("", resolved_precision(torch.device("cpu")))
    named = "fp32" if "fp32" in by else "bf16"  # the precision --precision auto does not take here, named
    for row in ("dre", "plain", named, f"plain-{named}", "8bit"):
        assert by[row]["trained_prompts_per_second"] > 0 and by[row]["peak_memory_mb"] > 0
    # the same scores and loss: the plain forward reaches what Dr.E reaches, up to numerics
    assert abs(by["plain"]["val_accuracy"] - by["dre"]["val_accuracy"]) <= 0.05
    assert "multiples of 64" in by["4bit"]["refused"]  # the tiny Llama's widths: bitsandbytes' CPU 4-bit cannot
    markdown = (out / "RESULTS.md").read_text()
    assert "Token economy, bf16 and 8-/4-bit weights" in markdown and "| 1.00x |" in markdown
    assert "refused:" in markdown and f"x ({named}) |" in markdown  # that precision's plain row against its Dr.E


def test_economy_rows_take_a_subset_in_the_tables_order_and_refuse_an_unknown_one():
    from dre_pipeline.harness.rows import ECONOMY_ROWS, economy_rows

    assert economy_rows("", "bf16") == ["dre", "fp32", "plain", "plain-fp32", "8bit", "4bit"]
    assert economy_rows("", "fp32") == ["dre", "bf16", "plain", "plain-bf16", "8bit", "4bit"]
    assert economy_rows("bf16,dre", "bf16") == ["dre", "bf16"] and list(ECONOMY_ROWS)[:3] == ["dre", "fp32", "bf16"]
    with pytest.raises(InputError, match="unknown \\['gcn'\\]"):
        economy_rows("dre,gcn", "fp32")


def test_each_graphs_economy_table_is_a_section_of_its_own(tmp_path):
    from dre_pipeline.harness.bench import write_results

    row = {"row": "dre", "label": "Dr.E", "seed": 0, "val_accuracy": 0.9, "test_accuracy": 0.8, "seconds": {"finetune": 1.0},
           "trained_prompts_per_second": 2.0, "trained_tokens_per_second": 3.0, "inference_nodes_per_second": 4.0,
           "peak_memory_mb": 5}
    for graph in ("cora", "cora-ml"):
        write_results(tmp_path, f"economy-{graph}", {"command": "c", "machine": "m", "date": "d", "results": [row],
                                                    "settings": {"dataset": graph, "llm_path": None, "ft_epochs": 2}})
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "Token economy, bf16 and 8-/4-bit weights: cora\n" in markdown
    assert "Token economy, bf16 and 8-/4-bit weights: cora-ml\n" in markdown
    assert "## Accuracy: economy" not in markdown  # neither is read as a dataset's accuracy table


def test_the_freed_blocks_table_sets_each_setting_against_glibcs_default_of_its_own_size(tmp_path):
    from dre_pipeline.harness.bench import write_results

    def row(threshold, nodes, step, encode, peak):
        return {"threshold": threshold, "nodes": nodes, "train": {"seconds_per_step": step, "epoch_seconds_estimate": 10 * step},
                "encode": {"seconds": encode}, "peak_memory_mb": peak}

    rows = [row("default", 1000, 2.0, 20.0, 1000), row("64", 1000, 1.0, 10.0, 1500), row("default", 9000, 4.0, 40.0, 4000)]
    write_results(tmp_path, "freed_blocks", {"command": "c", "machine": "m", "date": "d", "rows": rows})
    section = (tmp_path / "RESULTS.md").read_text().split("## Freed blocks kept for reuse")[1]
    assert "| 1,000 | up to 64 MB | 1.00 | 10 | 10 | 1,500 | 0.50 | 0.50 | 1.50 |" in section
    assert "| 9,000 | glibc default | 4.00 | 40 | 40 | 4,000 | 1.00 | 1.00 | 1.00 |" in section


def test_the_faiss_table_gives_each_index_its_speed_up_and_recall_against_the_exact_search(tmp_path):
    from dre_pipeline.harness.bench import write_results

    def row(index, parameter, seconds, recall):
        return {"views_of": "cora", "codebook": "default", "words": 8192, "views": 8124, "index": index,
                "parameter": parameter, "build_seconds": 0.5, "exact_seconds": 0.4, "faiss_seconds": seconds,
                "speedup": 0.4 / seconds, "recall_by_level": recall}

    rows = [row("Flat", None, 2.0, [1.0, 0.99, 0.98, 0.9]), row("IVF362,Flat", "nprobe 8", 0.8, [0.5] * 4)]
    write_results(tmp_path, "faiss_search", {"command": "c", "machine": "m", "date": "d", "rows": rows})
    section = (tmp_path / "RESULTS.md").read_text().split("## Stage one's code search, exact and with FAISS")[1]
    assert "cora's exact model" in section
    assert "| default | 8,192 | 8,124 | Flat | – | 0.5 | 0.40 | 2.00 | 0.20x | 100.0 % / 99.0 % / 98.0 % / 90.0 % |" in section
    assert "| IVF362,Flat | nprobe 8 | 0.5 | 0.40 | 0.80 | 0.50x | 50.0 % / 50.0 % / 50.0 % / 50.0 % |" in section


def test_the_stage_one_accuracy_table_sets_full_batch_beside_the_mini_batch_rows(tmp_path):
    from dre_pipeline.harness.bench import write_results

    def row(name, val, test, epochs, steps):
        return {"row": name, "nodes": 100000, "noise": 12.0, "val_accuracy": val, "test_accuracy": test,
                "epochs": epochs, "patience": 20, "epochs_run": epochs, "best_epoch": epochs - 2, "steps": steps,
                "seconds_per_step": 0.25, "train_seconds": 1234.5, "threads": 1}

    rows = [row("full batch", 0.9912, 0.9905, 300, 300), row("trimmed, share 0.5", 0.9976, 0.9973, 12, 5628)]
    write_results(tmp_path, "stage_one_accuracy", {"command": "c", "machine": "m", "date": "d", "rows": rows})
    section = (tmp_path / "RESULTS.md").read_text().split("## Stage one in full batch and in mini-batches")[1]
    assert "generated graph of 100,000 nodes" in section and "standard deviation 12)" in section
    assert "| full batch | 99.12 | 99.05 | 300 | 20 | 300 | 298 | 300 | 0.25 | 1,234 | 1 |" in section
    assert "| trimmed, share 0.5 | 99.76 | 99.73 | 12 | 20 | 12 | 10 | 5,628 | 0.25 | 1,234 | 1 |" in section


def test_the_economy_depth_table_gives_each_depths_costs_and_ratios(tmp_path):
    from dre_pipeline.harness.bench import write_results

    row = {"lora_layers": 8, "frozen_layers": 22, "batch_size": 8, "fill_seconds": 0.9, "step_seconds": 1.0,
           "plain_seconds": 4.5, "steady_ratio": 4.5, "ratio_2_epochs": 9 / 2.9, "ratio_20_epochs": 90 / 20.9}
    payload = {"command": "c", "machine": "m", "date": "d", "dataset": "cora", "threads": 2, "rows": [row]}
    write_results(tmp_path, "economy_depth", payload)
    section = (tmp_path / "RESULTS.md").read_text().split("## Token economy by LoRA depth")[1]
    assert "cora's prompts" in section and "batches of 8 training nodes" in section
    assert "| 8 | 22 | 0.90 | 1.00 | 4.50 | 4.50x | 3.10x | 4.31x |" in section


def test_quick_end_to_end_bench_runs_each_stage_as_a_command_of_its_own(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "benchmarks"
    results_file = run(BenchConfig(quick=True, end_to_end=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    assert results_file.name == "end_to_end.json"
    result = json.loads(results_file.read_text())["result"]
    assert list(result["stages"]) == ["generate", "codebook", "encode", "finetune", "predict"]
    for stage in ("codebook", "encode", "finetune", "predict"):
        assert result["stages"][stage]["seconds"] > 0 and result["stages"][stage]["peak_memory_mb"] > 0
    assert result["seconds"] == pytest.approx(sum(s["seconds"] for s in result["stages"].values()))
    answers = pq.read_table(out / "end-to-end-400" / "test-answers.parquet")
    test_nodes = (out / "end-to-end-400" / "test-nodes.txt").read_text().split()
    assert sorted(answers.column("node_id").to_pylist()) == sorted(map(int, test_nodes))  # every test node, once
    accuracy = result["accuracy"]
    for model in (accuracy["dre"], accuracy["stage_one_head"], accuracy["sage"]):
        assert 0 <= model["val"] <= 1 and 0 <= model["test"] <= 1
    section = (out / "RESULTS.md").read_text().split("## End to end at ogbn-arxiv's size")[1]
    assert "| predict |" in section and "| GraphSAGE (same features and split) |" in section
    # a rerun over the warm store reports what each stage it found cost the run that built it
    run(BenchConfig(quick=True, end_to_end=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    again = json.loads(results_file.read_text())["result"]
    for stage in ("codebook", "encode", "finetune"):
        assert again["stages"][stage]["seconds"] == result["stages"][stage]["seconds"]
        assert 0 < again["stages"][stage]["cache_hit_seconds"]
    assert "cache_hit_seconds" not in again["stages"]["predict"]  # it computes its answers anew
    assert "built by an earlier run; found in the store in" in (out / "RESULTS.md").read_text()


def test_the_generated_graph_is_a_users_table_whose_edges_and_words_lean_to_the_class(tmp_path):
    import numpy as np

    from dre_pipeline.data import load_dataset
    from dre_pipeline.harness import end_to_end

    folder = end_to_end.write_graph(tmp_path / "graph", 2000, seed=0)
    data = load_dataset(str(folder), None, tmp_path / "cache")
    assert data.num_nodes == 2000 and len(data.class_names) == len(end_to_end.TOPICS) and len(data.text) == 2000
    src, dst = data.edge_index.numpy()
    same_class = (data.y[src] == data.y[dst]).float().mean().item()
    assert same_class > end_to_end.HOMOPHILY  # the planted edges, and a tenth of the rest by chance
    own = [np.mean([word in end_to_end.TOPICS[data.class_names[label]].split() for word in text.split()])
           for text, label in zip(data.text, data.y.tolist())]
    assert np.mean(own) > end_to_end.OWN_WORDS  # the class's own topic, and its share of any topic's words


def test_a_bench_of_a_graph_folder_writes_its_results_under_out_by_the_folders_name(tmp_path):
    from dre_pipeline.harness import end_to_end

    folder = end_to_end.write_graph(tmp_path / "my-graph", 300, seed=0)
    out = tmp_path / "benchmarks"
    run(BenchConfig(dataset=str(folder), rows="gcn", seeds=1, out=str(out)), Store(tmp_path / "store"), quiet=True)
    assert json.loads((out / "results" / "my-graph.json").read_text())["results"][0]["row"] == "gcn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks", "my-graph", "store"]  # nothing beside it
    assert "## Accuracy: my-graph\n" in (out / "RESULTS.md").read_text() and (out / "my-graph_accuracy.png").exists()


def test_a_stopped_end_to_end_run_shows_what_it_measured_and_a_dash_for_the_rest():
    from dre_pipeline.harness.end_to_end import markdown

    result = {"nodes": 10, "settings": {"epochs": 1}, "stages": {"generate": {"seconds": 1.0},
                                                                 "encode": {"seconds": 5.0, "peak_memory_mb": 7.0}},
              "stopped": {"stage": "finetune", "log": "epoch 1's validation accuracy 0.9"},
              "accuracy": {"dre": {"val": 0.9, "test": None, "dtype": "bf16"},
                           "stage_one_head": {"val": 0.8, "test": 0.7}, "sage": {"val": 0.6, "test": 0.5}}}
    lines = markdown({"command": "c", "machine": "m", "date": "d", "result": result})
    assert "| generate | 1 | – |  |" in lines and "| encode | 5 | 7 |  |" in lines
    assert "Stopped in finetune: epoch 1's validation accuracy 0.9" in lines and "| Dr.E (bf16) | 90.00 | – |" in lines
    assert "| GraphSAGE (same features and split) | 60.00 | 50.00 |" in lines
