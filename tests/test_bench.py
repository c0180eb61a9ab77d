"""The benchmark harness in quick mode (synthetic graph, tiny random Llama): plumbing, not numbers."""

import json

from dre_pipeline.artifacts import Store
from dre_pipeline.bench import ROWS, run, summarise
from dre_pipeline.config import BenchConfig


def test_quick_bench_writes_every_row(tmp_path):
    out = tmp_path / "benchmarks"
    results_file = run(BenchConfig(quick=True, out=str(out)), Store(tmp_path / "store"), quiet=True)
    payload = json.loads(results_file.read_text())
    assert [r["row"] for r in payload["results"]] == list(ROWS)
    for result in payload["results"]:
        assert 0 <= result["test_accuracy"] <= 1 and result["peak_memory_mb"] > 0
        assert result["inference_nodes_per_second"] > 0
    markdown = (out / "RESULTS.md").read_text()
    assert all(label in markdown for label, *_ in ROWS.values())
    assert "machine:" in markdown and "command:" in markdown
    chart = out / "synthetic_accuracy.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_over_seeds():
    results = [{"row": "dre", "label": "Dr.E", "test_accuracy": a, "test_macro_f1": a, "seconds": {"encode": 2.0},
                "peak_memory_mb": m, "inference_nodes_per_second": 10.0, "stage_one_test_accuracy": 0.8}
               for a, m in ((0.8, 100), (0.9, 300))]
    line = summarise(results)[0]
    assert line["seeds"] == 2 and abs(line["accuracy"][0] - 85.0) < 1e-9 and line["accuracy"][1] > 0
    assert line["peak_memory_mb"] == 300
